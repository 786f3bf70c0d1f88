"""Sensitivity and mixed precision on the trained demo LM: per-token metrics, KL, group-wise scales (issue 14)."""
from __future__ import annotations

import copy
import functools

import pandas as pd
import pytest
import torch

import nbopt
from nbopt.quantization.observers import fake_quant, groupwise_qparams
from nbopt.quantization.sensitivity import TOP1
from tests.conftest import Untouched

pytest.importorskip("transformers")
LAYER = "model.layers.0.self_attn.v_proj"


@pytest.fixture(scope="module")
def demo_lm():
    from nbopt.demo import lm
    return lm, lm.load(), [lm.calibration_data(2, 32, batch_size=2)[0]]  # one batch: 2 x 32 = 64 token positions


def _logits(model, x):
    with torch.no_grad():
        return model(x).logits.float()


def _with_weight(model, name, w):
    out = copy.deepcopy(model)
    out.get_submodule(name).weight.data = w
    return out


def test_demo_lm_sensitivity_is_per_token_with_kl(demo_lm):
    lm, model, calib = demo_lm
    snap = Untouched(model)
    df = nbopt.sensitivity(model, calib, bits=(8, 4), group_size=32, progress=False)
    snap.assert_unchanged()
    assert df.attrs["metric"] == TOP1 and df.attrs["options"]["granularity"] == "per_group32"
    assert {"kl_8bit", "kl_4bit"} <= set(df.columns) and len(df) == 29
    positions = calib[0].numel()
    assert ((df.drop_4bit * positions) - (df.drop_4bit * positions).round()).abs().max() < 1e-6  # whole tokens
    assert ((df.drop_4bit > 0) & (df.drop_4bit < 0.5)).any()  # finer than one verdict per sequence
    assert df.kl_4bit.mean() > df.kl_8bit.mean() > 0
    # one cell by hand: v_proj's weight alone at 4 bits, one scale per 32 inputs, symmetric
    w = model.get_submodule(LAYER).weight.detach()
    q = _with_weight(model, LAYER, fake_quant(w, groupwise_qparams(w, 4, 32, symmetric=True)))
    ref, out = _logits(model, calib[0]), _logits(q, calib[0])
    agree = float((ref.argmax(-1) == out.argmax(-1)).float().mean())
    lp, lq = ref.log_softmax(-1), out.log_softmax(-1)
    kl = float((lp.exp() * (lp - lq)).sum(-1).mean())
    assert df.at[LAYER, "drop_4bit"] == pytest.approx(1 - agree, abs=1e-6)
    assert df.at[LAYER, "kl_4bit"] == pytest.approx(kl, rel=1e-3, abs=1e-8)
    # group-wise scales fit the weights better than one scale per output channel, measured on every layer
    per_channel = nbopt.sensitivity(model, calib, bits=(4,), progress=False)
    assert per_channel.kl_4bit.mean() > df.kl_4bit.mean()


def test_perplexity_evaluate_measures_its_increase(demo_lm):
    lm, model, _ = demo_lm
    ppl = functools.partial(lm.perplexity, chunks=2)
    df = nbopt.sensitivity(model, [lm.example_input()], evaluate=ppl, bits=(2,), progress=False)
    assert df.attrs["metric"] == "perplexity increase"
    w = model.get_submodule(LAYER).weight.detach()
    from nbopt.quantization.options import QuantOptions
    from nbopt.quantization.simulate import layer_qparams
    qp = layer_qparams(model.get_submodule(LAYER), 2, QuantOptions(act_bits=None))
    expected = ppl(_with_weight(model, LAYER, fake_quant(w, qp))) - ppl(model)
    assert expected > 0 and df.at[LAYER, "drop_2bit"] == pytest.approx(expected, rel=1e-6)
    assert (df.drop_2bit > 0).mean() > 0.9  # 2-bit weights make almost every layer worse: a positive increase


def test_mixed_precision_breaks_token_ties_with_kl():
    """Both layers keep every token at 4 bits (drop 0): the one whose KL grows less goes to 4 bits."""
    sens = pd.DataFrame({"params": [1000, 1000], "drop_8bit": [0.0, 0.0], "sqnr_8bit": [40.0, 40.0],
                         "kl_8bit": [1e-5, 1e-5], "drop_4bit": [0.0, 0.0], "sqnr_4bit": [20.0, 20.0],
                         "kl_4bit": [3e-3, 1e-4]}, index=pd.Index(["a", "b"], name="layer"))
    sens.attrs["bits"] = [8, 4]
    assert nbopt.mixed_precision(sens, avg_bits=6) == {"a": 8, "b": 4}
    sens["kl_4bit"] = [1e-4, 3e-3]
    assert nbopt.mixed_precision(sens, avg_bits=6) == {"a": 4, "b": 8}
