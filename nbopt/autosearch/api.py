"""``search()``: an accuracy-budgeted, multi-objective compression search over an Optuna study."""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable

from torch import nn

from ..errors import InputError, InputTypeError, PartialResultWarning
from ..inputs import check_device, check_module
from .build import TIMING_NOTE, latency_ms, measure_config
from .engine import Budget, Job, check_engine, run_here
from .result import SearchResult, pareto, trials_frame
from .space import Config, SearchSpace, default_space
from .study import check_objectives, fingerprint, open_study, storage_url

OPTIMIZE_DEFAULT = Config(amount=0.5, quant="int8", backend="onnxruntime")  # nbopt.optimize's pipeline


def search(model: nn.Module, example_input: Any, *, calib: Any, evaluate: Callable[[nn.Module], float] | None,
           objectives: tuple[str, ...] | str = ("latency", "accuracy"),
           constraints: dict[str, float] | None = None, space: SearchSpace | None = None, n_trials: int = 20,
           storage: Any = None, study_name: str = "nbopt-search", engine: str = "local", address: str | None = None,
           n_workers: int | None = None, train_data: Any = None, recover_epochs: int = 2, seed: int | None = 0,
           n_startup: int = 8, repeat: int = 20, references: bool = True,
           callback: Callable[[Any], None] | None = None) -> SearchResult:
    """Search compression settings of ``model``; every trial is built and measured, and stored as it finishes.

    ``objectives``: any of "latency" (median ms of the built program on ``example_input``, ``nbopt.timing``),
    "accuracy" (``evaluate(model)``), "size" (bytes of the saved or int8 model). ``constraints``:
    ``{"accuracy_drop": 0.005}`` keeps trials within half a point of the fp32 accuracy (an Optuna constraint:
    infeasible trials are kept but are never on the front). ``space``: a :class:`SearchSpace`; default
    :func:`default_space` (seeded from the profiler and ``nbopt.sensitivity``). ``train_data`` (labelled
    batches) adds recovery (fine-tune / distill from ``model``, for ``recover_epochs``, 2x or 4x as many) and
    deeper pruning to the default space; its fp32 points run in eager torch or onnxruntime (``runtime``).

    ``storage``: an SQLite file path (default ``./nbopt_search.db``), a database URL, or a ``.log`` journal file;
    calling again with the same storage and ``study_name`` continues the study (``n_trials`` more). ``engine``:
    "local" runs trials on this machine: in this process when ``n_workers`` is None or 1 (the default: no
    start-up, nothing pickled), else in ``n_workers`` spawned worker processes sharing the storage (the job is
    pickled with cloudpickle, installed with dask, so an ``evaluate`` defined in the notebook works); "dask" runs one trial loop per
    worker of a LocalCluster of ``n_workers`` processes (default 2), or of the cluster at ``address``. Either way
    exactly ``n_trials`` trials finish (the budget is the storage's trial count): a trial lost with a killed worker
    is stored as FAIL (user attr ``lost``) and replaced, and ``result.engine`` says where trials ran.
    Interrupting (the stop button) keeps every finished trial and returns them with a PartialResultWarning.
    """
    check_module(model)
    check_device(model, example_input)
    check_engine(engine, n_workers)
    objs = check_objectives(objectives)
    if evaluate is not None and not callable(evaluate):
        raise InputTypeError(f"evaluate must be a function model -> accuracy, got {type(evaluate).__name__}")
    if "accuracy" in objs and evaluate is None:
        raise InputError("objectives include 'accuracy': pass evaluate=fn(model) -> accuracy (e.g. demo.evaluate)")
    if not isinstance(n_trials, int) or n_trials < 0:
        raise InputError(f"n_trials must be an int >= 0, got {n_trials!r}")
    constraints = dict({"accuracy_drop": 0.005} if constraints is None else constraints)
    unknown = set(constraints) - {"accuracy_drop"}
    if unknown or (constraints and evaluate is None):
        raise InputError(f"constraints supports {{'accuracy_drop': fraction}} (needs evaluate=), got {constraints!r}")
    if calib is None:
        raise InputError("search needs calib= (calibration batches, e.g. demo.calibration_data()) for int8 builds")
    space = space or default_space(model, example_input, calib, recover=train_data is not None,
                                   epochs=tuple(sorted({recover_epochs, 2 * recover_epochs, 4 * recover_epochs})))
    url = storage_url(storage)
    study = open_study(url, study_name, objs, fingerprint(model, space, objs, constraints), seed, n_startup)
    since = len(study.trials)  # this call's budget: n_trials trials numbered from here (the enqueued one too)
    if not study.trials and n_trials:
        study.enqueue_trial(space.uncompressed(), user_attrs={"enqueued": "uncompressed model (trial 0)"})
    base = float(evaluate(model)) if evaluate is not None else math.nan
    job = Job(model, example_input, calib, evaluate, train_data, space, objs, base,
              constraints.get("accuracy_drop"), recover_epochs, repeat, 0 if seed is None else seed)
    result = SearchResult(trials_frame(study), None, objs, url, study_name, space, base)  # type: ignore[arg-type]
    before = len(result.trials)
    try:
        budget = Budget(url, study_name, since, n_trials)
        if engine == "local" and (n_workers or 1) == 1:
            result.engine = run_here(job, budget, seed, n_startup, callback)
        elif engine == "local" and n_trials:
            from .processes import run_processes

            result.engine = run_processes(job, budget, seed, n_startup, n_workers=n_workers, callback=callback)
        elif n_trials:
            from .cluster import run_dask

            result.engine = run_dask(job, budget, seed, n_startup, address=address, n_workers=n_workers or 2,
                                     callback=callback)
    except KeyboardInterrupt:
        result.partial = True
        warnings.warn("search interrupted: every finished trial is kept in the study's storage; call search() "
                      "again with the same storage= and study_name= to continue", PartialResultWarning, stacklevel=2)
    result.trials = trials_frame(study)
    result.front = pareto(result.trials, objs)
    result.timing = TIMING_NOTE if "latency" in objs else "no latency objective: nothing timed"
    result._context = {"model": model, "example_input": example_input, "calib": calib, "train_data": train_data,
                       "recover_epochs": recover_epochs, "seed": job.seed}
    if references and not result.partial:
        result.references = _references(job)
    result.notes.append(f"{len(result.trials) - before} trials added, {len(result.trials)} in study {study_name!r} "
                        f"({url}); fp32 accuracy {base:.4f}, budget {constraints}")
    result.notes.extend(space.notes)
    return result


def _references(job: Job) -> dict[str, dict[str, float]]:
    """fp32 and optimize's default pipeline (structured 50%, int8 onnxruntime), measured like a trial."""
    refs = {}
    for name, cfg in (("fp32", Config()), ("optimize default", OPTIMIZE_DEFAULT)):
        try:
            refs[name] = {k: v for k, v in measure_config(
                job.model, job.example_input, cfg, calib=job.calib, evaluate=job.evaluate, objectives=job.objectives,
                train_data=None, recover_epochs=0, seed=job.seed, repeat=job.repeat).items()
                if isinstance(v, (int, float))}
        except Exception as exc:  # noqa: BLE001 - a reference that cannot be built is reported, not fatal
            refs[name] = {"error": str(exc)}  # type: ignore[dict-item]
    return refs


__all__ = ["search", "latency_ms"]
