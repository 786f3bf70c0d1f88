"""``engine="local", n_workers=N``: trials in N spawned worker processes on this machine, sharing the study's
storage. Each worker opens the storage once and loops :func:`.engine.worker_loop` (the budget is the storage's
trial count, under a file lock); the parent watches them, marks the trial of a worker that died FAIL (``lost``)
and starts a replacement while trials remain, and calls ``callback`` as trials finish."""
from __future__ import annotations

import os
import pickle
import queue
import time
import traceback
from typing import Any, Callable

from ..errors import NboptError
from .engine import Budget, Job, counts, file_lock, budget_lock_path, mark_lost, new_finished, worker_loop
from .study import open_storage, optuna_module

POLL_S = 0.2


def dumps(job: Job) -> bytes:
    """The job for a spawned process: cloudpickle when installed (functions defined in a notebook pickle by
    value), else pickle (``evaluate`` must then be importable, not defined in ``__main__``)."""
    try:
        import cloudpickle

        return cloudpickle.dumps(job)
    except ImportError:
        return pickle.dumps(job)


def _worker_main(payload: bytes, budget: Budget, seed: int | None, n_startup: int, messages: Any) -> None:
    """A worker process: load the job, report ready, loop trials until the budget is used."""
    try:
        job = pickle.loads(payload)
        messages.put(("ready", os.getpid(), time.time()))
        worker_loop(job, budget, seed=seed, n_startup=n_startup, lock=lambda: file_lock(budget_lock_path(budget)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it as a clear error
        messages.put(("error", os.getpid(), "".join(traceback.format_exception(exc))[-4000:]))
        raise SystemExit(1) from None


def run_processes(job: Job, budget: Budget, seed: int | None, n_startup: int, *, n_workers: int,
                  callback: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """The budget's trials in ``n_workers`` spawned processes; returns what ran where."""
    import multiprocessing as mp

    import torch

    ctx = mp.get_context("spawn")  # fork is unsafe with torch's and SQLAlchemy's threads
    job.threads = job.threads or max(1, torch.get_num_threads() // n_workers)
    payload = dumps(job)
    optuna = optuna_module()
    storage = open_storage(budget.url)
    study = optuna.load_study(study_name=budget.name, storage=storage)
    messages = ctx.Queue()
    procs: dict[int, Any] = {}  # worker index -> process
    pids, lost, started, ready_at = [], [], time.perf_counter(), None
    seen: set[int] = set()
    deaths = 0

    def spawn(i: int) -> None:
        p = ctx.Process(target=_worker_main, name=f"nbopt-search-worker-{i}", daemon=True,
                        args=(payload, budget, None if seed is None else seed + 1 + i, n_startup, messages))
        p.start()
        procs[i] = p
        pids.append(p.pid)

    try:
        for i in range(min(n_workers, max(1, budget.n - counts(study, budget.since)[0]))):
            spawn(i)
        next_index = len(procs)
        while True:
            ready_at = _drain(messages, ready_at)
            for i, p in list(procs.items()):
                if p.is_alive():
                    continue
                p.join()
                del procs[i]
                if p.exitcode != 0:
                    deaths += 1
                    lost += mark_lost(study, storage, budget.since, f"worker process {p.pid} died "
                                      f"(exit code {p.exitcode})", pids={p.pid})
            if callback is not None:
                for t in new_finished(study, budget.since, seen):
                    callback(t)
            finished = counts(study, budget.since)[1]
            if not procs:
                if finished >= budget.n:
                    break
                lost += mark_lost(study, storage, budget.since, "no worker left running it")  # orphans
            if deaths > n_workers + budget.n:
                raise NboptError(f"search worker processes keep dying ({deaths} so far); the last ones exited with "
                                 "a signal or an error outside a trial. Use n_workers=1 (trials in this process) "
                                 "to see the error")
            used, finished = counts(study, budget.since)
            if len(procs) < min(n_workers, budget.n - finished) and used < budget.n:
                spawn(next_index)  # a replacement for a dead worker (or for trials lost with it)
                next_index += 1
            time.sleep(POLL_S)
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            p.join(5)
        if procs:  # interrupted: the trials they were running are lost, every finished one is kept
            lost += mark_lost(study, storage, budget.since, "search interrupted", pids={p.pid for p in procs.values()})
        messages.close()
    if callback is not None:
        for t in new_finished(study, budget.since, seen):
            callback(t)
    return {"engine": "local", "workers": n_workers, "processes": True, "threads_per_worker": job.threads,
            "worker_pids": pids, "startup_s": (ready_at or time.perf_counter()) - started,
            "lost_trials": sorted(set(lost)), "worker_deaths": deaths}


def _drain(messages: Any, ready_at: float | None) -> float | None:
    """Read the workers' messages: the first "ready" sets the start-up time; an "error" is raised here."""
    while True:
        try:
            kind, pid, body = messages.get_nowait()
        except queue.Empty:
            return ready_at
        if kind == "ready" and ready_at is None:
            ready_at = time.perf_counter()
        elif kind == "error":
            raise NboptError(f"a search worker process (pid {pid}) failed outside a trial: the job (model, "
                             f"evaluate, data) must pickle and load in a fresh process; or use n_workers=1 "
                             f"(trials in this process). Worker traceback:\n{body}")
