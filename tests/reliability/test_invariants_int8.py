"""Real int8 and dynamic quantization leave nothing behind, also when capture or calibration fails.

The int8 paths are the ones most likely to leave state around: ``torch.export`` swaps modules and
installs fake modes, PT2E inserts observers, ``torch.compile`` caches graphs, onnxruntime owns threads.
Each test snapshots the model and the kernel (``kernel_state.Snapshot``) and checks the int8 model
against the fp32 outputs. The onnxruntime backend is cheap, so it runs over random networks; the PT2E
path compiles, so it runs on one fixed network.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from torch import nn

import nbopt
from nbopt.model_state import preserved
from kernel_state import Snapshot
from strategies import RELIABLE, cases

pytest.importorskip("onnxruntime")
FEW = settings(RELIABLE, max_examples=max(3, RELIABLE.max_examples // 5))


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def fp32(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's eval-mode outputs; its training flags come back as they were."""
    with preserved(model, eval_mode=True), torch.no_grad():
        return model(x)


def untouched_and_close(model: nn.Module, x: torch.Tensor, mode: str) -> None:
    """Quantize through onnxruntime; the model is untouched and the int8 outputs point where fp32's do."""
    snap = Snapshot.take(model)
    result = nbopt.quantize(model, x, mode=mode, backend="onnxruntime", progress=False, repeat=1)
    snap.assert_unchanged()
    assert result.backend == "onnxruntime"
    with torch.no_grad():
        out = result.model(x)
    # random weights and a few calibration samples: int8 keeps the direction of the outputs, not every digit
    assert cosine(out, fp32(model, x)) > 0.9


@FEW
@given(case=cases(max_blocks=2, family="image", keyword=False))
def test_onnxruntime_int8_never_touches_the_model_and_tracks_fp32(case):
    untouched_and_close(nn.Sequential(case.model), case.inputs(batch=8), "int8")


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


#: what torch.compile itself installs once per process (torch._dynamo.mutation_guard): PyTorch's own
#: generation-tagging wrapper on nn.Module.__init__/__setstate__, the same for every torch.compile user.
DYNAMO_ONCE = {"nn.Module.__init__ replaced", "nn.Module.__setstate__ replaced",
               "nn.Module.___needs_generation_tag_patch added"}


def test_pt2e_int8_never_touches_the_model_and_tracks_fp32():
    model = small_cnn()
    model.train()  # a model left in training mode by the user comes back in training mode
    x = torch.randn(16, 3, 12, 12)
    snap = Snapshot.take(model)
    result = nbopt.quantize(model, x, mode="int8", backend="pt2e", progress=False, repeat=1)
    assert set(snap.problems()) <= DYNAMO_ONCE, snap.problems()  # nothing of nbopt's own
    snap = Snapshot.take(model)
    nbopt.quantize(model, x, mode="int8", backend="pt2e", progress=False, repeat=1)
    snap.assert_unchanged()  # and from the second call on, nothing at all
    assert model.training
    with torch.no_grad():
        out = result.model(x)
    assert cosine(out, fp32(model, x)) > 0.98


@settings(FEW, max_examples=2)  # each example exports LSTM/attention stacks through the dynamo exporter
@given(case=cases(max_blocks=2, family="sequence", keyword=False))
def test_dynamic_int8_never_touches_the_model(case):
    untouched_and_close(nn.Sequential(case.model), case.inputs(batch=4), "dynamic")


def test_dynamic_int8_linear_stack_tracks_fp32_on_any_cpu():
    """A 2-layer Linear stack read cosine 0.75 with full-range u8 x s8 on an AVX2 CPU without VNNI (16-bit
    saturation); the settings nbopt.cpu picks for the CPU (7-bit there, full range with VNNI) keep it."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 3))
    x = torch.randn(4, 2, 8) * 3
    untouched_and_close(model, x, "dynamic")
    result = nbopt.quantize(model, x, mode="dynamic", backend="onnxruntime", progress=False, repeat=1)
    with torch.no_grad():
        assert cosine(result.model(x), fp32(model, x)) > 0.99


class DataDependent(nn.Module):
    """Python control flow on a tensor's value: no exporter can capture it as one graph."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        if y.sum() > 0:
            return y.relu()
        return -y


@pytest.mark.parametrize("backend", ["pt2e", "onnxruntime"])
def test_capture_failure_is_clear_and_leaves_no_trace(backend):
    model = DataDependent()
    snap = Snapshot.take(model)
    with pytest.raises(nbopt.NboptError) as info:
        nbopt.quantize(model, torch.randn(8, 4), mode="int8", backend=backend, progress=False, repeat=1)
    snap.assert_unchanged()
    message = str(info.value)
    assert "simulate" in message or "dynamic" in message, message
    assert info.value.__traceback__ is not None


def test_int8_calibration_interrupted_leaves_no_trace():
    model = small_cnn()
    snap = Snapshot.take(model)

    def batches():
        yield torch.randn(4, 3, 12, 12)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        nbopt.quantize(model, batches(), mode="int8", backend="onnxruntime", progress=False, repeat=1)
    snap.assert_unchanged()
    result = nbopt.quantize(model, torch.randn(8, 3, 12, 12), mode="int8", backend="onnxruntime",
                            progress=False, repeat=1)  # the kernel is still usable
    snap.assert_unchanged()
    assert result.model(torch.randn(2, 3, 12, 12)).shape == (2, 5)
