"""Running trials: one worker loop shared by every engine. A worker asks the study for a trial only while the
study's storage says this search's budget is not used up (counted under a lock, so N workers run exactly
``n_trials``), runs it with an Optuna heartbeat, and stores it as it finishes; a trial lost with a killed worker
is marked FAIL (``lost``) and does not count, so the search still ends with ``n_trials`` finished trials.

Where the loop runs: ``local`` (this process, or ``n_workers`` spawned processes: :mod:`.processes`) or ``dask``
(one loop per dask worker: :mod:`.cluster`)."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

from ..errors import InputError
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


@dataclass
class Budget:
    """This search's share of the study: trials numbered ``since`` onwards, ``n`` of them."""

    url: str
    name: str
    since: int
    n: int


# ---------------------------------------------------------------------------------------------- the budget
def counts(study: Any, since: int) -> tuple[int, int]:
    """``(used, finished)`` trials of the budget: finished = COMPLETE, PRUNED, or FAIL that the worker stored
    (an error in the trial); used = finished + RUNNING + WAITING. A FAIL without ``ended`` was lost with its
    worker (killed, or stale by heartbeat) and counts for neither, so another trial replaces it."""
    used = finished = 0
    for t in study.get_trials(deepcopy=False):
        if t.number < since:
            continue
        state = t.state.name
        if state in ("RUNNING", "WAITING"):
            used += 1
        elif state != "FAIL" or "ended" in t.user_attrs:
            used += 1
            finished += 1
    return used, finished


def budget_lock_path(budget: Budget) -> Path:
    key = hashlib.sha1(f"{budget.url}|{budget.name}".encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"nbopt-budget-{key}.lock"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock shared by every process on this machine; the OS drops it if its holder is killed."""
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def mark_lost(study: Any, storage: Any, since: int, reason: str, pids: set[int] | None = None) -> list[int]:
    """Mark FAIL (user attr ``lost``) this search's RUNNING trials of dead workers: those run by ``pids``, or all
    of them when ``pids`` is None (no worker of this search is alive). Returns their numbers."""
    state = optuna_module().trial.TrialState
    lost = []
    for t in study.get_trials(deepcopy=False, states=(state.RUNNING,)):
        if t.number < since or (pids is not None and t.user_attrs.get("pid") not in pids):
            continue
        tid = t._trial_id  # noqa: SLF001 - storage calls take the trial id
        try:
            storage.set_trial_user_attr(tid, "lost", reason)
            if storage.set_trial_state_values(tid, state=state.FAIL):
                lost.append(t.number)
        except optuna_module().exceptions.UpdateFinishedTrialError:
            pass  # it finished (or another process failed it) meanwhile
    return lost


# ---------------------------------------------------------------------------------------------- one worker
@contextlib.contextmanager
def heartbeat(storage: Any, trial_id: int) -> Iterator[None]:
    """Optuna's heartbeat for a running trial (RDB storage): a trial whose worker dies goes stale and a later
    worker marks it FAIL (``optuna.storages.fail_stale_trials``). No-op for storages without heartbeats."""
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):  # a missed beat only makes the trial look stale sooner
                storage.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name="nbopt-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run_one(study: Any, storage: Any, job: Job, budget: Budget, lock: ContextManager) -> Any | None:
    """Ask for one trial if the budget allows (under ``lock``), run it, store it; its FrozenTrial, or None."""
    optuna = optuna_module()
    with lock:
        with contextlib.suppress(Exception):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
        if counts(study, budget.since)[0] >= budget.n:
            return None
        with warnings.catch_warnings():  # Optuna warns that heartbeats are meant for optimize(); run_one beats itself
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = study.ask()
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("host", socket.gethostname())
    state, values, ended, error = None, None, "complete", None
    try:
        with heartbeat(storage, trial._trial_id):  # noqa: SLF001
            try:
                values = job.objective(trial)
            except optuna.TrialPruned:
                state, ended = optuna.trial.TrialState.PRUNED, "pruned"
            except Exception as exc:  # noqa: BLE001 - stored as FAIL with its error; the search goes on
                state, ended, error = optuna.trial.TrialState.FAIL, "error", f"{type(exc).__name__}: {exc}"[:1000]
            except KeyboardInterrupt:
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                    trial.set_user_attr("lost", "interrupted")
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)  # kept as FAIL, not counted
                raise
        trial.set_user_attr("ended", ended)
        if error is not None:
            trial.set_user_attr("error", error)
        return study.tell(trial, values) if state is None else study.tell(trial, state=state)
    except optuna.exceptions.UpdateFinishedTrialError:  # failed meanwhile as stale (heartbeat): it is replaced
        return storage.get_trial(trial._trial_id)  # noqa: SLF001


def worker_loop(job: Job, budget: Budget, *, seed: int | None, n_startup: int, lock: Callable[[], ContextManager],
                callback: Callable[[Any], None] | None = None, cached: bool = False) -> int:
    """Run trials until the study's storage holds this search's whole budget; returns how many ran here."""
    optuna = optuna_module()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if job.threads:
        import torch

        torch.set_num_threads(job.threads)
    storage = open_storage(budget.url, cached=cached)
    study = optuna.load_study(study_name=budget.name, storage=storage, sampler=sampler(seed, n_startup))
    ran = 0
    while (frozen := run_one(study, storage, job, budget, lock())) is not None:
        ran += 1
        if callback is not None:
            callback(frozen)
    return ran


def run_here(job: Job, budget: Budget, seed: int | None, n_startup: int,
             callback: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """``engine="local", n_workers=1``: the trials one after another in this process."""
    ran = worker_loop(job, budget, seed=seed, n_startup=n_startup, lock=lambda: file_lock(budget_lock_path(budget)),
                      callback=callback)
    return {"engine": "local", "workers": 1, "processes": False, "worker_pids": [os.getpid()], "trials_run": ran}


def new_finished(study: Any, since: int, seen: set[int]) -> list[Any]:
    """This search's trials that finished since the last call (for callbacks driven from the parent)."""
    out = [t for t in study.get_trials(deepcopy=False)
           if t.number >= since and t.number not in seen and t.state.name not in ("RUNNING", "WAITING")]
    seen.update(t.number for t in out)
    return out


def check_engine(engine: str, n_workers: int | None) -> None:
    if engine == "ray":
        raise InputError("engine='ray' is not supported: nbopt scales out on dask.distributed (it starts in seconds "
                         "on a small machine); use engine='dask' (address='tcp://host:8786' for a cluster)")
    if engine not in ENGINES:
        raise InputError(f"engine must be one of {ENGINES}, got {engine!r}")
    if n_workers is not None and (not isinstance(n_workers, int) or isinstance(n_workers, bool) or n_workers < 1):
        raise InputError(f"n_workers must be an int >= 1 (or None: 1 in-process for 'local', 2 for 'dask'), "
                         f"got {n_workers!r}")


__all__ = ["ENGINES", "Job", "Budget", "counts", "run_one", "worker_loop", "run_here", "mark_lost", "check_engine",
           "OBJECTIVES"]
