"""Plots for deployment results (matplotlib is imported here only)."""
from __future__ import annotations

from typing import Any

import pandas as pd


def plot_threads(df: pd.DataFrame, ax: Any = None) -> Any:
    """Latency (bars) and speedup (line) per thread count from :func:`nbopt.threads_sweep`; returns the figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 3))
    else:
        fig = ax.figure
    labels = df["threads"].astype(str)
    ax.bar(labels, df["latency_ms"], color="tab:blue")
    ax.set_xlabel("threads")
    ax.set_ylabel("latency (ms, median)")
    twin = ax.twinx()
    twin.plot(labels, df["speedup"], color="tab:orange", marker="o")
    twin.set_ylabel("speedup vs first", color="tab:orange")
    ax.set_title("latency per thread count")
    fig.tight_layout()
    return fig


def plot_pipeline(table: pd.DataFrame, ax: Any = None) -> Any:
    """Latency per step of :func:`nbopt.optimize` with the speedup over the original written on each bar."""
    import matplotlib.pyplot as plt

    done = table[table["status"] == "done"]
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3))
    else:
        fig = ax.figure
    bars = ax.bar(done.index.astype(str), done["latency_ms"], color="tab:green")
    for bar, s in zip(bars, done["speedup"]):
        ax.annotate(f"{s:.1f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
    ax.set_ylabel("latency (ms, median)")
    ax.set_title("optimize: latency per step")
    fig.tight_layout()
    return fig
