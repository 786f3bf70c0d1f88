"""nbopt.fuse and nbopt.export: numeric checks, operator lists, runtimes, atomic writes, clear errors."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import nbopt
from nbopt import demo
from nbopt.errors import NboptError


class Gate(nn.Module):
    """A data-dependent branch: cannot be captured as one graph."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return x - 1


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.gate = Gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.lin(x))


class Tiny(nn.Module):
    """conv -> bn -> relu, a bn whose conv output is also used elsewhere (must not fold), linear -> bn1d."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 1)
        self.bn2 = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, 6)
        self.bn3 = nn.BatchNorm1d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        z = self.conv2(y)
        y = self.bn2(z) + z  # z has two users: folding bn2 into conv2 would change the sum
        return self.bn3(self.fc(self.drop(y.mean((2, 3)))))


def _randomize_bn(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return _randomize_bn(Tiny()), torch.randn(2, 3, 8, 8)


def test_fuse_folds_only_safe_pairs_and_keeps_outputs(tiny, untouched):
    model, x = tiny
    guard = untouched(model)
    res = nbopt.fuse(model, x)
    guard.assert_unchanged()
    assert res.method == "fx"
    assert res.fused == [("conv", "bn"), ("fc", "bn3")]  # bn2's conv output has a second user
    assert res.removed == ["drop"]
    assert isinstance(res.model.bn, nn.Identity) and isinstance(res.model.bn2, nn.BatchNorm2d)
    assert res.max_abs_diff < 1e-5
    with torch.no_grad():
        torch.testing.assert_close(res.model(x), model(x), atol=1e-5, rtol=1e-5)


def test_fuse_demo_and_sequential_fallback(demo_model):
    x = demo.example_input(4)
    res = nbopt.fuse(demo_model, x)
    assert len(res.fused) == 9 and res.removed == ["dropout"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in res.model.modules())
    assert res.max_abs_diff < 1e-4
    seq = _randomize_bn(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), Gate()))
    res = nbopt.fuse(seq, torch.randn(1, 1, 6, 6))  # Gate breaks fx tracing
    assert res.method == "sequential" and res.fused == [("0", "1")] and res.max_abs_diff < 1e-5


def test_fuse_channels_last_is_measured(demo_model):
    res = nbopt.fuse(demo_model, demo.example_input(2), channels_last=True, repeat=2)
    assert set(res.latency_ms) == {"contiguous", "channels_last"}
    assert res.model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)


@pytest.fixture(scope="module")
def onnx_demo(tmp_path_factory, demo_model):
    path = tmp_path_factory.mktemp("onnx") / "digits.onnx"
    return nbopt.export(demo_model, demo.example_input(1), "onnx", path, repeat=2), path


def test_export_onnx_checked_in_onnxruntime(onnx_demo):
    res, path = onnx_demo
    assert res.path == path and path.exists() and res.file_bytes == path.stat().st_size
    assert res.runtime == "onnxruntime" and res.max_abs_diff < 1e-4
    # 9 convs (BN folded by the exporter's optimizer), 9 ReLUs, 2 residual adds, global pool, classifier
    assert res.operators["Conv"] == 9 and res.operators["Relu"] == 9 and res.operators["Add"] == 2
    assert res.operators["Gemm"] == 1
    assert res.latency_ms > 0 and res.eager_latency_ms > 0
    assert [p.name for p in path.parent.iterdir()] == ["digits.onnx"]  # no temp file left


def test_export_torchscript(tmp_path, demo_model):
    res = nbopt.export(demo_model, demo.example_input(1), "torchscript", tmp_path, latency=False)
    assert res.path == tmp_path / "model.pt" and res.max_abs_diff < 1e-5
    assert res.operators["aten::_convolution"] == 9 and res.operators["aten::linear"] == 1


def test_export_executorch_xnnpack(tmp_path):
    pytest.importorskip("executorch")
    model = _randomize_bn(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                        nn.Linear(64, 3)))
    res = nbopt.export(model, torch.randn(1, 1, 6, 6), "executorch", tmp_path / "m.pte", latency=False)
    assert res.path.exists() and res.max_abs_diff < 1e-4
    assert res.operators["xnnpack:aten.convolution.default"] == 1
    assert res.operators["xnnpack:aten.linear.default"] == 1


def test_export_bad_inputs_leave_nothing(tmp_path, demo_model):
    x = demo.example_input(1)
    with pytest.raises(NboptError, match="unknown export format 'tflite'; use one of onnx, torchscript"):
        nbopt.export(demo_model, x, "tflite", tmp_path / "m")
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    with pytest.raises(NboptError, match="cannot write the export to .*Pass path= somewhere you can write"):
        nbopt.export(demo_model, x, "torchscript", blocker / "m.pt")
    with pytest.raises(NboptError, match="create the folder first"):
        nbopt.export(demo_model, x, "torchscript", tmp_path / "missing" / "m.pt")
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        nbopt.export(demo_model.state_dict(), x)
    assert sorted(os.listdir(tmp_path)) == ["afile"]


def test_export_data_dependent_branch_names_module(tmp_path, untouched):
    model = Branchy().eval()
    guard = untouched(model)
    with pytest.raises(NboptError, match=r"data-dependent control flow in module gate \(Gate\).*torch.where.*"
                                         r"format='torchscript'"):
        nbopt.export(model, torch.randn(2, 4), "onnx", tmp_path / "b.onnx")
    guard.assert_unchanged()
    assert os.listdir(tmp_path) == []
    res = nbopt.export(model, torch.randn(2, 4), "torchscript", tmp_path / "b.pt", latency=False)  # the way out
    assert res.max_abs_diff < 1e-6 and any("froze a data-dependent" in n for n in res.notes)


# ---------------------------------------------------------------- timing a user can trust (issue 18, section 2)

def test_export_speedup_and_latencies_come_from_one_measurement(tmp_path, demo_model):
    res = nbopt.export(demo_model, demo.example_input(2), "torchscript", tmp_path / "m.pt", repeat=6)
    assert res.speedup == res.eager_latency_ms / res.latency_ms == res.speedup_spread.value
    assert res.latency["runtime"]["median_ms"] == res.latency_ms
    assert res.latency["eager"]["median_ms"] == res.eager_latency_ms
    for s in res.latency.values():
        assert s["q1_ms"] <= s["median_ms"] <= s["q3_ms"] and s["n"] == 6
    row = res.summary()
    assert row["latency_calls"] == 6 and row["speedup_q1"] <= row["speedup_q3"] and row["noisy"] == res.noisy
    assert "IQR" in repr(res) and (res.latency_note in repr(res) if res.noisy else res.latency_note == "")


def test_fuse_channels_last_ratio_has_its_spread(demo_model):
    res = nbopt.fuse(demo_model, demo.example_input(4), channels_last=True, repeat=6)
    lat = res.latency_ms
    assert res.channels_last_speedup.value == lat["contiguous"] / lat["channels_last"]
    assert {k: v["median_ms"] for k, v in res.latency.items()} == lat
    assert all(v["n"] == 6 and v["q1_ms"] <= v["median_ms"] <= v["q3_ms"] for v in res.latency.values())
    assert "IQR" in repr(res) and (bool(res.notes) == res.noisy)
