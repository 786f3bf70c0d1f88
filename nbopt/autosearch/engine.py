"""Where trials run: ``local`` (this process, one trial after another) or ``dask`` (a dask.distributed cluster:
a LocalCluster of worker processes started here when no address is given). Every trial writes to the study's
storage as it finishes, so a finished trial survives an interrupt or a killed worker."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import InputError, require
from .build import measure_config
from .space import SearchSpace
from .study import OBJECTIVES, open_storage, optuna_module, sampler, values_of

ENGINES = ("local", "dask")


@dataclass
class Job:
    """Everything a worker needs to run trials (pickled once and sent to every worker)."""

    model: Any
    example_input: Any
    calib: Any
    evaluate: Callable | None
    train_data: Any
    space: SearchSpace
    objectives: tuple[str, ...]
    baseline_accuracy: float
    max_drop: float | None
    recover_epochs: int
    repeat: int
    seed: int
    threads: int | None = None

    def objective(self, trial: Any) -> list[float]:
        cfg = self.space.suggest(trial)
        m = measure_config(self.model, self.example_input, cfg, calib=self.calib, evaluate=self.evaluate,
                           objectives=self.objectives, train_data=self.train_data, recover_epochs=self.recover_epochs,
                           seed=self.seed, repeat=self.repeat)
        drop = self.baseline_accuracy - m["accuracy"]
        over = drop - self.max_drop if self.max_drop is not None and drop == drop else 0.0
        for k, v in {**m, "config": cfg.as_dict(), "accuracy_drop": drop, "constraint": over}.items():
            trial.set_user_attr(k, v)
        trial.set_constraint("accuracy_drop", float(over))
        return values_of(m, self.objectives)


def run_trials(job: Job, url: str, name: str, n: int, seed: int | None, n_startup: int,
               callback: Callable[[Any], None] | None = None, *, cached: bool = False) -> None:
    """``n`` trials in this process; ``callback(frozen_trial)`` after each."""
    optuna = optuna_module()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if job.threads:
        import torch

        torch.set_num_threads(job.threads)
    study = optuna.load_study(study_name=name, storage=open_storage(url, cached=cached),
                              sampler=sampler(seed, n_startup))
    cbs = [lambda s, t: callback(t)] if callback else []
    study.optimize(job.objective, n_trials=n, catch=(Exception,), callbacks=cbs, gc_after_trial=False)


def _warm() -> None:
    import optuna  # noqa: F401

    from .. import distillation, pruning  # noqa: F401
    from ..pruning import finetune  # noqa: F401
    from . import build  # noqa: F401


def _worker_task(job: Job, url: str, name: str, seed: int | None, n_startup: int) -> int:
    """One trial on a dask worker (its own sampler, seeded per task, reading every finished trial)."""
    import os

    run_trials(job, url, name, 1, seed, n_startup, cached=True)
    return os.getpid()


def run_dask(job: Job, url: str, name: str, n: int, seed: int | None, n_startup: int, *, address: str | None,
             n_workers: int, callback: Callable[[Any], None] | None, study: Any) -> dict[str, Any]:
    """``n`` trials as dask tasks (one trial each) on ``address`` or a new LocalCluster of ``n_workers``
    processes (one thread each); returns what the cluster was."""
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
        futures = [client.submit(_worker_task, remote, url, name, None if seed is None else seed + 1000 + i,
                                 n_startup, pure=False, retries=2) for i in range(n)]
        pids = set()
        for fut in distributed.as_completed(futures):
            pids.add(fut.result())
            if callback is not None:
                done = [t for t in study.get_trials(deepcopy=False) if t.datetime_complete is not None]
                if done:
                    callback(max(done, key=lambda t: t.datetime_complete))
        return {"engine": "dask", "address": address or "LocalCluster", "workers": workers,
                "startup_s": started, "worker_pids": sorted(pids)}
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def check_engine(engine: str) -> None:
    if engine == "ray":
        raise InputError("engine='ray' is not supported: nbopt scales out on dask.distributed (it starts in seconds "
                         "on a small machine); use engine='dask' (address='tcp://host:8786' for a cluster)")
    if engine not in ENGINES:
        raise InputError(f"engine must be one of {ENGINES}, got {engine!r}")


__all__ = ["ENGINES", "Job", "run_trials", "run_dask", "check_engine", "OBJECTIVES"]
