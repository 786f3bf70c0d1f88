"""Plots for quantization results (matplotlib is imported here only)."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


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
    import matplotlib.pyplot as plt

    mat = sensitivity_matrix(df, value)
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.2 * len(mat.columns) + 3, 0.28 * len(mat) + 1.6))
    else:
        fig = ax.figure
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
    return fig
