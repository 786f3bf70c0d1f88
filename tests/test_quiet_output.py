"""Quiet cells: third-party log noise raised inside nbopt's calls never reaches the notebook."""
import logging

import pytest
import torch

pytest.importorskip("onnxruntime")


def test_onnxruntime_int8_build_prints_no_root_warning_and_leaves_logging_alone(capfd, caplog):
    import nbopt
    from nbopt import demo

    model = demo.load_model()
    x = torch.randn(4, 1, 8, 8)
    root = logging.getLogger()
    handlers = list(root.handlers)
    with caplog.at_level(logging.WARNING):
        res = nbopt.quantize(model, [x], mode="int8", backend="onnxruntime", progress=False, repeat=2)
    out, err = capfd.readouterr()
    assert not [r for r in caplog.records if "pre-processing" in r.getMessage()]
    assert "Please consider" not in out + err and "WARNING:root" not in out + err
    assert root.handlers == handlers and not any(type(f).__name__ == "_DropFrom" for f in root.filters)
    assert res.fidelity["cosine"] > 0.99  # a real program was built while quiet


def test_the_filter_drops_only_the_library_records(caplog):
    from nbopt.graph import quiet_root_logging

    with caplog.at_level(logging.WARNING), quiet_root_logging("no/such/package"):
        logging.getLogger().warning("the user's own warning")
    assert "the user's own warning" in caplog.text


def test_progress_bars_inside_calls_close_cleanly():
    """Every tqdm bar a capability opens is ``leave=False``: a saved notebook shows the result, not finished
    bars (the demo train scripts, run from a terminal, keep theirs)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "nbopt"
    left = []
    for path in root.rglob("*.py"):
        if path.name == "train.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "tqdm":
                leave = [k for k in node.keywords if k.arg == "leave"]
                if not leave or not (isinstance(leave[0].value, ast.Constant) and leave[0].value.value is False):
                    left.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not left, f"tqdm bars left behind in saved outputs: {left}"


def test_profile_plot_is_drawn_once():
    """``prof.plot()`` returns a figure pyplot does not manage: the inline backend does not draw it a second
    time at the end of the cell, and it still renders (and saves) as the cell's value."""
    import io

    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    import nbopt
    from nbopt import demo

    before = set(plt.get_fignums())
    fig = nbopt.profile(demo.load_model(), torch.randn(1, 1, 8, 8), latency=False).plot(k=3)
    assert set(plt.get_fignums()) == before
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.tell() > 1000 and len(fig.axes[0].patches) == 3


def test_simulated_note_names_bit_widths_as_text_not_a_list():
    import nbopt
    from nbopt import demo

    r = nbopt.quantize(demo.load_model(), [torch.randn(2, 1, 8, 8)], weight_bits=4, act_bits=None,
                       layer_bits={"fc": 8}, progress=False, repeat=2)
    note = next(n for n in r.notes if "bit weights would need" in n)
    assert "a runtime with 4/8-bit weights would need" in note and "[" not in note


def test_importing_torchao_after_nbopt_logs_no_pytree_notice():
    """torch 2.14 logs a deprecation WARNING per torchao enum (from torchao's import, e.g. inside ``import
    transformers``); a tutorial showed it as a stderr block. After ``import nbopt`` that one notice is dropped."""
    import subprocess
    import sys

    pytest.importorskip("torchao")
    code = "import nbopt, torchao.quantization"
    noisy = subprocess.run([sys.executable, "-c", "import torchao.quantization"], capture_output=True, text=True)
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert quiet.returncode == 0, quiet.stderr
    assert "Enum subclass" not in quiet.stderr
    if "Enum subclass" not in noisy.stderr:  # a torchao/torch pair without the notice: nothing to drop
        pytest.skip("this torchao/torch pair logs no pytree notice")
