"""nbopt.search: a real SQLite Optuna study, resumption, the Pareto front, and a real 2-worker dask LocalCluster.

Small on purpose: the demo CNN, a 2-dimension space, a handful of trials, accuracy-only objectives where the
cluster runs (timing cannot interfere). Counts, dominance and resumption are asserted, never wall-clock times.
"""
from __future__ import annotations

import sqlite3

import pandas as pd
import pytest
import torch

import nbopt
from nbopt import demo
from nbopt.errors import InputError
from nbopt.autosearch import SearchSpace, search
from nbopt.autosearch.result import pareto
from nbopt.autosearch.space import Config, config_from_params

pytest.importorskip("optuna")


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return demo.load_model()


@pytest.fixture(scope="module")
def x():
    return demo.example_input(1)


SPACE = SearchSpace(groups={"block1.conv1.0": 0.6}, amount_max=0.3, quant=("fp32",))


def run(model, x, storage, n, **kw):
    kw.setdefault("objectives", ("latency", "accuracy"))
    kw.setdefault("evaluate", demo.evaluate)
    return search(model, x, calib=demo.calibration_data(64), space=SPACE, n_trials=n,
                  storage=storage, seed=0, n_startup=3, repeat=5, references=False, **kw)


def test_sqlite_study_resumes_and_keeps_every_trial(model, x, tmp_path, untouched):
    db = tmp_path / "study.db"
    snap = untouched(model)
    first = run(model, x, db, 3)
    snap.assert_unchanged()
    assert nbopt.search is search and db.exists()
    assert list(first.trials.index) == [0, 1, 2] and (first.trials["state"] == "COMPLETE").all()
    second = run(model, x, db, 2)  # same storage: the study continues
    assert list(second.trials.index) == [0, 1, 2, 3, 4]
    pd.testing.assert_frame_equal(second.trials.loc[[0, 1, 2], ["accuracy", "param:amount"]],
                                  first.trials[["accuracy", "param:amount"]])
    with sqlite3.connect(db) as con:  # a real database: the trials are rows in Optuna's schema
        assert con.execute("select count(*) from trials where state='COMPLETE'").fetchone()[0] == 5
    # every stored accuracy is the measured accuracy of the trial's rebuilt model
    for t in (0, 4):
        assert second.trials.loc[t, "accuracy"] == demo.evaluate(second.build(t))
    assert second.trials["accuracy_drop"].tolist() == pytest.approx(
        (demo.evaluate(model) - second.trials["accuracy"]).tolist())
    assert "file lock" in second.timing


def test_front_is_feasible_and_not_dominated(model, x, tmp_path):
    r = run(model, x, tmp_path / "s.db", 5, constraints={"accuracy_drop": 0.02})
    base = r.baseline_accuracy
    feasible = r.trials[r.trials["feasible"]]
    assert ((base - feasible["accuracy"]) <= 0.02 + 1e-12).all()
    assert set(r.front.index) <= set(feasible.index) and len(r.front) >= 1
    for i, a in r.front.iterrows():
        for j, b in feasible.iterrows():
            better = b["latency_ms"] <= a["latency_ms"] and b["accuracy"] >= a["accuracy"]
            strictly = b["latency_ms"] < a["latency_ms"] or b["accuracy"] > a["accuracy"]
            assert not (better and strictly), (i, j)


def test_pareto_by_hand():
    t = pd.DataFrame({"state": "COMPLETE", "feasible": [True, True, True, False, True],
                      "latency_ms": [1.0, 2.0, 0.5, 0.1, 1.0], "accuracy": [0.9, 0.95, 0.8, 0.99, 0.9]})
    assert list(pareto(t, ("latency", "accuracy")).index) == [2, 0, 1]  # 3 infeasible, 4 ties with 0


def test_config_round_trip():
    cfg = Config(amount=0.2, overrides={"a.b": 0.4}, quant="mixed", bits={"fc": 4}, recover="distill")
    params = {"amount": 0.2, "prune:a.b": 0.4, "quant": "mixed", "bits:fc": 4, "recover": "distill"}
    assert config_from_params(params) == cfg


def test_other_study_in_same_storage_is_refused(model, x, tmp_path):
    db = tmp_path / "s.db"
    run(model, x, db, 1)
    with pytest.raises(InputError, match="searched something else"):
        search(model, x, calib=demo.calibration_data(64), evaluate=demo.evaluate, n_trials=1, storage=db,
               space=SearchSpace(groups={}, amount_max=0.5, quant=("fp32",)), references=False)


@pytest.mark.parametrize("kwargs, match", [
    ({"objectives": ("speed",)}, "objectives"), ({"engine": "spark"}, "engine"), ({"engine": "ray"}, "dask"),
    ({"evaluate": None}, "evaluate"), ({"constraints": {"latency": 1}}, "constraints"), ({"n_workers": 0}, "n_workers"),
])
def test_errors(model, x, tmp_path, kwargs, match):
    args = dict(calib=demo.calibration_data(64), evaluate=demo.evaluate, space=SPACE, n_trials=1,
                storage=tmp_path / "e.db")
    args.update(kwargs)
    with pytest.raises(InputError, match=match):
        search(model, x, **args)


def test_dask_two_workers_share_one_study(model, x, tmp_path):
    pytest.importorskip("distributed")
    db = tmp_path / "dask.db"
    run(model, x, db, 1, objectives=("accuracy",), engine="local")
    r = run(model, x, db, 4, objectives=("accuracy",), engine="dask", n_workers=2)
    assert r.engine["engine"] == "dask" and r.engine["workers"] == 2
    assert len(r.trials) == 5 and (r.trials["state"] == "COMPLETE").all()
    assert r.trials.loc[1:, "pid"].nunique() >= 1 and set(r.trials.loc[1:, "pid"]) <= set(r.engine["worker_pids"])
    best = r.front.index[0]
    assert r.front.loc[best, "accuracy"] == r.trials.loc[r.trials["feasible"], "accuracy"].max()


def test_interrupt_keeps_finished_trials_and_resumes(model, x, tmp_path):
    from nbopt.errors import PartialResultWarning

    calls = {"n": 0}

    def stop_on_third(m):  # the baseline, trial 0, then the stop button during trial 1
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return demo.evaluate(m)

    db = tmp_path / "i.db"
    with pytest.warns(PartialResultWarning, match="finished trial is kept"):
        r = run(model, x, db, 4, evaluate=stop_on_third)
    assert r.partial and r.trials["state"].tolist() == ["COMPLETE", "FAIL"]
    again = run(model, x, db, 2)
    assert again.trials["state"].tolist() == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert again.trials.loc[0, "accuracy"] == r.trials.loc[0, "accuracy"] == demo.evaluate(model)  # trial 0: uncompressed
