"""The compression search's measured goals on the demo CNN (recorded in benchmarks/README.md).

    python benchmarks/search.py front  --trials 16     # the front vs optimize's default pipeline and fp32
    python benchmarks/search.py scale  --trials 8      # dask LocalCluster: 2 workers vs 1, accuracy-only
    python benchmarks/search.py resume --trials 8      # SIGKILL a search halfway, resume it, count trials

front: latency + accuracy objectives, accuracy budget 0.5 points, default space seeded from the profiler and
nbopt.sensitivity, with recovery (distill / fine-tune, 2 epochs) on; the references (fp32 eager, optimize's
default: structured 50% + int8 onnxruntime, no recovery) are measured by search() the same way as trials.
scale: the same trials (fixed space, accuracy-only so timing cannot interfere) on a 1- and a 2-worker
LocalCluster; wall time with and without the cluster's start-up. resume: a search in a child process is
killed with SIGKILL once half its trials are stored; a second search(storage=same) runs the rest.
"""
from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import nbopt
from nbopt import demo
from nbopt.autosearch import SearchSpace

SCALE_SPACE = SearchSpace(groups={"block1.conv1.0": 0.6, "block3.conv1.0": 0.6}, amount_max=0.4, quant=("fp32",),
                          recover=("none", "finetune"))


def front(trials: int) -> None:
    model, x = demo.load_model(), demo.example_input(1)
    db = Path(tempfile.mkdtemp()) / "front.db"
    t0 = time.perf_counter()
    r = nbopt.search(model, x, calib=demo.calibration_data(64), evaluate=demo.evaluate, n_trials=trials,
                     storage=db, train_data=demo.train_loader(seed=0), recover_epochs=2, seed=0, n_startup=6)
    wall = time.perf_counter() - t0
    cols = ["accuracy", "latency_ms", "size_bytes", "param:quant", "param:recover", "param:amount"]
    print(f"{len(r.trials)} trials in {wall:.0f} s; {r.timing}")
    print("references:", {k: {m: round(v, 4) for m, v in d.items() if m in ("accuracy", "latency_ms")}
                          for k, d in r.references.items()})
    print("front:\n" + r.front[[c for c in cols if c in r.front]].to_string())
    d, fp = r.references.get("optimize default", {}), r.references.get("fp32", {})
    if "latency_ms" in d:
        dominating = r.front[(r.front["accuracy"] >= d["accuracy"]) & (r.front["latency_ms"] <= d["latency_ms"])]
        fast = r.front[(r.front["latency_ms"] * 1.5 <= d["latency_ms"])
                       & (r.front["accuracy"] >= fp["accuracy"] - 0.005)]
        print(f"front points at least as accurate and fast as optimize's default: {list(dominating.index)}")
        print(f"front points >= 1.5x faster than it within 0.5 points of fp32: {list(fast.index)}")
        best = r.front["latency_ms"].min()
        print(f"fastest front point {best:.4f} ms = {d['latency_ms'] / best:.2f}x optimize's default "
              f"({d['latency_ms']:.4f} ms, accuracy {d['accuracy']:.4f}); fp32 {fp['latency_ms']:.4f} ms")


def scale(trials: int) -> None:
    model, x = demo.load_model(), demo.example_input(1)
    rows = []
    for workers in (1, 2):
        db = Path(tempfile.mkdtemp()) / f"scale{workers}.db"
        t0 = time.perf_counter()
        r = nbopt.search(model, x, calib=demo.calibration_data(64), evaluate=demo.evaluate, objectives=("accuracy",),
                         space=SCALE_SPACE, n_trials=trials, storage=db, engine="dask", n_workers=workers, seed=0,
                         train_data=demo.train_loader(seed=0), recover_epochs=1, references=False, n_startup=trials)
        wall = time.perf_counter() - t0
        done = int((r.trials["state"] == "COMPLETE").sum())
        rows.append((workers, wall, r.engine["startup_s"], done))
        print(f"{workers} worker(s): {done} trials, wall {wall:.1f} s, cluster start-up {r.engine['startup_s']:.1f} s, "
              f"trials {wall - r.engine['startup_s']:.1f} s, ran in {r.trials['pid'].nunique()} process(es), "
              f"median trial build+evaluate {r.trials['build_s'].median():.2f} s")
    (_, w1, s1, _), (_, w2, s2, _) = rows
    print(f"2 workers / 1 worker wall time: {w2 / w1:.2f} (without start-up {(w2 - s2) / (w1 - s1):.2f}); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


CHILD = """
import sys, torch, nbopt
from nbopt import demo
sys.path.insert(0, {bench!r})
from search import SCALE_SPACE
torch.set_num_threads(1)
nbopt.search(demo.load_model(), demo.example_input(1), calib=demo.calibration_data(64), evaluate=demo.evaluate,
             objectives=("accuracy",), space=SCALE_SPACE, n_trials={n}, storage={db!r}, seed=0, references=False,
             train_data=demo.train_loader(seed=0), recover_epochs=1, n_startup={n})
"""


def completed(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db) as con:
            return con.execute("select count(*) from trials where state='COMPLETE'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def resume(trials: int) -> None:
    db = Path(tempfile.mkdtemp()) / "resume.db"
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(bench=str(Path(__file__).parent), n=trials,
                                                                  db=str(db))])
    half = trials // 2
    while completed(db) < half and child.poll() is None:
        time.sleep(0.2)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    kept = completed(db)
    print(f"killed the search (SIGKILL) after {kept} of {trials} finished trials")
    r = nbopt.search(demo.load_model(), demo.example_input(1), calib=demo.calibration_data(64),
                     evaluate=demo.evaluate, objectives=("accuracy",), space=SCALE_SPACE, n_trials=trials - kept,
                     storage=db, seed=0, references=False, train_data=demo.train_loader(seed=0), recover_epochs=1,
                     n_startup=trials)
    states = r.trials["state"].value_counts().to_dict()
    print(f"resumed: {states}; finished trials kept: {kept}, total finished now {states.get('COMPLETE', 0)} "
          f"(the killed trial is left {'RUNNING' if 'RUNNING' in states else 'FAIL'})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=["front", "scale", "resume"])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    {"front": front, "scale": scale, "resume": resume}[a.part](a.trials)


if __name__ == "__main__":
    main()
