"""%export through IPython's InteractiveShell."""
from __future__ import annotations

import pytest
from IPython.core.error import UsageError

from .conftest import run


@pytest.fixture(autouse=True)
def _setup(ip, tmp_path):
    ip.run_cell("import torch\nfrom nbopt import demo\nmodel = demo.load_model()\nx = demo.example_input(1)")
    ip.user_ns["out_dir"] = str(tmp_path)


def test_export_magic_stores_result(ip, tmp_path):
    value, err = run(ip, f"%export model x --format torchscript --path {tmp_path}/m.pt --no-latency -o ex")
    assert err is None
    ex = ip.user_ns["ex"]
    assert value is None  # shown once by the magic, not again as the cell's value
    assert ex.path == tmp_path / "m.pt" and ex.max_abs_diff < 1e-5
    assert ex.operators["aten::_convolution"] == 9


@pytest.mark.parametrize("line, message", [
    ("model x --format tflite", "argument -f/--format: invalid choice: 'tflite'"),
    ("model nosuch", "could not evaluate inputs `nosuch`: NameError"),
    ("42 x", "must be a torch.nn.Module"),
    ("model x --path /nonexistent-dir/m.onnx", "cannot write the export to /nonexistent-dir/m.onnx"),
])
def test_export_magic_errors_are_usage_errors(ip, line, message):
    with pytest.raises(UsageError, match=message):
        ip.run_line_magic("export", line)


def test_summary_renders_through_frames_once(ip, tmp_path, monkeypatch):
    import nbopt.magics.export as magic

    shown: list = []
    monkeypatch.setattr(magic, "display", lambda obj: shown.append(getattr(obj, "data", obj)))
    value, err = run(ip, f"%export model x --format torchscript --path {tmp_path}/m.pt --no-latency -o ex")
    assert err is None and value is None and len(shown) == 1
    html, ex = shown[0], ip.user_ns["ex"]
    assert "KiB" in html and str(ex.file_bytes) not in html and "e+" not in html and "e-0" not in html
    assert "nan" not in html.lower() and "operator types" in html
