"""The PruningPanel in Notebook 7 and in Voila, in Debian's chromium (JupyterLab: test_pruning_panel_browser.py).

A two-cell notebook (demo model + PruningPanel) is served by ``jupyter notebook`` (opened from /tree, then
/notebooks/NAME.ipynb, run from the page) or rendered by ``voila`` (which executes it itself). A key press
moves the sparsity slider, and the page's table, totals and accuracy must equal a fresh ``nbopt.Pruner`` +
``demo.evaluate`` for the slider's new value, computed here in the test process.

Notebook 7 (7.6) handles keys in its command-mode shortcuts before widgets see them, unlike JupyterLab, so
ArrowLeft/Right on a focused slider move the notebook cursor instead; PageUp/PageDown/Home/End reach the
slider. The test uses PageUp there and records whether ArrowRight reached it (``arrow_moved``).
"""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from harness import check_page, drive

import nbopt
from nbopt import demo

CELLS = ["import nbopt\nfrom nbopt import demo\n\nmodel = demo.load_model()\nx = demo.example_input(1)",
         "panel = nbopt.PruningPanel(model, x, evaluate=demo.evaluate)\npanel"]


@pytest.fixture(scope="module")
def notebook(tmp_path_factory) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path_factory.mktemp("frontends") / "panel_smoke.ipynb"
    nbformat.write(nb, path)
    return path


def expected(amount: float) -> dict:
    """What the panel must show for ``amount``, from the core directly."""
    pruner = nbopt.Pruner(demo.load_model(), demo.example_input(1), progress=False).set(amount=amount)
    rep = pruner.report
    return {"layers": list(rep.index), "sparsity": list(rep["sparsity"]), "params_after": list(rep["params_after"]),
            "effective_macs": list(rep["effective_macs"]), "total_sparsity": pruner.sparsity,
            "accuracy": demo.evaluate(pruner.model)}


@pytest.mark.parametrize("app, key, presses, value", [
    ("notebook", "PageUp", 1, 0.25),   # one PageUp = 5 steps of 0.05
    ("voila", "ArrowRight", 4, 0.20),
])
def test_slider_key_press_updates_panel(jupyter, notebook, app, key, presses, value):
    out = drive(jupyter(app, notebook), presses, key=key)
    before, after = out["before"], out["after"]
    assert before["readout"] == "0%" and after["readout"] == f"{value:.0%}"
    assert after["rows"] != before["rows"] and after["accuracy"] != before["accuracy"]
    assert after["plot"] != before["plot"], "the plot did not update in place"
    check_page(out, expected(value))
    if app == "notebook":
        assert out["tree_listed"]
