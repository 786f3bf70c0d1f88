"""Figures of recovery (distillation / fine-tuning curves) and of the compression search (the Pareto front)."""
from __future__ import annotations

import math
from typing import Any, Mapping

import pandas as pd

from .figures import _figure, detached, percent_limits, pyplot, series_colour


def plot_curves(curves: Mapping[str, pd.DataFrame], *, teacher_accuracy: float = math.nan, ax: Any = None) -> Any:
    """Held-out accuracy per epoch, one line per run (``{"distill": history, "fine-tune": history}``)."""
    fig, ax = _figure(ax, (5.5, 3.2))
    ys: list[float] = []
    for name, df in curves.items():
        if "accuracy" in df and df["accuracy"].notna().any():
            ax.plot(df.index, 100 * df["accuracy"], "o-", ms=4, label=name, color=series_colour(name), clip_on=False)
            ys += list(100 * df["accuracy"])
    if teacher_accuracy == teacher_accuracy:
        ax.axhline(100 * teacher_accuracy, color="grey", ls="--", lw=1, label="teacher")
        ys.append(100 * teacher_accuracy)
    ax.set_xlabel("epoch")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_ylim(*percent_limits(ys))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return detached(fig) if ax is None else fig


#: how each reference point is drawn (marker, size); its colour is :func:`series_colour` of its name
REFERENCE_MARKERS = {"fp32": ("s", 8), "optimize default": ("D", 8)}


def plot_front(trials: pd.DataFrame, front: pd.DataFrame, *, x: str = "latency_ms", y: str = "accuracy",
               references: Mapping[str, tuple[float, float]] | None = None, highlight: int | None = None,
               ax: Any = None) -> Any:
    """Every finished trial (grey; infeasible ones hollow), the Pareto front (a blue line), the reference points
    (fp32 black, optimize's default green) and the picked trial (a crimson star): colours fixed per series
    (:func:`series_colour`), accuracy in % on a y-axis within [0, 100] (:func:`percent_limits`)."""
    fig, ax = _figure(ax, (5.5, 3.4))
    ys: list[float] = []
    done = trials[trials["state"] == "COMPLETE"] if "state" in trials else trials
    if len(done) and x in done and y in done:
        feasible = done["feasible"].astype(bool) if "feasible" in done else pd.Series(True, index=done.index)
        ax.scatter(done.loc[feasible, x], 100 * done.loc[feasible, y], s=18, color=series_colour("trials"),
                   alpha=0.6, label="trials", clip_on=False)
        if (~feasible).any():
            ax.scatter(done.loc[~feasible, x], 100 * done.loc[~feasible, y], s=18, facecolors="none",
                       edgecolors=series_colour("over the accuracy budget"), alpha=0.8,
                       label="over the accuracy budget", clip_on=False)
        ys += list(100 * done[y])
    if len(front) and x in front:
        f = front.sort_values(x)
        ax.plot(f[x], 100 * f[y], "o-", color=series_colour("Pareto front"), ms=6, label="Pareto front",
                clip_on=False)
        ys += list(100 * f[y])
        if highlight is not None and highlight in front.index:
            ax.plot(front.loc[highlight, x], 100 * front.loc[highlight, y], "*", ms=16,
                    color=series_colour("current"), zorder=5, label=f"trial {highlight}", clip_on=False)
    for name, (px, py) in (references or {}).items():
        marker, size = REFERENCE_MARKERS.get(name, ("^", 8))
        ax.plot(px, 100 * py, marker, ms=size, color=series_colour(name), label=name, clip_on=False)
        ys.append(100 * py)
    ax.set_xlabel({"latency_ms": "latency (ms)", "size_bytes": "size (bytes)"}.get(x, x))
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(*percent_limits(ys))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return detached(fig) if ax is None else fig


__all__ = ["plot_curves", "plot_front", "pyplot", "REFERENCE_MARKERS"]
