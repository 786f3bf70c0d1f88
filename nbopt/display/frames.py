"""Every table nbopt shows, in one style: units by column kind, blanks for NaN, a row limit, a scroll box.

The core returns raw numbers; this module decides how they read. A column's kind comes from its name
(:func:`kind_of`) unless the caller passes ``kinds``. ``html_table`` wraps the table in a box that scrolls
horizontally inside the notebook's output area (columns are never cut), uses JupyterLab's own table style
(no heavy borders) and shows about 15 rows with a line saying how to get the rest; ``text_table`` is the
terminal version.
"""
from __future__ import annotations

import html
import math
from typing import Any, Callable, Mapping

import pandas as pd

from .format import readable, readable_bytes

MAX_ROWS = 15
KINDS = ("count", "bytes", "ms", "fraction", "ratio", "db", "number", "text")

_COUNT_NAMES = {"params", "macs", "flops", "params_total", "macs_total", "flops_total", "params_before",
                "params_after", "macs_before", "macs_after", "dense_macs", "effective_macs", "nonzero", "numel"}
_FRACTION_NAMES = {"share", "sparsity", "accuracy", "top1", "top1_agreement", "agreement", "coverage",
                   "accuracy_drop", "kept"}


def kind_of(column: str) -> str:
    """The display kind of a column, from its name (``macs`` -> count, ``size_bytes`` -> bytes, ...)."""
    c = str(column).lower()
    if c in _COUNT_NAMES or c.endswith(("_params", "_macs", "_flops")):
        return "count"
    if c.endswith("bytes") or c in ("size", "file_size"):
        return "bytes"
    if c.endswith("_ms") or c == "ms":
        return "ms"
    if c in _FRACTION_NAMES or c.endswith(("_share", "_sparsity", "_accuracy", "_agreement", "_fraction")):
        return "fraction"
    if c in ("speedup", "ratio", "compression") or c.endswith(("_ratio", "_speedup", "_x")):
        return "ratio"
    if c.endswith("_db"):
        return "db"
    return "number"


def _blank(v: Any) -> bool:
    if v is None:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):  # arrays, lists: not blank
        return False


def number(v: float, digits: int = 3) -> str:
    """``digits`` significant digits, never scientific notation: 0.000123 -> '0.000123', 52.880184 -> '52.9',
    3663761408 -> '3,663,761,408'."""
    if isinstance(v, bool):
        return str(v)
    if not math.isfinite(v):
        return "inf" if v > 0 else ("-inf" if v < 0 else "")
    if float(v).is_integer() and abs(v) >= 1:
        return f"{int(v):,}"
    if v == 0:
        return "0"
    decimals = max(0, digits - 1 - int(math.floor(math.log10(abs(v)))))
    return f"{v:,.{decimals}f}"


def _ms(v: float) -> str:
    return number(v, 3)


def _fraction(v: float) -> str:
    pct = 100 * v
    return f"{pct:.1f}%" if abs(pct) >= 0.1 or pct == 0 else f"{pct:.2g}%"


def _ratio(v: float) -> str:
    return f"{v:.2f}x" if math.isfinite(v) else ""


def _db(v: float) -> str:
    return f"{v:.1f} dB" if math.isfinite(v) else ("inf dB" if v > 0 else "")


FORMATTERS: dict[str, Callable[[Any], str]] = {
    "count": readable, "bytes": readable_bytes, "ms": _ms, "fraction": _fraction, "ratio": _ratio,
    "db": _db, "number": number, "text": str,
}


def format_value(v: Any, kind: str) -> str:
    """One cell as text; NaN and None are blank, strings pass through."""
    if _blank(v):
        return ""
    if isinstance(v, str) or not isinstance(v, (int, float)) or isinstance(v, bool):
        return str(v)
    return FORMATTERS[kind](v)


def format_frame(df: pd.DataFrame, kinds: Mapping[str, str] | None = None) -> pd.DataFrame:
    """A display copy of ``df``: every cell a string in its column's units (``kinds`` overrides the names)."""
    kinds = dict(kinds or {})
    bad = {k: v for k, v in kinds.items() if v not in KINDS}
    if bad:
        raise ValueError(f"unknown display kinds {bad}; use one of {KINDS}")
    out = df.copy()
    for col in out.columns:
        kind = kinds.get(col, kind_of(col))
        out[col] = [format_value(v, kind) for v in out[col]]
    return out


def _clip(df: pd.DataFrame, max_rows: int | None) -> tuple[pd.DataFrame, int]:
    if max_rows is None or len(df) <= max_rows:
        return df, 0
    return df.head(max_rows), len(df) - max_rows


def more_rows_text(hidden: int, where: str) -> str:
    return f"+{hidden} more rows — {where} has them all" if hidden else ""


def html_table(df: pd.DataFrame, *, kinds: Mapping[str, str] | None = None, max_rows: int | None = MAX_ROWS,
               where: str = "`.table`", caption: str | None = None, index: bool = True) -> str:
    """The notebook HTML of a table: readable units, at most ``max_rows`` rows, a horizontal scroll box."""
    shown, hidden = _clip(df, max_rows)
    body = format_frame(shown, kinds).to_html(escape=True, border=0, index=index, na_rep="",
                                              classes="nbopt-table")
    cap = f"<div class='nbopt-caption'><b>{html.escape(caption)}</b></div>" if caption else ""
    more = (f"<div class='nbopt-more' style='color:var(--jp-ui-font-color2,#666);font-size:90%'>"
            f"{html.escape(more_rows_text(hidden, where))}</div>") if hidden else ""
    return (f"{cap}<div class='nbopt-scroll' style='overflow-x:auto;max-width:100%'>{body}</div>{more}")


def text_table(df: pd.DataFrame, *, kinds: Mapping[str, str] | None = None, max_rows: int | None = MAX_ROWS,
               where: str = ".table", index: bool = True) -> str:
    """The terminal text of a table, in the same units as :func:`html_table`."""
    shown, hidden = _clip(df, max_rows)
    text = format_frame(shown, kinds).to_string(index=index)
    return text + (f"\n{more_rows_text(hidden, where)}" if hidden else "")
