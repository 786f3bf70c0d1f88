"""The Optuna study behind a search: its storage (SQLite by default, or a journal file), sampler, objective."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..errors import InputError, require
from .space import SearchSpace

OBJECTIVES = {"latency": ("latency_ms", "minimize"), "accuracy": ("accuracy", "maximize"),
              "size": ("size_bytes", "minimize")}
DEFAULT_DB = "nbopt_search.db"


def optuna_module() -> Any:
    return require("optuna", extra="search", purpose="nbopt.search")


def check_objectives(objectives: Any) -> tuple[str, ...]:
    objs = (objectives,) if isinstance(objectives, str) else tuple(objectives)
    bad = [o for o in objs if o not in OBJECTIVES]
    if bad or not objs or len(set(objs)) != len(objs):
        raise InputError(f"objectives must be distinct names from {tuple(OBJECTIVES)}, got {objectives!r}")
    return objs


def storage_url(storage: Any) -> str:
    """A storage every process on this machine (and any sharing its disk) reaches: ``sqlite:///path`` (default
    ``./nbopt_search.db``), any SQLAlchemy URL, or a ``*.log`` / ``*.jsonl`` path for Optuna's journal file."""
    if storage is None:
        storage = DEFAULT_DB
    if isinstance(storage, Path) or (isinstance(storage, str) and "://" not in storage):
        path = Path(storage).expanduser().resolve()
        return f"journal:{path}" if path.suffix in (".log", ".jsonl") else f"sqlite:///{path}"
    if isinstance(storage, str):
        return storage
    raise InputError(f"storage must be a path (SQLite file, or a .log journal file) or a database URL such as "
                     f"'sqlite:///study.db', got {type(storage).__name__}")


_STORAGES: dict[str, Any] = {}  # dask workers: one storage (one SQLAlchemy engine) per URL and process


def open_storage(url: str, *, cached: bool = False) -> Any:
    """The Optuna storage object for ``url`` (RDB with heartbeats, so a killed worker's trial turns FAIL).
    ``cached``: reuse this process's storage for ``url`` (a dask worker runs many trials; opening costs ~1 s),
    unless its SQLite file was deleted meanwhile."""
    if not cached:
        return _new_storage(url)
    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else None
    if url not in _STORAGES or (path is not None and not Path(path).exists()):
        _STORAGES[url] = _new_storage(url)
    return _STORAGES[url]


def _new_storage(url: str) -> Any:
    optuna = optuna_module()
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url[len("journal:"):]))
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    import warnings

    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5; they make dead trials FAIL
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=5, grace_period=60)


def sampler(seed: int | None, n_startup: int) -> Any:
    """Multivariate TPE; the accuracy budget is an Optuna constraint (``trial.set_constraint``), not a penalty."""
    optuna = optuna_module()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup, multivariate=True)


def open_study(url: str, name: str, objectives: tuple[str, ...], fingerprint: dict[str, Any], seed: int | None,
               n_startup: int) -> Any:
    """Create the study, or load it (``storage=same`` continues it) after checking it searched the same thing."""
    optuna = optuna_module()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=open_storage(url), study_name=name, load_if_exists=True,
                                directions=[OBJECTIVES[o][1] for o in objectives],
                                sampler=sampler(seed, n_startup))
    stored = study.user_attrs.get("nbopt")
    mine = json.loads(json.dumps(fingerprint))
    if stored is None:
        study.set_user_attr("nbopt", mine)
    elif stored != mine:
        diff = sorted(k for k in set(stored) | set(mine) if stored.get(k) != mine.get(k))
        raise InputError(f"study {name!r} in {url} searched something else (differs in {', '.join(diff)}); "
                         "pass a new study_name= or storage= to start a new study, or the same settings to continue")
    return study


def fingerprint(model: Any, space: SearchSpace, objectives: tuple[str, ...], constraints: dict[str, float]) -> dict:
    return {"model": type(model).__name__, "params": int(sum(p.numel() for p in model.parameters())),
            "space": space.fingerprint(), "objectives": list(objectives), "constraints": dict(constraints)}


def values_of(measured: dict[str, Any], objectives: tuple[str, ...]) -> list[float]:
    vals = [float(measured[OBJECTIVES[o][0]]) for o in objectives]
    if any(math.isnan(v) for v in vals):
        raise InputError("an objective came out NaN: objectives=('accuracy', ...) needs evaluate=")
    return vals
