"""End to end in a real browser: JupyterLab + Debian chromium + npm playwright-core.

Starts JupyterLab on 127.0.0.1 with a token and a throwaway HOME/JUPYTER dirs, opens a copy of
notebooks/03_pruning.ipynb, runs it, moves the PruningPanel's sparsity slider with ArrowRight, and checks
that the page's per-layer table and accuracy readout equal what the kernel computes for that setting
with a fresh ``nbopt.Pruner`` and ``nbopt.demo.evaluate``. Screenshot: test-artifacts/pruning_panel.png.
``make test`` installs what it needs (``make browser-deps``: apt chromium, npm playwright-core).
"""
from __future__ import annotations

import json

import pytest
from harness import ROOT, check_page, drive

PRESSES = 10  # 10 x ArrowRight on a 0.05-step slider: 0.00 -> 0.50


def test_slider_moved_with_keyboard_updates_table_and_accuracy(jupyter):
    out = drive(jupyter("lab", ROOT / "notebooks" / "03_pruning.ipynb"), PRESSES)

    before, after = out["before"], out["after"]
    assert float(before["valuenow"]) == 0.0 and before["readout"] == "0%"
    assert float(after["valuenow"]) == pytest.approx(0.05 * PRESSES, abs=0.051)  # aria value has 1 decimal
    assert after["readout"] == f"{0.05 * PRESSES:.0%}"
    assert after["rows"] != before["rows"] and after["accuracy"] != before["accuracy"]
    assert before["plot"] and after["plot"] and after["plot"] != before["plot"], "the plot did not update in place"

    marker = [ln for ln in out["kernel"].splitlines() if ln.startswith("NBOPT_JSON")]
    assert marker, out["kernel"]
    kernel = json.loads(marker[0][len("NBOPT_JSON"):])
    assert kernel["slider"] == pytest.approx(0.05 * PRESSES)

    # the page's table, totals and accuracy readout show the kernel's own numbers for this setting
    check_page(out, kernel)
    assert kernel["panel_accuracy"] == kernel["accuracy"]
