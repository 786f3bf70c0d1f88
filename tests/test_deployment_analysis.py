"""nbopt.compatibility, nbopt.peak_memory, nbopt.threads_sweep, and quantized models through nbopt.export."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import nbopt
from nbopt.errors import NboptError


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.Hardswish(), nn.GroupNorm(2, 8), nn.AdaptiveAvgPool2d(3),
                         nn.Flatten(), nn.Linear(72, 4)).eval()


def test_compatibility_table_by_operator_and_module(untouched):
    model = _net()
    guard = untouched(model)
    df = nbopt.compatibility(model, torch.randn(1, 3, 16, 16), targets=("onnx", "executorch", "torchscript"))
    guard.assert_unchanged()
    assert list(df["operator"]) == ["aten.conv2d.default", "aten.hardswish.default", "aten.group_norm.default",
                                    "aten.adaptive_avg_pool2d.default", "aten.flatten.using_ints",
                                    "aten.linear.default"]
    assert list(df["module"]) == ["0", "1", "2", "3", "4", "5"]
    assert df.loc[2, "module_type"] == "GroupNorm"
    assert df["onnx"].str.startswith(("yes", "decomposed")).all()
    assert (df["torchscript"] == "yes").all()
    if "unknown" not in df.loc[0, "executorch"]:  # executorch installed: real XNNPACK partitioning
        assert df.loc[0, "executorch"] == "xnnpack" and df.loc[1, "executorch"] == "xnnpack"
        assert df.loc[2, "executorch"].startswith("portable") and "InstanceNorm" in df.loc[2, "suggestion"]
        assert df.loc[3, "executorch"].startswith("portable") and "AvgPool2d" in df.loc[3, "suggestion"]
        assert df.loc[0, "suggestion"] == ""


def test_compatibility_unknown_target():
    with pytest.raises(NboptError, match="unknown deployment target.*'tflite'.*valid targets: onnx, executorch"):
        nbopt.compatibility(_net(), torch.randn(1, 3, 16, 16), targets=("onnx", "tflite"))


def test_peak_memory_estimate_by_hand_and_measured():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    rep = nbopt.peak_memory(model, torch.randn(1, 1, 16, 16))
    a, b = 4 * 16 * 16 * 4, 2 * 16 * 16 * 4  # conv1/relu outputs (4 ch), conv2 output (2 ch), float32 bytes
    assert list(rep.table["out_bytes"]) == [a, a, b]
    # step 1 (relu) reads conv1's output while writing its own: 2a alive; at step 2 conv1's is freed: a + b
    assert list(rep.table["alive_bytes"]) == [a, 2 * a, a + b]
    assert rep.estimated_peak_bytes == 2 * a
    assert rep.no_reuse_bytes == 2 * a + b
    assert rep.input_bytes == 16 * 16 * 4
    assert rep.measured_peak_bytes and rep.measured_peak_bytes >= b


def test_threads_sweep_restores_threads():
    before = torch.get_num_threads()
    df = nbopt.threads_sweep(nn.Linear(8, 8), torch.randn(4, 8), threads=(1, 2), repeat=3)
    assert list(df["threads"]) == [1, 2] and (df["latency_ms"] > 0).all()
    assert df.loc[0, "speedup"] == 1.0
    assert torch.get_num_threads() == before
    with pytest.raises(NboptError, match="positive integers"):
        nbopt.threads_sweep(nn.Linear(8, 8), torch.randn(4, 8), threads=(0,))


def test_quantized_onnxruntime_model_exports(tmp_path):
    from nbopt.quantization import quantize

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 4)).eval()
    x = torch.randn(16, 1, 8, 8)
    q = quantize(model, x, mode="int8", backend="onnxruntime", progress=False, repeat=2)
    res = nbopt.export(q, x, "onnx", tmp_path / "int8.onnx", repeat=2)  # a QuantResult is accepted
    assert res.max_abs_diff < 1e-5  # the same onnxruntime program as the quantized model
    assert any("QuantizeLinear" in op or op.startswith("com.microsoft") for op in res.operators)
    with pytest.raises(NboptError, match="exports only to format='onnx'"):
        nbopt.export(q.model, x, "torchscript", tmp_path / "x.pt")


def test_plots_draw(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import pandas as pd
    from nbopt.display.figures import plot_pipeline, plot_threads

    fig = plot_threads(pd.DataFrame({"threads": [1, 2], "latency_ms": [2.0, 1.2], "speedup": [1.0, 1.67]}))
    assert len(fig.axes) == 2
    table = pd.DataFrame({"status": ["done", "skipped"], "latency_ms": [2.0, float("nan")], "speedup": [1.0, 0]},
                         index=["fuse", "prune"])
    assert len(plot_pipeline(table).axes[0].patches) == 1


def test_onnx_support_functionalizes_inplace_ops():
    import pandas as pd
    from nbopt.deployment.compatibility import onnx_support

    got = onnx_support(pd.Series(["aten.relu_.default", "aten.add_.Tensor", "aten.batch_norm.default"])).tolist()
    assert got[0].startswith("yes") and got[1].startswith("yes") and got[2] == "decomposed"


def test_threads_sweep_is_one_interleaved_measurement_with_spread():
    from nbopt.deployment.threads import threads_sweep

    before = torch.get_num_threads()
    df = threads_sweep(nn.Sequential(nn.Linear(64, 64), nn.ReLU()).eval(), torch.randn(8, 64), (1, 2, 1), repeat=6)
    assert torch.get_num_threads() == before
    assert list(df["threads"]) == [1, 2, 1] and (df["latency_calls"] == 6).all()
    assert (df["speedup"] == df["latency_ms"].iloc[0] / df["latency_ms"]).all()
    assert ((df["latency_q1_ms"] <= df["latency_ms"]) & (df["latency_ms"] <= df["latency_q3_ms"])).all()
    assert (df["speedup_q1"] <= df["speedup_q3"]).all()
    assert isinstance(df.attrs["noisy"], bool) and (df.attrs["note"] != "") == df.attrs["noisy"]
