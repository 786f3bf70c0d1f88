"""Issue 17, deployment and pipeline: no files left behind, and every failure an error that says why."""
from __future__ import annotations

import gc
import glob
import os
import tempfile

import pytest
import torch
from torch import nn

import nbopt
from nbopt.deployment.runtime import RuntimeModule
from nbopt.errors import ForwardError, InputError, UnsupportedModelError
from nbopt.pruning.result import measure_pair

ANSI = "\x1b["


def small() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).eval()


X = torch.randn(1, 3, 8, 8)


def export_dirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "nbopt-export-*")))


# ---------------------------------------------------------------- files left behind


def test_export_temp_dir_removed_when_result_is_collected():
    before = export_dirs()
    results = [nbopt.export(small(), X, latency=False) for _ in range(3)]
    ours = {str(r.path.parent) for r in results}
    assert all(os.path.isdir(d) for d in ours) and ours <= export_dirs() - before
    del results
    gc.collect()
    assert not any(os.path.exists(d) for d in ours)
    assert not (export_dirs() - before) & ours


def test_user_path_is_kept(tmp_path):
    res = nbopt.export(small(), X, path=tmp_path / "m.onnx", latency=False)
    del res
    gc.collect()
    assert (tmp_path / "m.onnx").exists()


def test_failed_export_leaves_no_temp_dir(monkeypatch):
    made = []
    real = tempfile.mkdtemp

    def recording(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(tempfile, "mkdtemp", recording)

    class Branchy(nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x

    with pytest.raises(UnsupportedModelError):
        nbopt.export(Branchy(), torch.ones(1, 3), latency=False)
    assert made and not any(os.path.exists(d) for d in made)


def test_runtime_module_keeps_the_file_alive():
    res = nbopt.export(small(), X, latency=False)
    folder = res.path.parent
    runtime = RuntimeModule(res.path, "onnx", X)
    expected = small()(X)
    del res
    gc.collect()
    assert folder.exists()
    torch.testing.assert_close(runtime(X), expected, atol=1e-4, rtol=1e-4)
    del runtime
    gc.collect()
    assert not folder.exists()


def test_optimize_final_model_keeps_its_export():
    model = small()
    calib = [torch.randn(2, 3, 8, 8) for _ in range(2)]
    res = nbopt.optimize(model, X, calib=calib, steps=("export", "verify"), repeat=3, progress=False)
    final = res.model
    folder = res.export.path.parent
    del res
    gc.collect()
    assert folder.exists()
    assert final(X).shape == (1, 4)
    del final
    gc.collect()
    assert not folder.exists()


# ---------------------------------------------------------------- export errors that say why


@pytest.mark.parametrize("bad", [torch.randn(1, 3, 9, 9), torch.randn(3, 8, 8), torch.randn(1, 3, 8, 8).double()],
                         ids=["shape", "rank", "dtype"])
def test_export_wrong_input_is_a_forward_error(bad):
    with pytest.raises(ForwardError) as info:
        nbopt.export(small(), bad, latency=False)
    msg = str(info.value)
    assert tuple(bad.shape).__repr__() in msg and ANSI not in msg and "step 1/3" not in msg


def test_export_empty_tuple_is_a_forward_error():
    with pytest.raises(ForwardError, match=r"\(no tensors\)") as info:
        nbopt.export(small(), (), latency=False)
    assert ANSI not in str(info.value)


def test_export_meta_input_is_refused_clearly():
    with pytest.raises(InputError, match="meta device.*to_empty"):
        nbopt.export(small(), torch.randn(1, 3, 8, 8, device="meta"), latency=False)


def test_export_bfloat16_onnx_is_a_clear_error():
    model = small().to(torch.bfloat16)
    with pytest.raises(UnsupportedModelError, match="bfloat16.*model.float\\(\\)") as info:
        nbopt.export(model, X.bfloat16(), format="onnx", latency=False)
    assert "InvalidGraph" not in str(info.value) and ANSI not in str(info.value)


def test_exporter_messages_have_no_ansi_codes():
    class Branchy(nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x

    with pytest.raises(UnsupportedModelError) as info:
        nbopt.export(Branchy(), torch.ones(1, 3), latency=False)
    assert ANSI not in str(info.value)


# ---------------------------------------------------------------- optimize on a dict-output model


class DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return {"logits": self.fc(h.mean((2, 3))), "features": h}


def test_optimize_dict_output_model():
    torch.manual_seed(0)
    model = DictOut().eval()
    calib = [torch.randn(2, 3, 8, 8) for _ in range(2)]
    res = nbopt.optimize(model, torch.randn(2, 3, 8, 8), calib=calib, steps=("profile", "fuse", "prune", "verify"),
                         repeat=3, progress=False)
    table = res.table
    assert list(table.index) == ["profile", "fuse", "prune", "verify"]
    done = table[table["status"] == "done"]
    assert "profile" in done.index and "verify" in done.index
    assert (done["max_abs_diff"] < 1e-3).all()
    assert table["note"].map(lambda n: isinstance(n, str) and len(n) > 0).all()


# ---------------------------------------------------------------- prune results and the latency measurement


def test_prune_without_latency_prints():
    res = nbopt.prune(small(), X, amount=0.5, latency=False, progress=False)
    text = repr(res)
    assert "PruneResult" in text and "latency" not in text
    assert str(res) == text
    assert "<table" in res._repr_html_()
    assert res.speedup != res.speedup  # NaN without latency


class FailsOnCall(nn.Module):
    def __init__(self, on: int):
        super().__init__()
        self.fc, self.on, self.calls = nn.Linear(4, 2), on, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.on:
            raise RuntimeError("boom on call %d" % self.calls)
        return self.fc(x)


def test_latency_measurement_failure_is_a_forward_error():
    x = torch.randn(2, 4)
    with pytest.raises(ForwardError, match=r"FailsOnCall failed on inputs \(2, 4\) float32.*boom on call 3"):
        measure_pair(FailsOnCall(on=3), nn.Linear(4, 2), x, repeat=9)


def test_prune_latency_failure_is_a_forward_error():
    x = torch.randn(2, 4)
    probe = FailsOnCall(on=-1)
    nbopt.prune(probe, x, amount=0.5, latency=False, progress=False)
    model = FailsOnCall(on=probe.calls + 3)  # its 3rd call inside the latency measurement
    with pytest.raises(ForwardError, match=r"failed on inputs \(2, 4\) float32.*boom"):
        nbopt.prune(model, x, amount=0.5, progress=False)


# ---------------------------------------------------------------- compatibility prints nothing


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        y = self.fc(x)
        return y * 2 if y.sum() > 0 else y


def test_compatibility_prints_nothing_when_capture_logs(capfd):
    with pytest.raises(UnsupportedModelError, match="data-dependent"):
        nbopt.compatibility(Branchy().eval(), torch.randn(2, 4), targets="onnx")
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_compatibility_prints_nothing_for_a_small_model(capfd):
    df = nbopt.compatibility(small(), X, targets="onnx")
    assert len(df)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
