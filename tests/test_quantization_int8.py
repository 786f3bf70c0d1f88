"""Real int8 on the demo model: onnxruntime and PT2E+compile backends (built once per module)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import nbopt
from nbopt import demo
from nbopt.errors import NboptError
from nbopt.quantization.api import _pick
from nbopt.quantization.int8 import Int8Program
from tests.conftest import Untouched

pytest.importorskip("onnxruntime")
pytest.importorskip("torchao")


@pytest.fixture(scope="module")
def calib():
    return demo.calibration_data(128)


@pytest.fixture(scope="module")
def ort_result(demo_model, calib):
    before = Untouched(demo_model)
    r = nbopt.quantize(demo_model, calib, mode="int8", backend="onnxruntime", evaluate=demo.evaluate,
                       progress=False, repeat=1)
    before.check()
    return r


@pytest.fixture(scope="module")
def pt2e_result(demo_model, calib):
    return nbopt.quantize(demo_model, calib, mode="int8", backend="pt2e", progress=False, repeat=1)


def _close_to_fp32(r, model, x):
    ref, out = model(x), r.model(x)
    assert isinstance(out, torch.Tensor) and out.shape == ref.shape
    assert (ref.argmax(1) == out.argmax(1)).float().mean() >= 0.98
    assert nn.functional.cosine_similarity(ref, out, dim=1).mean() > 0.995


def test_onnxruntime_int8_is_real_accurate_and_small(ort_result, demo_model, calib):
    r = ort_result
    assert r.real and r.backend == "onnxruntime" and r.mode == "int8"
    assert r.accuracy["fp32"] - r.accuracy["quantized"] <= 0.005
    assert r.fidelity["top1_agreement"] >= 0.98 and r.fidelity["sqnr_db"] > 25
    _close_to_fp32(r, demo_model, calib[0])
    _close_to_fp32(r, demo_model, calib[1][:3])  # batch size is dynamic
    s = r.size_bytes
    assert s["quantized"]["disk"] < s["fp32"]["disk"] / 2.5
    assert s["quantized"]["deployable"] < s["fp32"]["deployable"] / 3.5
    assert r.report.real_int8.all() and (r.report.weight_bits == 8).all()


def test_pt2e_int8_is_close_to_fp32(pt2e_result, demo_model, calib):
    r = pt2e_result
    assert r.real and r.backend == "pt2e"
    assert r.fidelity["top1_agreement"] >= 0.98 and r.fidelity["cosine"] > 0.995
    _close_to_fp32(r, demo_model, calib[0])
    _close_to_fp32(r, demo_model, calib[1][:1])  # other batch sizes: batch 1, then 3
    _close_to_fp32(r, demo_model, calib[1][1:4])
    s = r.size_bytes  # the converted program keeps fp32 weights beside the int8 ones: dense > deployable
    assert s["quantized"]["deployable"] < s["fp32"]["deployable"] / 3.5 < s["quantized"]["dense"]


class _RGBNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean((2, 3)))


def test_pt2e_batch_size_is_dynamic():
    """The first sizes get static programs; later sizes share one dynamic program with the same kernels."""
    from torch._dynamo.utils import counters

    from nbopt.quantization.int8 import STATIC_BATCH_SIZES, CompiledInt8, _relative_error

    torch.manual_seed(0)
    x = torch.randn(16, 3, 16, 16)
    r = nbopt.quantize(_RGBNet().eval(), [x[:4]], mode="int8", backend="pt2e", progress=False, repeat=1)
    prog = next(m for m in r.model.modules() if isinstance(m, CompiledInt8))
    with torch.no_grad():
        static = {n: prog(x[:n]) for n in range(1, 16) if len(prog.static_sizes) < STATIC_BATCH_SIZES}
        assert not prog.dynamic_batch and len(prog.static_sizes) == STATIC_BATCH_SIZES
        n0 = next(n for n in range(1, 16) if n not in prog.static_sizes)
        first = prog(x[:n0])  # the first size beyond the static ones compiles the dynamic program
        assert prog.dynamic_batch
        graphs = counters["stats"]["unique_graphs"]
        for n in (n0 + 1, n0 + 4, 15):  # beyond the static sizes (batch 1-4 at most)
            out = prog(x[:n])
            assert torch.allclose(out[:n0], first, atol=1e-5)  # the same int8 kernels at every size
            assert _relative_error(out, prog.converted(x[:n])) < 0.02  # vs the uncompiled int8 graph
        assert counters["stats"]["unique_graphs"] == graphs  # no recompile
        for n, out in static.items():  # static sizes keep their own programs
            assert torch.equal(prog(x[:n]), out)
        with pytest.raises(Exception):  # a wrong input raises and leaves the dynamic program in place
            prog(torch.randn(9, 4, 16, 16))
        assert prog.dynamic_batch and torch.allclose(prog(x[:n0])[:2], first[:2], atol=1e-5)


def test_pt2e_stays_static_where_dynamic_lowering_fails(pt2e_result, demo_model, calib):
    """The one-channel demo model: torch's dynamic lowering fails at batch >= 16; the outputs stay right."""
    from nbopt.quantization.int8 import CompiledInt8, _relative_error

    prog = next(m for m in pt2e_result.model.modules() if isinstance(m, CompiledInt8))
    x = torch.cat(calib)[:40]
    with torch.no_grad():
        for n in (2, 3, 4, 5, 6, 40, 7):
            _close_to_fp32(pt2e_result, demo_model, x[:n])
            assert _relative_error(prog(x[:n]), prog.converted(x[:n])) < 0.02
    assert prog._dynamic["state"] == "failed"  # torch 2.14 (pinned): dynamic lowering fails here at batch 40


def test_auto_keeps_the_faster_backend_and_says_why(ort_result, pt2e_result, calib):
    fast = Int8Program("fast", ort_result.model, 1, 1)
    slow = Int8Program("slow", nn.Sequential(pt2e_result.model, _Sleep()), 1, 1)
    prog, reason = _pick({"slow": slow, "fast": fast}, {}, calib[0], repeat=3)
    assert prog is fast and "kept fast" in reason and "measured both" in reason


class _Sleep(nn.Module):
    def forward(self, x):
        import time
        time.sleep(0.02)
        return x


def test_dynamic_mode_onnxruntime(demo_model, calib):
    r = nbopt.quantize(demo_model, calib[0], mode="dynamic", act_bits=None, backend="onnxruntime",
                       progress=False, repeat=2)
    assert r.real and r.mode == "dynamic"
    assert r.fidelity["top1_agreement"] >= 0.95


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 4)
        self.gate = Gate()

    def forward(self, x):
        return self.gate(self.head(x))


class Gate(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: cannot be captured
            return x * 2
        return x


def test_capture_failure_names_module_and_way_out():
    model = DataDependent()
    before = Untouched(model)
    with pytest.raises(NboptError) as err:
        nbopt.quantize(model, torch.randn(8, 4), mode="int8", backend="pt2e", progress=False)
    msg = str(err.value)
    assert "'gate'" in msg and "mode='dynamic'" in msg and "simulate" in msg
    before.check()
