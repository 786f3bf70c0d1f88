"""Models on the meta device (shapes, no values): every capability that needs weight values refuses them with one
clear error saying how to create the weights (``to_empty`` + load), never a raw torch error or a hint to call
``model.to("cpu")`` (which fails on a meta model); counting keeps working."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import nbopt
from nbopt.errors import InputError

FIX = "to_empty(device='cpu')"


def _meta() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).to("meta").eval()


X = torch.randn(2, 4)
Y = torch.tensor([0, 2])
CALLS = {
    "quantize": lambda m: nbopt.quantize(m, X, act_bits=None, progress=False),
    "quantize int8": lambda m: nbopt.quantize(m, X, mode="int8", progress=False),
    "sensitivity": lambda m: nbopt.sensitivity(m, X, progress=False),
    "QuantTuner": lambda m: nbopt.QuantTuner(m, X),
    "qat": lambda m: nbopt.qat(m, [(X, Y)], nn.functional.cross_entropy, calib=X, progress=False),
    "fuse": lambda m: nbopt.fuse(m, X),
    "export": lambda m: nbopt.export(m, X),
    "compatibility": lambda m: nbopt.compatibility(m, X),
    "prune": lambda m: nbopt.prune(m, X, amount=0.5),
    "Pruner": lambda m: nbopt.Pruner(m, X),
    "finetune": lambda m: nbopt.finetune(m, [(X, Y)], nn.functional.cross_entropy, progress=False),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_meta_model_is_refused_with_the_way_to_materialize_it(name):
    m = _meta()
    with pytest.raises(InputError, match="meta device") as err:
        CALLS[name](m)
    text = str(err.value)
    assert FIX in text and "load" in text and "model.to('cpu')" not in text
    assert all(p.device.type == "meta" for p in m.parameters())  # nothing was materialized on the user's model


def test_meta_inputs_to_a_real_model_in_export_name_the_inputs():
    with pytest.raises(InputError, match="inputs are on the meta device"):
        nbopt.export(nn.Linear(4, 3), torch.empty(2, 4, device="meta"))


def test_counting_still_works_on_a_meta_model():
    m = _meta()
    prof = nbopt.profile(m, torch.empty(2, 4, device="meta"), latency=False)
    assert prof.total_macs == 2 * (4 * 8 + 8 * 3)


def test_the_device_check_gives_the_meta_hint_not_model_to_cpu():
    from nbopt.inputs import check_device
    with pytest.raises(InputError, match="meta device") as err:
        check_device(_meta(), X)
    assert FIX in str(err.value) and "x.to('meta')" in str(err.value) and "model.to('cpu')" not in str(err.value)
