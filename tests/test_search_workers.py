"""Killing a search worker mid-trial: a real SQLite study, real worker processes, a real SIGKILL.

``engine="local", n_workers=2`` (two spawned processes) always; the same on a real 2-worker dask LocalCluster
with NBOPT_SLOW=1. A gate file makes one worker's trial block inside ``evaluate`` so the kill lands while that
trial runs (no sleeps timed against the trial, no wall-clock asserts).
"""
from __future__ import annotations

import functools
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import torch

from nbopt import demo
from nbopt.autosearch import SearchSpace, search

pytest.importorskip("optuna")

SPACE = SearchSpace(groups={"block1.conv1.0": 0.6}, amount_max=0.3, quant=("fp32",))
N = 6


def gated_evaluate(model, gate: str) -> float:
    """demo.evaluate; while ``gate/hold`` exists, announce this process (``<pid>.running``) and wait for ``go``."""
    acc = demo.evaluate(model)
    g = Path(gate)
    if (g / "hold").exists() and not (g / "go").exists():
        (g / f"{os.getpid()}.running").touch()
        while not (g / "go").exists():
            time.sleep(0.05)
    return acc


def wait_for(cond, what: str, limit_s: float = 300.0):
    """Poll ``cond()`` until truthy (a generous limit only so a broken search fails instead of hanging)."""
    end = time.monotonic() + limit_s
    while not (value := cond()):
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)
    return value


def finished_rows(db: Path) -> dict[int, tuple]:
    try:
        with sqlite3.connect(db, timeout=60) as con:
            rows = con.execute("select t.number, t.state, v.objective, v.value from trials t join trial_values v "
                               "on v.trial_id = t.trial_id where t.state = 'COMPLETE'").fetchall()
    except sqlite3.OperationalError:  # the study's tables are not created yet
        return {}
    return {n: (s, o, v) for n, s, o, v in rows}


def kill_mid_trial(db: Path, gate: Path, killed: dict) -> None:
    """Once 2 trials are stored, hold the next trials in evaluate, SIGKILL one held worker, release the rest."""
    wait_for(lambda: db.exists() and len(finished_rows(db)) >= 2, "two finished trials")
    (gate / "hold").touch()
    pid = int(wait_for(lambda: sorted(gate.glob("*.running")), "a worker inside a trial")[0].stem)
    killed["before"] = finished_rows(db)
    killed["pid"] = pid
    os.kill(pid, signal.SIGKILL)
    (gate / "go").touch()


@pytest.mark.parametrize("engine", [
    "local", pytest.param("dask", marks=pytest.mark.skipif(not os.environ.get("NBOPT_SLOW"),
                                                           reason="dask LocalCluster kill test: NBOPT_SLOW=1"))])
def test_killed_worker_loses_no_finished_trial(engine, tmp_path):
    if engine == "dask":
        pytest.importorskip("distributed")
    torch.set_num_threads(1)
    model, db, gate = demo.load_model(), tmp_path / "kill.db", tmp_path / "gate"
    gate.mkdir()
    killed: dict = {}
    killer = threading.Thread(target=kill_mid_trial, args=(db, gate, killed), daemon=True)
    killer.start()
    r = search(model, demo.example_input(1), calib=demo.calibration_data(64), objectives=("accuracy",),
               evaluate=functools.partial(gated_evaluate, gate=str(gate)), space=SPACE, n_trials=N, storage=db,
               engine=engine, n_workers=2, seed=0, n_startup=N, references=False)
    killer.join(5)
    assert killed, "the killer thread did not get to kill a worker"
    t = r.trials
    assert (t["state"] == "COMPLETE").sum() == N  # the budget is still reached: the lost trial was replaced
    lost = t[t["state"] != "COMPLETE"]
    assert len(lost) == 1 and len(t) == N + 1
    assert lost["state"].iloc[0] == "FAIL" and lost["pid"].iloc[0] == killed["pid"]  # marked FAIL, attr lost=...
    # local: the parent saw the process die; dask: the trial went stale (heartbeat) or no task was left to run it
    assert any(why in lost["lost"].iloc[0] for why in ("died", "stale heartbeat"))
    for number, (state, _, value) in killed["before"].items():  # every trial finished before the kill, unchanged
        assert t.loc[number, "state"] == state and t.loc[number, "accuracy"] == value
    assert os.getpid() not in set(t["pid"]) and (engine == "dask" or killed["pid"] in r.engine["worker_pids"])
    assert t.loc[t["state"] == "COMPLETE", "pid"].nunique() >= 2  # trials ran in more than one worker process
