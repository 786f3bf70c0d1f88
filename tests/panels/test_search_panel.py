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
