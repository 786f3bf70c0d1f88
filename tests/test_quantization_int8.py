"""Real int8 on the demo model: onnxruntime and PT2E+compile backends (built once per module)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import nbopt
from nbopt import demo
from nbopt.errors import NboptError
from nbopt.quantization.api import _pick
from nbopt.quantization.backends import Int8Program
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
    before.assert_unchanged()
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

    from nbopt.quantization.backends.pt2e import STATIC_BATCH_SIZES, CompiledInt8, _relative_error

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
    from nbopt.quantization.backends.pt2e import CompiledInt8, _relative_error

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
    before.assert_unchanged()


# --- the CPU decides the int8 settings: 7-bit (reduce_range) where u8 x s8 kernels saturate (no VNNI) ---

def test_cpu_is_detected_once_and_can_be_overridden(monkeypatch):
    from nbopt.cpu import cpu_info, int8_settings

    monkeypatch.delenv("NBOPT_CPU_VNNI", raising=False)
    info = cpu_info()
    assert info.capability == torch.backends.cpu.get_cpu_capability() and cpu_info() is info  # cached
    assert int8_settings().reduce_range == info.saturates  # 7-bit only where the kernels saturate
    monkeypatch.setenv("NBOPT_CPU_VNNI", "0")
    no = int8_settings()
    assert no.reduce_range and not no.cpu.vnni and no.cpu.capability == info.capability
    assert "no VNNI" in no.cpu.label and "NBOPT_CPU_VNNI=0" in no.cpu.label and "reduce_range" in no.label
    monkeypatch.setenv("NBOPT_CPU_VNNI", "1")
    assert cpu_info().vnni and not int8_settings().reduce_range and "full 8-bit" in int8_settings().label
    assert int8_settings(cpu_info(vnni=False)).reduce_range  # the argument wins over the environment


def _linear_stack() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval(), torch.randn(8, 16) * 3


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("vnni", ["0", "1"])
def test_onnxruntime_weights_are_7_bit_without_vnni(monkeypatch, vnni, dynamic):
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from nbopt.cpu import int8_settings
    from nbopt.quantization.backends import build_onnx

    monkeypatch.setenv("NBOPT_CPU_VNNI", vnni)
    model, x = _linear_stack()
    prog = build_onnx(model, [x], x, dynamic=dynamic, progress=False)
    arrays = [numpy_helper.to_array(t) for t in onnx.load_from_string(prog.model.onnx_bytes).graph.initializer]
    peak = max(int(np.abs(a.astype(np.int32)).max()) for a in arrays if a.dtype == np.int8 and a.size > 1)
    assert peak <= 64 if vnni == "0" else peak >= 127  # per-channel symmetric: each channel's largest weight
    assert prog.settings == int8_settings().label and prog.cpu == int8_settings().cpu.label
    assert ("no VNNI" in prog.cpu) == (vnni == "0") and prog.cpu_note.startswith("CPU ")
    with torch.no_grad():  # 7-bit keeps the outputs where fp32's are, on any CPU
        assert nn.functional.cosine_similarity(prog.model(x).flatten(), model(x).flatten(), dim=0) > 0.99


@pytest.mark.parametrize("vnni", ["0", "1"])
def test_pt2e_activations_are_7_bit_without_vnni(monkeypatch, vnni):
    from nbopt.quantization.backends import build_pt2e

    monkeypatch.setenv("NBOPT_CPU_VNNI", vnni)
    model, x = _linear_stack()
    prog = build_pt2e(model, [x], x, progress=False)  # compiles lazily: the converted graph is enough here
    qmax = {n.args[4] for n in prog.model.converted.graph.nodes
            if n.op == "call_function" and "quantize_per_tensor" in str(n.target)}
    assert qmax == ({127} if vnni == "0" else {255})
    assert ("reduce_range" in prog.settings) == (vnni == "0")


def test_int8_result_records_cpu_and_choice(ort_result, pt2e_result):
    from nbopt.cpu import int8_settings

    s = int8_settings()
    for r in (ort_result, pt2e_result):
        assert any(s.cpu.label in n and s.label in n for n in r.notes), r.notes


def test_backend_registry_rejects_duplicates_and_serves_a_registered_backend(monkeypatch):
    """A registered builder is what quantize(mode="int8", backend=name) runs; a second registration raises."""
    from nbopt.quantization import backends
    from nbopt.quantization.backends import BUILDERS, register_backend

    assert list(BUILDERS) == ["pt2e", "onnxruntime"]
    from nbopt.quantization.options import BACKENDS
    assert BACKENDS == ("auto", "pt2e", "onnxruntime")
    with pytest.raises(NboptError, match="'pt2e' is already registered; pass override=True"):
        register_backend("pt2e", backends.build_pt2e)
    with pytest.raises(NboptError, match="'auto' is not a backend name"):
        register_backend("auto", backends.build_pt2e)

    calls = []

    def build_identity(model, calib, example, *, dynamic=False, progress=True):
        calls.append(dynamic)
        return Int8Program("identity", model, 0, 0)

    monkeypatch.setitem(backends._BUILDERS, "identity", None)  # removed again after the test
    register_backend("identity", build_identity, override=True)
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    x = torch.randn(8, 4)
    result = nbopt.quantize(model, x, mode="int8", backend="identity", progress=False, repeat=1)
    assert calls == [False] and result.backend == "identity"
    assert torch.equal(result.model(x), model(x))  # the builder's program, run as it was built


def test_auto_pick_reports_medians_with_spread_and_calls():
    fast = Int8Program("fast", nn.Identity(), 1, 1)
    slow = Int8Program("slow", _Sleep(), 1, 1)
    prog, reason = _pick({"slow": slow, "fast": fast}, {}, torch.randn(2, 3), repeat=6)
    assert prog is fast and "measured both on your input, interleaved" in reason
    assert reason.count("IQR") == 2 and reason.count("n=6") == 2  # each program: median (IQR q1-q3, n=calls)
