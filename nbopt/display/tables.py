"""Profile tables for notebooks (HTML) and terminals (text): totals, uncounted ops, latency notes, the rows shown."""
from __future__ import annotations

import html
from typing import Any

import pandas as pd

from . import frames
from .format import format_table, readable
from .frames import MAX_ROWS

VIEWS = ("layer", "type")  # the ``by=`` of :func:`view` (and of the magic's and the CLI's --by)
SHOWN = ["type", "out_shape", "params", "macs", "flops", "share", "latency_ms", "self_latency_ms",
         "self_latency_iqr_ms", "out_bytes", "gflops_per_s"]


def summary_line(profile: Any) -> str:
    """One line of totals, e.g. ``params 11.69M · MACs 1.82G · FLOPs 3.65G · latency 21.300 ms (median, IQR
    21.0-21.9, n=20)``."""
    parts = [f"params {readable(profile.total_params)}", f"MACs {readable(profile.total_macs)}",
             f"FLOPs {readable(profile.total_flops)}"]
    if profile.latency_ms is not None:
        t = getattr(profile, "timing", None)
        spread = f", IQR {t.q1_ms:.3g}-{t.q3_ms:.3g}, n={t.n}" if t is not None else ""
        noisy = ", noisy" if getattr(profile, "noisy", False) else ""
        parts.append(f"latency {profile.latency_ms:.3f} ms (median{spread}{noisy})")
        accounted = getattr(profile, "latency_accounted", None)
        if accounted is not None:
            parts.append(f"layers account for {100 * accounted:.0f}%")
    parts.append(f"inputs {profile.inputs}")
    return " · ".join(parts)


def uncounted_line(profile: Any) -> str:
    """Ops without a formula, never hidden: ``uncounted ops: aten.foo x3 (coverage 97.0%)``."""
    if not profile.uncounted:
        return ""
    ops = ", ".join(f"{k} x{v}" for k, v in sorted(profile.uncounted.items()))
    return (f"uncounted ops (no formula; register one with nbopt.register_formula): {ops} "
            f"(coverage {100 * profile.coverage:.1f}% of arithmetic op calls)")


def latency_notes(profile: Any) -> list[str]:
    """Noisy or unaccounted latency, and an unreliable latency ranking (empty without latency)."""
    if getattr(profile, "latency_ms", None) is None or not hasattr(profile, "latency_notes"):
        return []
    ranking = profile.ranking_note()
    return profile.latency_notes() + ([ranking] if ranking else [])


def notes(profile: Any) -> list[str]:
    """Every note a front-end shows under the totals: how the profile was made (``profile.notes``), uncounted
    ops, then :func:`latency_notes`."""
    made = list(getattr(profile, "notes", None) or [])
    return made + ([uncounted_line(profile)] if uncounted_line(profile) else []) + latency_notes(profile)


def notes_html(profile: Any) -> str:
    """:func:`notes` as HTML paragraphs; latency warnings are marked so they are not read as findings."""
    made = [f"<p>{html.escape(x)}</p>" for x in getattr(profile, "notes", None) or []]
    plain = [f"<p>{html.escape(uncounted_line(profile))}</p>"] if uncounted_line(profile) else []
    marked = [f"<p class='nbopt-note' style='color:#a15c00'>&#9888; {html.escape(x)}</p>"
              for x in latency_notes(profile)]
    return "".join(made + plain + marked)


def view(profile: Any, *, top: int | None = None, by: str = "layer", depth: int | None = None,
         sort: str = "macs") -> pd.DataFrame:
    """The rows a front-end shows: per layer (own counts), per type, or the tree cut at ``depth``; without
    latency, the latency columns are dropped (a sum of missing timings is not 0 ms)."""
    if by == "type":
        df = profile.by_type()
    elif depth is not None:
        df = profile.at_depth(depth)
    else:
        df = profile.layers
    if getattr(profile, "latency_ms", None) is None:
        df = df.drop(columns=[c for c in df.columns if c.endswith("_ms") or c == "gflops_per_s"])
    if top is not None:
        df = df.sort_values(sort if sort in df.columns else "macs", ascending=False).head(top)
    return df


def shown_columns(df: pd.DataFrame) -> pd.DataFrame:
    """The columns a front-end shows; ``self_latency_iqr_ms`` is the spread (q3 - q1) of ``self_latency_ms``."""
    if "self_latency_q1_ms" in df.columns and "self_latency_iqr_ms" not in df.columns:
        df = df.assign(self_latency_iqr_ms=df["self_latency_q3_ms"] - df["self_latency_q1_ms"])
    if "self_latency_iqr_ms" in df.columns and df["self_latency_iqr_ms"].isna().all():
        df = df.drop(columns="self_latency_iqr_ms")
    cols = [c for c in SHOWN if c in df.columns] if "out_shape" in df.columns else list(df.columns)
    return df[cols]


def shown_rows(profile: Any, *, top: int | None = None, max_rows: int | None = MAX_ROWS,
               **view_options: Any) -> tuple[pd.DataFrame, str]:
    """The rows to show and a line saying what was left out: with ``top`` the ``top`` layers with the most
    MACs; without it, every row up to ``max_rows`` (beyond that, the ``max_rows`` with the most MACs)."""
    every = view(profile, **view_options)
    k = top if top is not None else (max_rows if max_rows is not None and len(every) > max_rows else None)
    if k is None or k >= len(every):
        return every, ""
    rows = view(profile, top=k, **view_options)
    what = "types" if view_options.get("by") == "type" else "rows"
    return rows, f"the {k} {what} with the most MACs of {len(every)}"


def _table_parts(profile: Any, where: str, **options: Any) -> tuple[pd.DataFrame, str]:
    rows, left_out = shown_rows(profile, **options)
    hint = f"{left_out} are shown; {where}" if left_out else ""
    return shown_columns(rows), hint


def profile_html(profile: Any, *, where: str = "<code>.table</code> has them all", **options: Any) -> str:
    """HTML for notebooks: the totals, notes, and the per-layer table in readable units (at most
    ``max_rows``, 15 by default; ``top=K`` for the K layers with most MACs), in a horizontally scrolling box."""
    df, hint = _table_parts(profile, where, **options)
    more = (f"<div class='nbopt-more' style='color:var(--jp-ui-font-color2,#666);font-size:90%'>{hint}</div>"
            if hint else "")
    table = frames.html_table(format_table(df), max_rows=None)
    return (f"<div class='nbopt-profile'><p><b>{html.escape(summary_line(profile))}</b></p>{notes_html(profile)}"
            f"{table}{more}</div>")


def profile_text(profile: Any, *, where: str = ".table has them all", **options: Any) -> str:
    """Plain text for terminals and CI logs (the same rows as :func:`profile_html`)."""
    df, hint = _table_parts(profile, where, **options)
    return "\n".join([summary_line(profile), format_table(df).to_string(), *([hint] if hint else []),
                       *notes(profile)])
