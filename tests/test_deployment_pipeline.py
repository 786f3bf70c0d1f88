"""nbopt.optimize: one measured row per step; accuracy measured on the demo's held-out split."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import nbopt
from nbopt import demo
from nbopt.errors import NboptError


def test_optimize_fuse_export_verify_on_demo(demo_model, untouched, tmp_path):
    guard = untouched(demo_model)
    res = nbopt.optimize(demo_model, demo.example_input(1), calib=demo.calibration_data(64), evaluate=demo.evaluate,
                         steps=("profile", "fuse", "export", "verify"), path=tmp_path / "d.onnx", repeat=2,
                         progress=False)
    guard.assert_unchanged()
    t = res.table
    assert list(t.index) == ["profile", "fuse", "export", "verify"] and (t["status"] == "done").all()
    base = demo.evaluate(demo_model)
    assert t.loc["profile", "accuracy"] == base
    assert abs(t.loc["verify", "accuracy"] - base) < 1e-9  # exported ONNX model in onnxruntime, same digits
    assert t.loc["profile", "macs"] == 2_556_672 and t.loc["profile", "params"] == 105_866
    assert t.loc["fuse", "params"] < t.loc["profile", "params"]  # BN parameters gone
    assert t.loc["export", "file_bytes"] == (tmp_path / "d.onnx").stat().st_size
    assert (t["top1_agreement"] == 1.0).all() and t["max_abs_diff"].max() < 1e-4
    assert res.export is not None and res.speedup > 0


def test_optimize_prune_and_quantize_steps(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    calib = [torch.randn(16, 1, 8, 8) for _ in range(2)]
    res = nbopt.optimize(model, calib[0][:1], calib=calib, prune_amount=0.5, path=tmp_path, repeat=2,
                         progress=False)
    t = res.table
    assert list(t.index) == list(nbopt.pipeline.STEPS) and (t["status"] == "done").all()
    assert t.loc["prune", "params"] < t.loc["fuse", "params"] / 2  # half the channels of the middle conv
    assert "real int8 (onnxruntime)" in t.loc["quantize", "note"]
    assert t.loc["export", "file_bytes"] == res.export.file_bytes
    assert math.isnan(t.loc["verify", "accuracy"])  # no evaluate given: fidelity columns only
    assert 0 <= t.loc["verify", "top1_agreement"] <= 1


def test_optimize_bad_input():
    model = demo.load_model()
    x = demo.example_input(1)
    with pytest.raises(NboptError, match="unknown pipeline step.*'compile'.*valid steps"):
        nbopt.optimize(model, x, calib=x, steps=("fuse", "compile"))
    with pytest.raises(NboptError, match="needs calib="):
        nbopt.optimize(model, x, calib=None)
    with pytest.raises(NboptError, match="exports only to ONNX"):
        nbopt.optimize(model, x, calib=x, format="torchscript")


# ---------------------------------------------------------------- timing a user can trust (issue 18, section 2)

def test_optimize_rows_latency_and_speedup_from_one_measurement(demo_model, monkeypatch):
    from nbopt import timing
    loads = iter([timing.MachineLoad(0.0, 2)] * 2)  # the profile row's timing quiet, then (the fuse row) busy
    monkeypatch.setattr(timing, "machine_load", lambda: next(loads, timing.MachineLoad(30.0, 2)))
    res = nbopt.optimize(demo_model, demo.example_input(1), calib=demo.calibration_data(64),
                         steps=("profile", "fuse"), repeat=6, progress=False)
    t = res.table
    for step, row in t.iterrows():
        assert row["speedup"] == row["original_latency_ms"] / row["latency_ms"]  # exactly: the same calls
        assert row["latency_q1_ms"] <= row["latency_ms"] <= row["latency_q3_ms"]
        assert row["original_latency_q1_ms"] <= row["original_latency_ms"] <= row["original_latency_q3_ms"]
        assert row["speedup_q1"] <= row["speedup_q3"] and row["latency_calls"] == 6
    assert bool(t.loc["fuse", "noisy"]) and res.noisy
    assert any(n.startswith("fuse: noisy speedup over the original") for n in res.notes)
    assert "IQR" in repr(res) and "machine busy" in res._repr_html_()
