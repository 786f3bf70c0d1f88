"""Profile tables for notebooks (HTML) and terminals (text): totals, uncounted ops, the rows shown."""
from __future__ import annotations

import html
from typing import Any

import pandas as pd

from .format import format_table, readable

VIEWS = ("layer", "type")  # the ``by=`` of :func:`view` (and of the magic's and the CLI's --by)
SHOWN = ["type", "out_shape", "params", "macs", "flops", "share", "latency_ms", "self_latency_ms", "out_bytes",
         "gflops_per_s"]


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
