"""SearchPanel: the front drawn as trials finish, the dropdown lists exactly the result's front, Build = build."""
from __future__ import annotations

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

import nbopt  # noqa: E402
from nbopt import demo  # noqa: E402
from nbopt.autosearch import SearchSpace  # noqa: E402

pytest.importorskip("optuna")


@pytest.fixture(scope="module")
def panel(tmp_path_factory):
    torch.set_num_threads(1)
    space = SearchSpace(groups={"block1.conv1.0": 0.6}, amount_max=0.3, quant=("fp32",))
    p = nbopt.SearchPanel(demo.load_model(), demo.example_input(1), calib=demo.calibration_data(64),
                          evaluate=demo.evaluate, n_trials=3, space=space, seed=0, n_startup=3, repeat=5,
                          references=False, constraints={"accuracy_drop": 0.05},
                          storage=tmp_path_factory.mktemp("s") / "panel.db")
    return p


def test_before_running(panel):
    from nbopt.panels.search import SearchPanel

    assert isinstance(panel, SearchPanel) and panel.result is None
    assert "Run" in panel.settings.value and panel.point.options == ()


def test_run_draws_live_and_lists_the_front(panel):
    panel.run()
    r = panel.result
    assert len(r.trials) == 3 and panel.draws >= 3 + 1  # one draw per finished trial, then the final one
    assert [v for _, v in panel.point.options] == list(r.front.index)
    assert panel.figure is not None and panel.plot.value  # a PNG in the Image widget
    for i in r.front.index:
        assert f"<th>{i}</th>" in panel.front_table.value
    panel.trials.value = 2
    panel.run_button.click()  # the button runs 2 more into the same study
    panel.raise_last_error()
    assert len(panel.result.trials) == 5


def test_pick_shows_settings_and_build_rebuilds(panel):
    r = panel.result
    t = r.front.index[-1]
    panel.pick(t)
    cfg = r.config(t)
    assert f"trial {t}" in panel.settings.value and str(cfg["overrides"]["block1.conv1.0"]) in panel.settings.value
    panel.build_button.click()
    panel.raise_last_error()
    assert demo.evaluate(panel.built) == r.trials.loc[t, "accuracy"]
    assert "panel.built" in panel.status.value


def test_bad_evaluate():
    with pytest.raises(TypeError, match="evaluate"):
        nbopt.SearchPanel(demo.load_model(), demo.example_input(1), calib=demo.calibration_data(64), evaluate=3)


def test_front_colours_axis_and_layout(panel):
    """One colour per series whatever the order (fp32 black, optimize's point green, front blue, trials grey),
    accuracy in % within [0, 100], and widths set for JupyterLab's default notebook width."""
    import pandas as pd
    from matplotlib.colors import same_color

    from nbopt.display.figures import series_colour
    from nbopt.display.search_figures import plot_front

    trials = pd.DataFrame({"state": ["COMPLETE"] * 4, "latency_ms": [1.0, 2.0, 3.0, 4.0],
                           "accuracy": [0.95, 0.985, 0.99, 0.80], "feasible": [True, True, True, False]})
    front = trials.iloc[:3]
    refs = {"fp32": (4.0, 0.994), "optimize default": (1.5, 0.97)}
    drawn = []
    for order in (refs, dict(reversed(list(refs.items())))):  # the old code coloured references by position
        fig = plot_front(trials, front, references=order, highlight=1)
        ax = fig.axes[0]
        colours = {ln.get_label(): ln.get_color() for ln in ax.get_lines()}
        assert same_color(colours["fp32"], "black") and same_color(colours["optimize default"], "tab:green")
        assert same_color(colours["Pareto front"], series_colour("Pareto front"))
        assert same_color(colours["trial 1"], series_colour("current"))
        scat = {c.get_label(): c for c in ax.collections}
        assert same_color(scat["trials"].get_facecolor()[0][:3], series_colour("trials"))
        lo, hi = ax.get_ylim()
        assert 0 <= lo <= 80 - 2 and 99.4 <= hi <= 100  # 80% .. 99.4% drawn with air, never above 100
        drawn.append(colours)
        import matplotlib.pyplot as plt

        plt.close(fig)
    assert drawn[0] == drawn[1]
    # the panel's own figure (after the run): the front is blue, the axis within [0, 100]
    ax = panel.figure.axes[0]
    assert same_color({ln.get_label(): ln.get_color() for ln in ax.get_lines()}["Pareto front"],
                      series_colour("Pareto front"))
    assert 0 <= ax.get_ylim()[0] and ax.get_ylim()[1] <= 100
    # layout: labels at natural width, buttons wide enough, the plot column wraps below when narrow
    for w in (panel.trials, panel.point):
        assert w.style.description_width == "initial" and w.layout.width.endswith("px")
    for b in (panel.run_button, panel.build_button):
        assert int(b.layout.width[:-2]) >= 8 * len(b.description) + 28 and b.layout.flex == "0 0 auto"
    assert int(panel.point.layout.width[:-2]) >= 400
    assert panel.widget.children[0].layout.flex_flow == "row wrap"
    assert "jp-RenderedHTMLCommon" in panel.front_table._dom_classes
    assert 'border="1"' not in panel.front_table.value + panel.settings.value
    assert "nbopt-scroll" in panel.front_table.value and "%" in panel.front_table.value  # accuracy in %
