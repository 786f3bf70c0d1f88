"""``prune()``: one-shot pruning with a before/after summary (params, MACs, size, measured latency)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import nn

from ..errors import InputError, NboptError
from ..inputs import as_args, forward_error
from ..model_state import preserved, size_bytes
from ..table import Table, as_table
from ..timing import Pair, Ratio
from . import heads as H
from .pruner import Pruner


@dataclass
class PruneResult:
    """The pruned model (independent of yours), its per-layer report and a before/after summary.

    With latency, the summary's ``latency_ms`` row (medians), its ``latency_q1_ms``/``latency_q3_ms``/
    ``latency_calls`` rows and the ``speedup_q1``/``speedup_q3`` rows (the quartiles of the per-round ratios, in
    the ``ratio`` column beside the speedup) all come from one interleaved timing of both models;
    ``speedup_spread`` is that :class:`~nbopt.timing.Ratio`. ``noisy`` and ``notes`` say when the timing was
    noisy or the machine busy, so the speedup is not a finding.
    """

    model: nn.Module
    report: pd.DataFrame
    summary: pd.DataFrame
    setting: dict[str, Any]
    latency: dict[str, dict[str, float]] = field(default_factory=dict)  # before/after: Timing.summary()
    speedup_spread: Ratio | None = None
    noisy: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        """Latency before / after (medians of one interleaved timing); NaN without latency."""
        s = self.summary
        return float(s.loc["latency_ms", "ratio"]) if "latency_ms" in s.index else math.nan

    def __repr__(self) -> str:
        from ..display.results import prune_text  # front-end imported on demand

        return prune_text(self)

    def _repr_html_(self) -> str:
        from ..display.results import prune_html

        return prune_html(self)


def prune(model: nn.Module, example_inputs: Any, *, amount: float | None = None, threshold: float | None = None,
          scope: str = "global", structured: bool = False, layers: list[str] | None = None,
          exclude: list[str] | None = None, overrides: dict[str, float] | None = None, criterion: str = "l1",
          round_to: int = 8, latency: bool = True, progress: bool = True) -> PruneResult:
    """Prune a copy of ``model`` once (see :class:`Pruner`); measure params, MACs, size and latency before/after."""
    if amount is None and threshold is None:
        raise InputError("prune() needs amount= (a fraction of weights to remove, in [0, 1), e.g. amount=0.5) "
                         "or threshold= (remove weights with magnitude below it, e.g. threshold=0.01); "
                         "neither was given, so nothing would be pruned")
    pruner = Pruner(model, example_inputs, layers=layers, exclude=exclude, criterion=criterion,
                    round_to=round_to, progress=progress)
    pruner.set(amount, threshold=threshold, scope=scope, structured=structured, overrides=overrides)
    pruned = pruner.export()
    report = pruner.report
    pair = measure_pair(model, pruned, example_inputs) if latency else None
    result = PruneResult(pruned, report, summarize(model, pruned, example_inputs, report, latency, pair=pair),
                         pruner.setting)
    result.notes.extend(pruner.notes + H.notes(pruner._groups or [], pruner._kept))
    if pair is not None:
        result.latency, result.speedup_spread, result.noisy = pair.summaries(), pair.speedup, pair.noisy
        if result.summary.attrs.get("note"):
            result.notes.append(result.summary.attrs["note"])
    return result


LATENCY_ROWS = ("latency_ms", "latency_q1_ms", "latency_q3_ms", "latency_calls", "speedup_q1", "speedup_q3")
SUMMARY_KINDS = {"nonzero_params": "count", "latency_calls": "number", "eval": "number"}  # by row (else by name)


def summarize(before: nn.Module, after: nn.Module, example_inputs: Any, report: pd.DataFrame,
              latency: bool = True, *, pair: Pair | None = None) -> Table:
    """Rows params, nonzero params, MACs, effective MACs, size and the :data:`LATENCY_ROWS`; columns before,
    after, ratio.

    The latency rows come from one interleaved timing (``pair``, measured here when ``latency`` and not
    given): medians, quartiles and timed calls of both models; the ``ratio`` of ``latency_ms`` is the speedup
    and the ``speedup_q1``/``speedup_q3`` rows hold the quartiles of its per-round ratios (before/after NaN).
    ``.attrs["noisy"]`` and ``.attrs["note"]`` carry the timing's noise check. A :class:`~nbopt.table.Table`
    read by rows (raw numbers; shown in each row's units).
    """
    from ..profiling import profile

    pb, pa = profile(before, example_inputs, latency=False), profile(after, example_inputs, latency=False)
    nz = lambda m: sum(int(torch.count_nonzero(p)) for p in m.parameters())  # noqa: E731
    saved = float((report["dense_macs"] - report["effective_macs"]).sum())
    rows = {
        "params": (pb.total_params, pa.total_params),
        "nonzero_params": (nz(before), nz(after)),
        "macs": (pb.total_macs, pa.total_macs),
        "effective_macs": (pb.total_macs, pa.total_macs - (saved if pa.total_macs == pb.total_macs else 0.0)),
        "size_bytes": (size_bytes(before), size_bytes(after)),
    }
    if pair is None and latency:
        pair = measure_pair(before, after, example_inputs)
    if pair is not None:
        b, a = pair.baseline, pair.other
        rows.update({"latency_ms": (b.median_ms, a.median_ms), "latency_q1_ms": (b.q1_ms, a.q1_ms),
                     "latency_q3_ms": (b.q3_ms, a.q3_ms), "latency_calls": (b.n, a.n),
                     "speedup_q1": (math.nan, math.nan), "speedup_q3": (math.nan, math.nan)})
    df = pd.DataFrame(rows, index=["before", "after"]).T.astype(float)
    df["ratio"] = df["before"] / df["after"]
    if pair is not None:
        r = pair.speedup
        df.loc[["latency_q1_ms", "latency_q3_ms", "latency_calls", "speedup_q1", "speedup_q3"], "ratio"] = [
            math.nan, math.nan, math.nan, r.q1, r.q3]
        df.attrs.update(noisy=pair.noisy, note=pair.note("latency speedup"))
    return as_table(df, by_rows=True, kinds=SUMMARY_KINDS, max_rows=None)


def measure_pair(before: nn.Module, after: nn.Module, example_inputs: Any, *, repeat: int | None = None) -> Pair:
    """Both models timed interleaved on ``example_inputs`` (eval mode, no grad), in one measurement.

    ``repeat`` (default: as many as fit in about a second per model, 9 to 30) timed calls each, in blocks of
    3 after untimed ones, following 3 untimed warm-up rounds.
    """
    from ..timing import auto_repeat, compare_pair

    args, kwargs = as_args(example_inputs)
    with preserved(before, eval_mode=True), preserved(after, eval_mode=True):
        fb, fa = _timed_call(before, example_inputs, args, kwargs), _timed_call(after, example_inputs, args, kwargs)
        n = repeat if repeat is not None else auto_repeat(fb, budget_s=1.0, lo=9, hi=30)
        return compare_pair(fb, fa, names=("before", "after"), warmup=3, repeat=n)


def _timed_call(model: nn.Module, example_inputs: Any, args: tuple, kwargs: dict) -> Any:
    """``model(*args, **kwargs)`` for the timing loop; the model's own failure on any call is a ForwardError
    naming the input shapes (the model may fail only on a later call, e.g. a state it keeps between calls)."""
    def run() -> Any:
        try:
            return model(*args, **kwargs)
        except (KeyboardInterrupt, NboptError):
            raise
        except Exception as exc:  # noqa: BLE001 - re-raised with the inputs that caused it
            raise forward_error(model, example_inputs, exc, " while timing latency") from None
    return run
