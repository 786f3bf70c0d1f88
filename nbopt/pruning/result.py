"""``prune()``: one-shot pruning with a before/after summary (params, MACs, size, measured latency)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn

from ..inputs import as_args
from ..model_state import preserved, size_bytes
from .pruner import Pruner


@dataclass
class PruneResult:
    """The pruned model (independent of yours), its per-layer report and a before/after summary."""

    model: nn.Module
    report: pd.DataFrame
    summary: pd.DataFrame
    setting: dict[str, Any]

    def __repr__(self) -> str:
        s = self.summary
        return (f"PruneResult({self.setting}, params {s.loc['params', 'ratio']:.2f}x, "
                f"MACs {s.loc['macs', 'ratio']:.2f}x, latency {s.loc['latency_ms', 'ratio']:.2f}x)")

    def _repr_html_(self) -> str:
        return self.summary.to_html(float_format=lambda v: f"{v:,.4g}")


def prune(model: nn.Module, example_inputs: Any, *, amount: float | None = None, threshold: float | None = None,
          scope: str = "global", structured: bool = False, layers: list[str] | None = None,
          exclude: list[str] | None = None, overrides: dict[str, float] | None = None, criterion: str = "l1",
          round_to: int = 8, latency: bool = True, progress: bool = True) -> PruneResult:
    """Prune a copy of ``model`` once (see :class:`Pruner`); measure params, MACs, size and latency before/after."""
    pruner = Pruner(model, example_inputs, layers=layers, exclude=exclude, criterion=criterion,
                    round_to=round_to, progress=progress)
    pruner.set(amount, threshold=threshold, scope=scope, structured=structured, overrides=overrides)
    pruned = pruner.export()
    report = pruner.report
    return PruneResult(pruned, report, summarize(model, pruned, example_inputs, report, latency), pruner.setting)


def summarize(before: nn.Module, after: nn.Module, example_inputs: Any, report: pd.DataFrame,
              latency: bool = True) -> pd.DataFrame:
    """Rows params, nonzero params, MACs, effective MACs, size and latency; columns before, after, ratio."""
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
    if latency:
        rows["latency_ms"] = measure_pair(before, after, example_inputs)
    df = pd.DataFrame(rows, index=["before", "after"]).T.astype(float)
    df["ratio"] = df["before"] / df["after"]
    return df


def measure_pair(before: nn.Module, after: nn.Module, example_inputs: Any) -> tuple[float, float]:
    """Median latency of both models on ``example_inputs``, interleaved (eval mode, no grad)."""
    from ..timing import compare

    args, kwargs = as_args(example_inputs)
    with preserved(before, eval_mode=True), preserved(after, eval_mode=True):
        t = compare({"before": lambda: before(*args, **kwargs), "after": lambda: after(*args, **kwargs)},
                    warmup=2, repeat=7)
    return t["before"].median_ms, t["after"].median_ms
