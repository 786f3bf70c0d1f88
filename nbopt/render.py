"""Drawing and formatting only: readable units, HTML/text tables, matplotlib figures. No computation."""
from __future__ import annotations

import html
import math
from typing import Any

import pandas as pd

from .counting.thop_engine import clever_format

COUNT_COLUMNS = ("params", "macs", "flops", "params_total", "macs_total", "flops_total")
BYTE_COLUMNS = ("out_bytes", "size_bytes")
SHOWN = ["type", "out_shape", "params", "macs", "flops", "share", "latency_ms", "self_latency_ms", "out_bytes",
         "gflops_per_s"]


def readable(value: Any, fmt: str = "%.2f") -> str:
    """``1234567 -> '1.23M'`` in thop's clever_format style; NaN stays blank."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if abs(value) < 1e3:
        return str(int(value)) if float(value).is_integer() else f"{value:.2f}"
    return clever_format(float(value), fmt)


def readable_bytes(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{int(value)} B"


def format_table(df: pd.DataFrame) -> pd.DataFrame:
    """A display copy with readable units (the Profile's own DataFrame keeps raw numbers)."""
    out = df.copy()
    for col in out.columns:
        if col in COUNT_COLUMNS:
            out[col] = out[col].map(readable)
        elif col in BYTE_COLUMNS:
            out[col] = out[col].map(readable_bytes)
        elif col == "share" or col.endswith("_share"):
            out[col] = out[col].map(lambda v: f"{100 * v:.1f}%" if pd.notna(v) else "")
        elif col.endswith("_ms"):
            out[col] = out[col].map(lambda v: f"{v:.3f}" if pd.notna(v) else "")
        elif col in ("gflops_per_s", "intensity"):
            out[col] = out[col].map(lambda v: f"{v:.2f}" if pd.notna(v) and math.isfinite(v) else "")
    return out


def summary_line(profile: Any) -> str:
    """One line of totals, e.g. ``params 11.69M · MACs 1.82G · FLOPs 3.65G · latency 21.3 ms``."""
    parts = [f"params {readable(profile.total_params)}", f"MACs {readable(profile.total_macs)}",
             f"FLOPs {readable(profile.total_flops)}"]
    if profile.latency_ms is not None:
        parts.append(f"latency {profile.latency_ms:.3f} ms (median)")
    parts.append(f"inputs {profile.inputs}")
    return " · ".join(parts)


def uncounted_line(profile: Any) -> str:
    """Ops without a formula, never hidden: ``uncounted ops: aten.foo x3 (coverage 97.0%)``."""
    if not profile.uncounted:
        return ""
    ops = ", ".join(f"{k} x{v}" for k, v in sorted(profile.uncounted.items()))
    return (f"uncounted ops (no formula; register one with nbopt.register_formula): {ops} "
            f"(coverage {100 * profile.coverage:.1f}% of arithmetic op calls)")


def view(profile: Any, *, top: int | None = None, by: str = "layer", depth: int | None = None,
         sort: str = "macs") -> pd.DataFrame:
    """The rows a front-end shows: per layer (own counts), per type, or the tree cut at ``depth``."""
    if by == "type":
        df = profile.by_type()
    elif depth is not None:
        df = profile.at_depth(depth)
    else:
        df = profile.layers
    if top is not None:
        df = df.sort_values(sort if sort in df.columns else "macs", ascending=False).head(top)
    return df


def shown_columns(df: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in SHOWN if c in df.columns] if "out_shape" in df.columns else list(df.columns)
    return df[cols]


def profile_html(profile: Any, **view_options: Any) -> str:
    """HTML for notebooks: the totals, any uncounted ops, and the per-layer table in readable units."""
    df = format_table(shown_columns(view(profile, **view_options)))
    notes = "".join(f"<p>{html.escape(x)}</p>" for x in (uncounted_line(profile),) if x)
    return (f"<div class='nbopt-profile'><p><b>{html.escape(summary_line(profile))}</b></p>{notes}"
            f"{df.to_html(escape=True)}</div>")


def profile_text(profile: Any, **view_options: Any) -> str:
    """Plain text for terminals and CI logs."""
    df = format_table(shown_columns(view(profile, **view_options)))
    lines = [summary_line(profile), df.to_string()]
    if uncounted_line(profile):
        lines.append(uncounted_line(profile))
    return "\n".join(lines)


def plot_profile(profile: Any, k: int = 10, ax: Any = None) -> Any:
    """Top layers by MACs beside top layers by latency: where FLOPs and time disagree."""
    import matplotlib.pyplot as plt

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
        axes[0][1].set_xlabel("ms (own, median)")
        axes[0][1].set_title(f"Top {k} layers by latency")
    fig.tight_layout()
    return fig


def plot_compare(df: pd.DataFrame, columns: tuple[str, ...] = ("macs", "latency_ms")) -> Any:
    """Bars of each model's value relative to the first row, one panel per column."""
    import matplotlib.pyplot as plt

    cols = [c for c in columns if c in df.columns]
    fig, axes = plt.subplots(1, len(cols), figsize=(4 * len(cols), 3), squeeze=False)
    for ax, col in zip(axes[0], cols):
        ax.bar(df.index.astype(str), df[col] / df[col].iloc[0])
        ax.set_title(f"{col} (relative to {df.index[0]})")
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig
