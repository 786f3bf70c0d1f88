"""Figures of recovery (distillation / fine-tuning curves) and of the compression search (the Pareto front)."""
from __future__ import annotations

import math
from typing import Any, Mapping

import pandas as pd

from .figures import _figure, pyplot


def plot_curves(curves: Mapping[str, pd.DataFrame], *, teacher_accuracy: float = math.nan, ax: Any = None) -> Any:
    """Held-out accuracy per epoch, one line per run (``{"distill": history, "fine-tune": history}``)."""
    fig, ax = _figure(ax, (5.5, 3.2))
    for name, df in curves.items():
        if "accuracy" in df and df["accuracy"].notna().any():
            ax.plot(df.index, 100 * df["accuracy"], "o-", ms=4, label=name)
    if teacher_accuracy == teacher_accuracy:
        ax.axhline(100 * teacher_accuracy, color="grey", ls="--", lw=1, label="teacher")
    ax.set_xlabel("epoch")
    ax.set_ylabel("held-out accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def plot_front(trials: pd.DataFrame, front: pd.DataFrame, *, x: str = "latency_ms", y: str = "accuracy",
               references: Mapping[str, tuple[float, float]] | None = None, highlight: int | None = None,
               ax: Any = None) -> Any:
    """Every finished trial (grey; infeasible ones hollow), the Pareto front (a line) and reference points."""
    fig, ax = _figure(ax, (5.5, 3.4))
    done = trials[trials["state"] == "COMPLETE"] if "state" in trials else trials
    if len(done) and x in done and y in done:
        feasible = done["feasible"] if "feasible" in done else pd.Series(True, index=done.index)
        ax.scatter(done.loc[feasible, x], 100 * done.loc[feasible, y], s=18, color="tab:blue", alpha=0.5,
                   label="trials")
        ax.scatter(done.loc[~feasible, x], 100 * done.loc[~feasible, y], s=18, facecolors="none",
                   edgecolors="tab:red", alpha=0.6, label="over the accuracy budget")
    if len(front) and x in front:
        f = front.sort_values(x)
        ax.plot(f[x], 100 * f[y], "o-", color="tab:orange", ms=6, label="Pareto front")
        if highlight is not None and highlight in front.index:
            ax.plot(front.loc[highlight, x], 100 * front.loc[highlight, y], "*", ms=16, color="crimson",
                    zorder=5, label=f"trial {highlight}")
    for i, (name, (px, py)) in enumerate((references or {}).items()):
        ax.plot(px, 100 * py, "sD"[i % 2], ms=8, color=("black", "tab:green")[i % 2], label=name)
    ax.set_xlabel({"latency_ms": "latency (ms)", "size_bytes": "size (bytes)"}.get(x, x))
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


__all__ = ["plot_curves", "plot_front", "pyplot"]
