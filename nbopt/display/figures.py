"""Every matplotlib figure nbopt draws (matplotlib is imported inside each function, on demand)."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..errors import require


def pyplot() -> Any:
    """``matplotlib.pyplot``, or an error naming the extra that installs it."""
    return require("matplotlib.pyplot", extra="notebook", purpose="nbopt's figures", package="matplotlib")


def _figure(ax: Any, figsize: tuple[float, float]) -> tuple[Any, Any]:
    """``(fig, ax)``: a new figure, or the figure of the ``ax`` given."""
    plt = pyplot()
    if ax is None:
        return plt.subplots(figsize=figsize)
    return ax.figure, ax


def detached(fig: Any) -> Any:
    """``fig``, no longer managed by pyplot: a notebook shows it once, as the cell's value (an open pyplot figure
    is also drawn by the inline backend at the end of the cell: twice)."""
    pyplot().close(fig)
    return fig


def plot_profile(profile: Any, k: int = 10) -> Any:
    """Top layers by MACs beside top layers by latency: where FLOPs and time disagree (a :func:`detached`
    figure: display it, or make it the cell's last expression)."""
    plt = pyplot()
    layers = profile.layers
    has_latency = profile.latency_ms is not None and layers["self_latency_ms"].notna().any()
    fig, axes = plt.subplots(1, 2 if has_latency else 1, figsize=(12 if has_latency else 6, 0.35 * k + 1.5),
                             squeeze=False)
    by_macs = layers.sort_values("macs", ascending=False).head(k)[::-1]
    axes[0][0].barh(by_macs.index, by_macs["macs"] / 1e6, color="tab:blue")
    axes[0][0].set_xlabel("MMACs (own)")
    axes[0][0].set_title(f"Top {k} layers by MACs")
    if has_latency:
        by_lat = layers.sort_values("self_latency_ms", ascending=False).head(k)[::-1]
        axes[0][1].barh(by_lat.index, by_lat["self_latency_ms"], color="tab:orange")
        axes[0][1].set_title(f"Top {k} layers by latency")
        lo, hi = by_lat.get("self_latency_q1_ms"), by_lat.get("self_latency_q3_ms")
        if lo is not None and hi is not None and lo.notna().any():
            axes[0][1].errorbar(by_lat["self_latency_ms"], by_lat.index, fmt="none", ecolor="black", capsize=2,
                                xerr=[(by_lat["self_latency_ms"] - lo).clip(lower=0).fillna(0),
                                      (hi - by_lat["self_latency_ms"]).clip(lower=0).fillna(0)])
        unreliable = profile.ranking_note(k) if hasattr(profile, "ranking_note") else ""
        axes[0][1].set_xlabel("ms (own, median; bars: IQR)" +
                              ("\nranking unreliable: see Profile.ranking_note()" if unreliable else ""),
                              **({"color": "tab:red"} if unreliable else {}))
    fig.tight_layout()
    return detached(fig)


def plot_threads(df: pd.DataFrame, ax: Any = None) -> Any:
    """Latency (bars) and speedup (line) per thread count from :func:`nbopt.threads_sweep`; returns the figure."""
    fig, ax = _figure(ax, (5, 3))
    labels = df["threads"].astype(str)
    ax.bar(labels, df["latency_ms"], color="tab:blue", yerr=_iqr_err(df, "latency"), capsize=3)
    ax.set_xlabel("threads")
    ax.set_ylabel("latency (ms, median; bars: IQR)")
    twin = ax.twinx()
    twin.errorbar(labels, df["speedup"], yerr=_iqr_err(df, "speedup", suffix=""), color="tab:orange",
                  marker="o", capsize=3)
    twin.set_ylabel("speedup vs first", color="tab:orange")
    ax.set_title("latency per thread count")
    fig.tight_layout()
    return detached(fig) if ax is None else fig


def _iqr_err(df: pd.DataFrame, prefix: str, suffix: str = "_ms") -> Any:
    """Asymmetric error bars (median to q1, q3 to median) from ``<prefix>_q1<suffix>``/``_q3`` columns, or
    None when the table has no quartiles."""
    q1, q3, mid = f"{prefix}_q1{suffix}", f"{prefix}_q3{suffix}", f"{prefix}{suffix}"
    if q1 not in df or q3 not in df:
        return None
    lo = (df[mid] - df[q1]).clip(lower=0).fillna(0).to_numpy(dtype=float)
    hi = (df[q3] - df[mid]).clip(lower=0).fillna(0).to_numpy(dtype=float)
    return np.vstack([lo, hi])


def plot_pipeline(table: pd.DataFrame, ax: Any = None) -> Any:
    """Latency per step of :func:`nbopt.optimize` with the speedup over the original written on each bar."""
    done = table[table["status"] == "done"]
    fig, ax = _figure(ax, (6, 3))
    bars = ax.bar(done.index.astype(str), done["latency_ms"], color="tab:green", yerr=_iqr_err(done, "latency"),
                  capsize=3)
    noisy = done["noisy"] if "noisy" in done else [False] * len(done)
    for bar, s, flag in zip(bars, done["speedup"], noisy):
        label = f"{s:.1f}x" + ("?" if flag == 1 else "")  # "?": the ratio of a noisy row
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
    ax.set_ylabel("latency (ms, median; bars: IQR)")
    ax.set_title("optimize: latency per step")
    fig.tight_layout()
    return detached(fig) if ax is None else fig


def sensitivity_matrix(df: pd.DataFrame, value: str = "drop") -> pd.DataFrame:
    """Layers x bit widths table of ``drop`` or ``sqnr`` from :func:`nbopt.sensitivity` (bits high to low)."""
    if value not in ("drop", "sqnr"):
        raise ValueError(f"value={value!r} must be 'drop' or 'sqnr'.")
    cols = sorted((c for c in df.columns if c.startswith(f"{value}_") and c.endswith("bit")),
                  key=lambda c: -int(c[len(value) + 1:-3]))
    if not cols:
        raise ValueError(f"the table has no {value}_<b>bit columns; pass the DataFrame nbopt.sensitivity returned.")
    out = df[cols].astype(float)
    out.columns = [f"{c[len(value) + 1:-3]}-bit" for c in cols]
    return out


def plot_sensitivity(df: pd.DataFrame, value: str = "drop", ax: Any = None) -> Any:
    """Heatmap of metric drop (or output SQNR) per layer (rows, network order) and bit width (columns).

    Darker cells are more fragile: high drop, or low SQNR. Returns the figure.
    """
    mat = sensitivity_matrix(df, value)
    fig, ax = _figure(ax, (1.2 * len(mat.columns) + 3, 0.28 * len(mat) + 1.6))
    data = mat.to_numpy()
    finite = np.where(np.isfinite(data), data, np.nan)
    image = ax.imshow(finite, aspect="auto", cmap="Reds" if value == "drop" else "Reds_r")
    ax.set_xticks(range(len(mat.columns)), mat.columns)
    ax.set_yticks(range(len(mat)), [str(i) for i in mat.index], fontsize=8)
    for (i, j), v in np.ndenumerate(data):
        ax.annotate("inf" if np.isinf(v) else f"{v:.3g}", (j, i), ha="center", va="center", fontsize=7)
    label = df.attrs.get("metric", "drop") if value == "drop" else "output SQNR vs fp32 (dB)"
    fig.colorbar(image, ax=ax, label=label)
    partial = " (partial: interrupted)" if df.attrs.get("partial") else ""
    ax.set_title(f"sensitivity per layer{partial}")
    fig.tight_layout()
    return detached(fig) if ax is None else fig


def plot_bars(df: pd.DataFrame, column: str, title: str) -> Any:
    """Horizontal bars of one column of ``df``, first row on top (the ProfilePanel's plot)."""
    plt = pyplot()
    rows = df[column].fillna(0)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.3 * max(len(rows), 3) + 1.2))
    ax.barh([str(i) for i in rows.index], rows.values, color="tab:orange" if "latency" in column else "tab:blue")
    ax.set_xlabel(column)
    ax.set_title(title)
    fig.tight_layout()
    return detached(fig)


#: One colour per series, the same in every redraw whatever was drawn before (PruningPanel modes and LM criteria,
#: the search front). A name not listed gets a palette colour chosen from the name itself, never from the order.
SERIES_COLOURS = {
    "unstructured": "tab:blue", "unstructured per layer": "tab:cyan",
    "structured": "tab:orange", "structured per layer": "tab:brown",
    "magnitude": "tab:purple", "wanda": "tab:green",
    "magnitude 2:4": "tab:pink", "wanda 2:4": "tab:olive", "magnitude 4:8": "tab:gray", "wanda 4:8": "darkgreen",
    "current": "crimson",
    "trials": "tab:gray", "over the accuracy budget": "tab:gray", "Pareto front": "tab:blue",
    "fp32": "black", "optimize default": "tab:green",
    "distill": "tab:green", "finetune": "tab:orange", "fine-tune": "tab:orange",
}
_PALETTE = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
PERCENT_MARGIN = 2.0  # percentage points of air around the data on an accuracy axis


def series_colour(name: str) -> str:
    """The fixed colour of series ``name`` (:data:`SERIES_COLOURS`, else a palette colour from its CRC)."""
    import zlib

    return SERIES_COLOURS.get(name) or _PALETTE[zlib.crc32(str(name).encode()) % len(_PALETTE)]


def percent_limits(values: Any, margin: float = PERCENT_MARGIN) -> tuple[float, float]:
    """y-limits of an axis in % (accuracy, agreement): the data's range with ``margin`` points (or a tenth of the
    range) each side, clipped to [0, 100]; (0, 100) without finite data."""
    v = np.asarray(list(values), dtype=float)
    v = v[np.isfinite(v)]
    if not v.size:
        return 0.0, 100.0
    lo, hi = float(v.min()), float(v.max())
    pad = max(margin, 0.1 * (hi - lo))
    lo, hi = max(0.0, lo - pad), min(100.0, hi + pad)
    return (lo, hi) if hi > lo else (max(0.0, hi - 2 * margin), hi)


def plot_accuracy_history(history: pd.DataFrame, current: tuple[str, float, float] | None, *,
                          ylabel: str = "accuracy (%)",
                          xlabel: str = "sparsity (% of prunable weights removed)") -> Any:
    """Accuracy vs sparsity for every setting explored so far, one line per mode (its colour fixed by
    :func:`series_colour`), ``current`` (mode, sparsity, accuracy) marked with a star (the PruningPanel's plot).
    ``accuracy`` is a fraction (drawn in %); the y-axis is :func:`percent_limits` of what is drawn."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ys = list(100 * history["accuracy"]) if len(history) else []
    for mode, rows in history.groupby("mode", sort=True):
        rows = rows.sort_values("sparsity")
        ax.plot(100 * rows["sparsity"], 100 * rows["accuracy"], "o-", ms=4, label=mode, color=series_colour(mode),
                clip_on=False)
    if current is not None:
        ax.plot(100 * current[1], 100 * current[2], "*", ms=16, color=series_colour("current"), label="current",
                zorder=5, clip_on=False)
        ys.append(100 * current[2])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(-2, 100)
    ax.set_ylim(*percent_limits(ys))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return detached(fig)
