"""PruningPanel (CNN) as JupyterLab shows it (issue 15): labels per mode, headline in consistent words, one colour
per series across redraws, an accuracy axis within [0, 100], widget widths, tables through html_table."""
from __future__ import annotations

import matplotlib
import pytest

matplotlib.use("Agg")

import nbopt  # noqa: E402
from nbopt import demo  # noqa: E402
from nbopt.display.figures import percent_limits, series_colour  # noqa: E402
from nbopt.panels.common import percent  # noqa: E402
from tests.conftest import Untouched  # noqa: E402

pytestmark = pytest.mark.skipif(not hasattr(nbopt, "Pruner"), reason="nbopt.Pruner not available")


@pytest.fixture(scope="module")
def model():
    return demo.load_model()


@pytest.fixture(scope="module")
def panel(model):
    snap = Untouched(model)
    p = nbopt.PruningPanel(model, demo.example_input(1), evaluate=demo.evaluate, debounce=0)
    yield p
    snap.assert_unchanged()  # every slider move below left the model as it was


def px(width: str) -> int:
    assert width.endswith("px"), width
    return int(width[:-2])


def line_colours(panel) -> dict[str, str]:
    return {ln.get_label(): ln.get_color() for ln in panel.figure.axes[0].get_lines()}


def test_percent_limits_hand_checked():
    assert percent_limits([98.0, 99.4]) == (96.0, 100.0)  # never above 100 (the old axis ran 94-104)
    assert percent_limits([50.0, 60.0]) == (48.0, 62.0)
    assert percent_limits([0.0, 100.0]) == (0.0, 100.0)  # margin = a tenth of the range, clipped
    assert percent_limits([]) == (0.0, 100.0)
    assert percent_limits([float("nan"), 100.0]) == (98.0, 100.0)


def test_labels_say_what_the_slider_does(panel, model):
    panel.structured.value = False  # a widget event, as in the browser
    panel.amount.value = 0.5
    assert panel.amount.description == "sparsity" and panel.threshold.description == "threshold"
    assert "fraction of the prunable weights" in panel.hint.value
    assert f"<b>{percent(panel.pruner.sparsity)}</b> weight sparsity (unstructured)" in panel.accuracy_html.value
    assert "channels removed" not in panel.accuracy_html.value + panel.totals_html.value

    panel.structured.value = True
    panel.amount.value = 0.3
    assert panel.amount.description == "channels removed" and panel.threshold.description == "importance"
    assert panel.override_amount.description == "its channels removed"
    assert "output channels of the channel groups" in panel.hint.value and "multiple of 8" in panel.hint.value
    direct = nbopt.Pruner(model, demo.example_input(1), progress=False).set(0.3, structured=True)
    rep = direct.report
    removed = 1 - rep["channels_kept"].sum() / rep["channels"].sum()  # the table's own two columns
    assert panel.totals["channels_removed"] == pytest.approx(removed)
    assert panel.totals["sparsity"] == pytest.approx(direct.sparsity)
    # one sentence, both numbers, the same words as the slider: no "sparsity 0.30" next to "43.8% sparsity"
    assert (f"<b>{percent(removed)}</b> of all output channels removed → <b>{percent(direct.sparsity)}</b> weight sparsity "
            "(structured)") in panel.accuracy_html.value
    assert percent(removed) in panel.totals_html.value and "weight sparsity" in panel.totals_html.value
    assert panel.amount.readout_format == ".0%"  # "30%": a fraction of the channels (the browser tests read it)
    panel.structured.value = False


def test_series_keep_their_colour_across_redraws(panel):
    panel.set(0.2, structured=False)
    panel.set(0.4)
    before = line_colours(panel)
    assert matplotlib.colors.same_color(before["unstructured"], series_colour("unstructured"))
    panel.set(0.3, structured=True)  # a structured point joins the plot
    after = line_colours(panel)
    assert matplotlib.colors.same_color(after["unstructured"], before["unstructured"])
    assert matplotlib.colors.same_color(after["structured"], series_colour("structured"))
    assert not matplotlib.colors.same_color(after["structured"], after["unstructured"])
    panel.set(0.5, structured=False, scope="layer")
    again = line_colours(panel)
    for name in ("unstructured", "structured"):
        assert matplotlib.colors.same_color(again[name], after[name])
    assert matplotlib.colors.same_color(again["current"], series_colour("current"))
    panel.set(0.0, scope="global")


def test_accuracy_axis_is_within_0_100(panel):
    panel.set(0.9, structured=False)  # a low accuracy joins the history
    ax = panel.figure.axes[0]
    ys = [y for ln in ax.get_lines() for y in ln.get_ydata()]
    lo, hi = ax.get_ylim()
    assert 0 <= lo <= min(ys) and max(ys) <= hi <= 100
    assert hi - max(ys) >= 0 and (lo == 0 or min(ys) - lo >= 2)  # air below the data unless clipped at 0
    assert max(ys) <= 100
    panel.set(0.0)


def test_widths_and_tables(panel):
    for slider in (panel.amount, panel.threshold, panel.override_amount):
        assert px(slider.layout.width) >= 400 and slider.layout.min_width == slider.layout.width
        assert slider.style.description_width == "initial"
    for button in (panel.measure_button, panel.export_button, panel.override_set, panel.override_clear,
                   panel.recover_button):
        assert px(button.layout.width) >= 8 * len(button.description) + 28, button.description
        assert button.layout.flex == "0 0 auto"  # a flex row never squashes it
    for toggle in (panel.by, panel.structured, panel.scope):
        assert toggle.style.description_width == "initial"
    top = panel.widget.children[0]
    assert top.layout.flex_flow == "row wrap"  # the plot column wraps below in a narrow notebook
    assert panel.plot.layout.width == "100%" and panel.plot.layout.max_width == "560px"
    assert "jp-RenderedHTMLCommon" in panel.table._dom_classes and "nbopt-table" in panel.table._dom_classes
    assert 'border="1"' not in panel.table.value and "nbopt-scroll" in panel.table.value
    assert "<th>channels_kept</th>" in panel.table.value


def test_language_model_options_need_the_lm_mode(model):
    with pytest.raises(nbopt.NboptError, match="pattern= belong to the language-model mode"):
        nbopt.PruningPanel(model, demo.example_input(1), pattern="2:4")
