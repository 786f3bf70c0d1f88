"""``engine="dask"``: trials on a dask.distributed cluster (a LocalCluster of worker processes started here when
no address is given). One task per worker, each looping :func:`.engine.worker_loop` (storage opened once per
worker process, the budget counted under a ``distributed.Lock``), so a task runs many trials, not one. A task
on a worker that dies is rerun elsewhere by dask; the trial it was running is stale (Optuna heartbeat), and is
marked FAIL (``lost``) and replaced once no task is left running."""
from __future__ import annotations

import hashlib
import os
import time
from typing import Any, Callable

from ..errors import NboptError, require
from .engine import Budget, Job, counts, mark_lost, new_finished, worker_loop
from .study import open_storage, optuna_module

POLL_S = 0.3


def _warm() -> None:
    import optuna  # noqa: F401

    from .. import distillation, pruning  # noqa: F401
    from ..pruning import finetune  # noqa: F401
    from . import build  # noqa: F401


def lock_name(budget: Budget) -> str:
    return "nbopt-budget-" + hashlib.sha1(f"{budget.url}|{budget.name}".encode()).hexdigest()[:12]


def _task(job: Job, budget: Budget, seed: int | None, n_startup: int) -> tuple[int, int]:
    """One dask task: trials on this worker until the study holds the whole budget; (pid, trials run)."""
    import distributed

    name = lock_name(budget)
    ran = worker_loop(job, budget, seed=seed, n_startup=n_startup, lock=lambda: distributed.Lock(name), cached=True)
    return os.getpid(), ran


def run_dask(job: Job, budget: Budget, seed: int | None, n_startup: int, *, address: str | None,
             n_workers: int, callback: Callable[[Any], None] | None) -> dict[str, Any]:
    """The budget's trials on ``address`` or a new LocalCluster of ``n_workers`` processes (1 thread each)."""
    distributed = require("distributed", extra="search", purpose="engine='dask'", package="distributed")
    t0 = time.perf_counter()
    cluster = None
    if address is None:
        cluster = distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                           dashboard_address=":0")
    client = distributed.Client(cluster if cluster is not None else address)
    try:
        if cluster is not None:
            client.wait_for_workers(n_workers)
        client.run(_warm)  # every worker imports what trials use once, before the first trial (counted as start-up)
        started = time.perf_counter() - t0
        workers = len(client.scheduler_info().get("workers", {}))
        job.threads = 1 if cluster is not None else job.threads
        remote = client.scatter(job, broadcast=True)
        storage = open_storage(budget.url)
        study = optuna_module().load_study(study_name=budget.name, storage=storage)
        seen: set[int] = set()
        pids: dict[int, int] = {}
        lost: list[int] = []
        rounds = 0
        while True:
            used, finished = counts(study, budget.since)
            if finished >= budget.n:
                break
            if rounds > budget.n + 2:
                raise NboptError(f"dask tasks keep ending with trials unfinished ({finished} of {budget.n} after "
                                 f"{rounds} rounds); check the workers' logs (client.get_worker_logs())")
            if rounds:  # every task ended, some trials did not finish: lost with a worker that died
                lost += mark_lost(study, storage, budget.since, "its dask worker died")
            futures = [client.submit(_task, remote, budget, None if seed is None else seed + 1000 + rounds * workers + i,
                                     n_startup, pure=False) for i in range(max(1, min(workers, budget.n - finished)))]
            rounds += 1
            while not all(f.done() for f in futures):
                time.sleep(POLL_S)
                if callback is not None:
                    for t in new_finished(study, budget.since, seen):
                        callback(t)
            for f in futures:
                pid, ran = f.result()  # a task's own error (not a trial's) is raised here
                pids[pid] = pids.get(pid, 0) + ran
        if callback is not None:
            for t in new_finished(study, budget.since, seen):
                callback(t)
        return {"engine": "dask", "address": address or "LocalCluster", "workers": workers, "startup_s": started,
                "worker_pids": sorted(pids), "trials_per_worker": pids, "lost_trials": sorted(set(lost)),
                "rounds": rounds}
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
