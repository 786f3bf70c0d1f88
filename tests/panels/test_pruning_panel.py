"""PruningPanel: every readout equals what nbopt.Pruner and demo.evaluate compute directly."""
from __future__ import annotations

import matplotlib
import pandas as pd
import pytest

matplotlib.use("Agg")

import nbopt  # noqa: E402
from nbopt import demo  # noqa: E402
from tests.snapshot import same_state, state_fingerprint  # noqa: E402
from nbopt.panels.common import percent  # noqa: E402

pytestmark = pytest.mark.skipif(not hasattr(nbopt, "Pruner"), reason="nbopt.Pruner (pruning issue) not available")


@pytest.fixture(scope="module")
def model():
    return demo.load_model()


@pytest.fixture(scope="module")
def x():
    return demo.example_input(1)


@pytest.fixture(scope="module")
def panel(model, x):
    return nbopt.PruningPanel(model, x, evaluate=demo.evaluate, debounce=0)


def direct(model, x, **setting):
    pruner = nbopt.Pruner(model, x, progress=False)
    amount = setting.pop("amount", None)
    pruner.set(amount, **setting)
    return pruner


def test_exported(panel):
    from nbopt.panels import PruningPanel

    assert nbopt.PruningPanel is PruningPanel and isinstance(panel, PruningPanel)


def test_slider_values_equal_core(panel, model, x):
    panel.amount.value = 0.5  # what the slider does (debounce=0: immediate)
    expected = direct(model, x, amount=0.5)
    pd.testing.assert_frame_equal(panel.report, expected.report)
    assert panel.totals["sparsity"] == pytest.approx(expected.sparsity)
    assert panel.totals["effective_macs"] == pytest.approx(expected.report["effective_macs"].sum())
    assert panel.accuracy == demo.evaluate(expected.model)
    # the rendered table shows those numbers
    for layer, row in expected.report.iterrows():
        assert f"<th>{layer}</th>" in panel.table.value
    assert percent(expected.report["sparsity"].iloc[0]) in panel.table.value
    assert f"{100 * panel.accuracy:.2f}%" in panel.accuracy_html.value


def test_structured_threshold_scope_and_overrides(panel, model, x):
    panel.set(0.3, structured=True)
    exp = direct(model, x, amount=0.3, structured=True)
    pd.testing.assert_frame_equal(panel.report, exp.report)
    assert panel.accuracy == demo.evaluate(exp.model)
    panel.set(threshold=0.05, structured=False, scope="global")
    exp = direct(model, x, threshold=0.05)
    pd.testing.assert_frame_equal(panel.report, exp.report)
    panel.set(0.4, scope="layer")
    panel.set_override("fc", 0.1)
    exp = direct(model, x, amount=0.4, scope="layer", overrides={"fc": 0.1})
    pd.testing.assert_frame_equal(panel.report, exp.report)
    assert panel.report.loc["fc", "sparsity"] == pytest.approx(0.1, abs=0.01)
    panel.clear_overrides()
    panel.set(0.0, scope="global")


def test_history_plot_grows_and_marks_current(panel):
    n = len(panel.history)
    panel.set(0.2)
    panel.set(0.6)
    hist = panel.history
    assert len(hist) >= n + 1
    ax = panel.figure.axes[0]
    star = [ln for ln in ax.get_lines() if ln.get_marker() == "*"]
    assert len(star) == 1
    assert star[0].get_xdata()[0] == pytest.approx(100 * panel.totals["sparsity"])
    assert star[0].get_ydata()[0] == pytest.approx(100 * panel.accuracy)
    assert bytes(panel.plot.value).startswith(b"\x89PNG")  # the figure is shown in place, then closed
    import matplotlib.pyplot as plt

    assert not plt.fignum_exists(panel.figure.number)


def test_export_and_model_untouched(model, x):
    fp = state_fingerprint(model)
    panel = nbopt.PruningPanel(model, x, debounce=0)
    panel.set(0.3, structured=True)
    panel.export_button.click()
    assert panel.result is not None and panel.result is not model
    n_after = sum(p.numel() for p in panel.result.parameters())
    assert n_after < sum(p.numel() for p in model.parameters())
    assert "panel.result" in panel.status.value
    measured = panel.measure()
    assert measured.loc["params", "after"] == n_after
    assert "measured: latency" in panel.measured_html.value
    assert same_state(model, fp)
    assert panel.accuracy is None and "evaluate=" in panel.accuracy_html.value


def test_callback_errors_are_shown_in_panel(model, x):
    panel = nbopt.PruningPanel(model, x, debounce=0)
    panel.override_layer.value = "fc"
    panel.override_amount.value = 0.5
    panel.overrides["not_a_layer"] = 0.3  # a bad override reaching the core through a callback
    panel.amount.value = 0.2
    assert "not_a_layer" in panel.status.value and "nbopt-error" in panel.status.value
    panel.overrides.clear()
    panel.amount.value = 0.25
    assert panel.status.value == ""
    with pytest.raises(nbopt.NboptError):
        panel.set_override("nope", 0.5)
    assert "nope" not in panel.overrides


def test_bad_arguments():
    with pytest.raises(TypeError):
        nbopt.PruningPanel("not a model", demo.example_input(1))
    with pytest.raises(TypeError, match="evaluate"):
        nbopt.PruningPanel(demo.load_model(), demo.example_input(1), evaluate=0.9)


def test_only_the_active_slider_is_displayed(model, x):
    panel = nbopt.PruningPanel(model, x, debounce=0)
    assert panel.amount.layout is not panel.threshold.layout
    assert panel.amount.layout.display != "none" and panel.threshold.layout.display == "none"
    panel.set(threshold=0.01)
    assert panel.amount.layout.display == "none" and panel.threshold.layout.display != "none"
    panel.set(0.1)
    assert panel.amount.layout.display != "none" and panel.threshold.layout.display == "none"
