"""ProfilePanel shows exactly the Profile's rows for each control setting; errors stay in the panel."""
from __future__ import annotations

import asyncio

import ipywidgets as widgets
import matplotlib
import pandas as pd
import pytest

matplotlib.use("Agg")

import nbopt  # noqa: E402
from nbopt import demo  # noqa: E402
from nbopt.display import format as fmt, tables  # noqa: E402
from nbopt.panels.common import Debouncer  # noqa: E402


@pytest.fixture(scope="module")
def prof():
    return nbopt.profile(demo.load_model(), demo.example_input(4), latency=True, repeat=2)


def test_exported_from_package():
    from nbopt.panels import ProfilePanel

    assert nbopt.ProfilePanel is ProfilePanel
    assert callable(nbopt.profile)  # importing the nbopt.profile submodule must not shadow the function


def test_rows_equal_profile_views(prof):
    panel = nbopt.ProfilePanel(prof, top=5, metric="macs", debounce=0)
    pd.testing.assert_frame_equal(panel.rows, prof.top(5, by="macs"))
    panel.set(by="type", metric="params", top=3)
    pd.testing.assert_frame_equal(panel.rows, prof.by_type().sort_values("params", ascending=False).head(3))
    panel.set(by="depth", depth=1, metric="flops", top=20)
    expected = prof.at_depth(1).sort_values("flops", ascending=False).head(20)
    pd.testing.assert_frame_equal(panel.rows, expected)
    # the HTML table is the renderer's formatting of those rows
    assert panel.table.value == fmt.format_table(tables.shown_columns(expected)).to_html(escape=True)
    assert panel.guard.last_error is None


def test_slider_drives_rows_and_plot(prof):
    panel = nbopt.ProfilePanel(prof, top=5, debounce=0)
    panel.top.value = 2
    assert len(panel.rows) == 2
    assert panel.figure is not None
    ax = panel.figure.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == list(panel.rows.index[::-1])
    assert [p.get_width() for p in ax.patches] == list(panel.rows["macs"][::-1])
    panel.show_plot.value = False
    assert panel.figure is None


def test_latency_metric_sorts_by_measured_time(prof):
    panel = nbopt.ProfilePanel(prof, metric="self_latency_ms", top=3, debounce=0)
    assert list(panel.rows.index) == list(prof.top(3, by="self_latency_ms").index)


def test_rejects_non_profile():
    with pytest.raises(TypeError, match="Profile"):
        nbopt.ProfilePanel(demo.load_model())


def test_callback_error_is_shown_in_panel(prof, monkeypatch):
    panel = nbopt.ProfilePanel(prof, debounce=0)

    def boom(*a, **k):
        raise nbopt.NboptError("broken view; do X instead")

    monkeypatch.setattr(tables, "view", boom)
    panel.top.value = 3  # must not raise into the widget machinery
    assert "broken view; do X instead" in panel.status.value
    assert isinstance(panel.guard.last_error, nbopt.NboptError)
    monkeypatch.undo()
    panel.top.value = 4
    assert panel.status.value == "" and len(panel.rows) == 4


def test_from_model_and_display_bundle():
    panel = nbopt.ProfilePanel.from_model(demo.load_model(), demo.example_input(2), latency=False, plot=False)
    assert isinstance(panel.widget, widgets.VBox)
    bundle = panel._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle


def test_debouncer_coalesces_a_burst_on_a_running_loop():
    calls = []
    deb = Debouncer(lambda: calls.append(1), wait=0.05)

    async def burst():
        for _ in range(10):  # ten keyboard presses
            deb()
            await asyncio.sleep(0.001)
        assert calls == [] and deb.pending
        await asyncio.sleep(0.2)

    asyncio.run(burst())
    assert calls == [1] and deb.calls == 1 and not deb.pending


def test_debouncer_without_loop_calls_at_once_and_hold_coalesces():
    calls = []
    deb = Debouncer(lambda: calls.append(1), wait=0.5)
    deb()
    assert calls == [1]
    with deb.hold():
        deb()
        deb()
    assert calls == [1, 1]
    with pytest.raises(nbopt.NboptError, match="debounce"):
        Debouncer(lambda: None, wait=-1)
