"""``SearchResult``: every trial as a DataFrame, the Pareto front, ``plot()`` and ``build(trial)``."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from torch import nn

from .space import SearchSpace, config_from_params
from .study import OBJECTIVES

ATTR_COLUMNS = ("accuracy", "accuracy_drop", "latency_ms", "latency_q1_ms", "latency_q3_ms", "size_bytes", "params",
                "build_s", "timing_wait_s", "timing_noisy", "pid", "error", "lost")


def trials_frame(study: Any) -> pd.DataFrame:
    """One row per trial: number, state, measured values, feasibility, and the sampled parameters."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        row = {"trial": t.number, "state": t.state.name}
        row.update({k: t.user_attrs.get(k, math.nan) for k in ATTR_COLUMNS})
        if t.state.name == "FAIL" and "ended" not in t.user_attrs and "lost" not in t.user_attrs:
            row["lost"] = "stale heartbeat: its worker stopped"  # failed by optuna.storages.fail_stale_trials
        row["feasible"] = t.state.name == "COMPLETE" and float(t.user_attrs.get("constraint", 0.0)) <= 0
        row.update({f"param:{k}": v for k, v in t.params.items()})
        rows.append(row)
    cols = ["trial", "state", *ATTR_COLUMNS, "feasible"]
    return pd.DataFrame(rows, columns=cols if not rows else None).set_index("trial")


def pareto(trials: pd.DataFrame, objectives: tuple[str, ...]) -> pd.DataFrame:
    """The feasible finished trials no other feasible trial beats on every objective (ties kept once)."""
    done = trials[(trials["state"] == "COMPLETE") & trials["feasible"]]
    if not len(done):
        return done
    signs = {OBJECTIVES[o][0]: (1 if OBJECTIVES[o][1] == "minimize" else -1) for o in objectives}
    vals = pd.DataFrame({c: s * done[c].astype(float) for c, s in signs.items()})
    keep = []
    for i, row in vals.iterrows():
        others = vals.drop(index=i)
        dominated = ((others <= row).all(axis=1) & (others < row).any(axis=1)).any()
        same_earlier = ((others == row).all(axis=1) & (others.index < i)).any()
        if not dominated and not same_earlier:
            keep.append(i)
    return done.loc[keep].sort_values(list(signs)[0])


@dataclass
class SearchResult:
    """A finished (or resumed) search. ``trials``: every trial; ``front``: the feasible Pareto front;
    ``references``: the fp32 model and ``optimize``'s default pipeline, measured alike; ``timing``: how the
    latency objective kept trials from sharing cores; ``engine``: where trials ran."""

    trials: pd.DataFrame
    front: pd.DataFrame
    objectives: tuple[str, ...]
    storage: str
    study_name: str
    space: SearchSpace
    baseline_accuracy: float
    references: dict[str, dict[str, float]] = field(default_factory=dict)
    timing: str = ""
    engine: dict[str, Any] = field(default_factory=dict)
    partial: bool = False
    notes: list[str] = field(default_factory=list)
    _context: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def study(self) -> Any:
        """The Optuna study (for optuna.visualization, optuna-dashboard): loaded from the storage."""
        from .study import open_storage, optuna_module

        return optuna_module().load_study(study_name=self.study_name, storage=open_storage(self.storage))

    def config(self, trial: int) -> dict[str, Any]:
        """The settings of trial number ``trial`` (pruning amounts, precision, bits, recovery)."""
        return config_from_params(self._params(trial)).as_dict()

    def _params(self, trial: int) -> dict[str, Any]:
        row = self.trials.loc[trial]
        return {k[6:]: v for k, v in row.items() if k.startswith("param:") and v == v}

    def build(self, trial: int, *, export: bool = False, format: str = "onnx", path: Any = None) -> Any:
        """The compressed model of trial number ``trial``, rebuilt the same way; with ``export`` also its export
        (``(model, ExportResult)``; an onnxruntime program, int8 or fp32 ``runtime="onnxruntime"``, saves its own
        graph)."""
        from .build import build_config

        c = self._context
        model, _ = build_config(c["model"], c["example_input"], config_from_params(self._params(trial)),
                                calib=c["calib"], train_data=c.get("train_data"),
                                recover_epochs=c.get("recover_epochs", 2), seed=c.get("seed", 0))
        if not export:
            return model
        from ..deployment import export as do_export

        return model, do_export(model, c["example_input"], format, path, latency=False)

    def plot(self, x: str | None = None, ax: Any = None, highlight: int | None = None) -> Any:
        """The trials, the front and the reference points (fp32, optimize's default)."""
        from ..display.search_figures import plot_front

        xcol = x or next((OBJECTIVES[o][0] for o in self.objectives if o != "accuracy"), "latency_ms")
        refs = {k: (v.get(xcol, math.nan), v.get("accuracy", math.nan)) for k, v in self.references.items()}
        return plot_front(self.trials, self.front, x=xcol, references=refs, highlight=highlight, ax=ax)

    def __repr__(self) -> str:
        n = int((self.trials["state"] == "COMPLETE").sum()) if len(self.trials) else 0
        notes = "".join(f"\n{m}" for m in self.notes)
        from ..display.frames import text_table  # front-end imported on demand

        return (f"SearchResult({n} finished trials of {len(self.trials)}, front {len(self.front)}, "
                f"objectives {self.objectives}, storage {self.storage!r})\n"
                + text_table(self.front, max_rows=10, where=".front") + notes)

    def _repr_html_(self) -> str:
        from ..display.frames import html_table
        from ..display.results import notes_html

        return html_table(self.front, where="`.front`") + notes_html(self.notes)


def default_model_hint(model: nn.Module) -> str:
    return type(model).__name__
