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
import numbers
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from .format import readable, readable_bytes

MAX_ROWS = 15
KINDS = ("count", "bytes", "ms", "fraction", "ratio", "db", "number", "text")

_COUNT_NAMES = {"params", "macs", "flops", "params_total", "macs_total", "flops_total", "params_before",
                "params_after", "macs_before", "macs_after", "dense_macs", "effective_macs", "nonzero", "numel"}
_FRACTION_NAMES = {"share", "sparsity", "accuracy", "top1", "top1_agreement", "agreement", "coverage",
                   "accuracy_drop", "kept"}


def kind_of(column: Any) -> str:
    """The display kind of a column, from its name (``macs`` -> count, ``size_bytes`` -> bytes, ...).

    A quartile's name reads as its quantity (``speedup_q1`` -> ratio); a ``*_vs_first`` column is a ratio."""
    c = str(column).lower()
    if c.endswith(("_q1", "_q3")):
        c = c[:-3]
    if c.endswith("_vs_first"):
        return "ratio"
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
    """``3.36x``, ``459x``, ``0.0022x``: two decimals near 1, else 2-3 significant digits."""
    if not math.isfinite(v):
        return ""
    if 0.1 <= abs(v) < 10 or v == 0:
        return f"{v:.2f}x"
    return f"{number(v, 3 if abs(v) >= 10 else 2)}x"


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
    if isinstance(v, str) or not isinstance(v, numbers.Real) or isinstance(v, (bool, np.bool_)):
        return str(v)
    return FORMATTERS[kind](float(v) if not isinstance(v, numbers.Integral) else int(v))


def format_frame(df: pd.DataFrame, kinds: Mapping[str, str] | None = None, *, by_rows: bool = False) -> pd.DataFrame:
    """A display copy of ``df``: every cell a string in its column's units (``kinds`` overrides the names).

    ``by_rows``: a before/after table whose rows are the metrics (``params``, ``latency_ms``): a cell's kind is
    its row's (``kinds`` by row label), except in a column whose own name has a kind (``ratio``)."""
    kinds = dict(kinds or {})
    bad = {k: v for k, v in kinds.items() if v not in KINDS}
    if bad:
        raise ValueError(f"unknown display kinds {bad}; use one of {KINDS}")
    out = pd.DataFrame(index=df.index, columns=df.columns, dtype=object)
    for j, col in enumerate(df.columns):
        own = kinds.get(col, kind_of(col))
        if by_rows and own == "number":
            cells = [format_value(v, kinds.get(row, kind_of(row))) for row, v in zip(df.index, df.iloc[:, j])]
        else:
            cells = [format_value(v, own) for v in df.iloc[:, j]]
        out.iloc[:, j] = cells
    return out


def _clip(df: pd.DataFrame, max_rows: int | None) -> tuple[pd.DataFrame, int]:
    if max_rows is None or len(df) <= max_rows:
        return df, 0
    return df.head(max_rows), len(df) - max_rows


def more_rows_text(hidden: int, where: str) -> str:
    return f"+{hidden} more rows — {where} has them all" if hidden else ""


def more_columns_text(hidden: Sequence[Any], where: str) -> str:
    """``+3 more columns (latency_q1_ms, latency_q3_ms, depth) — .shown() has them all``."""
    if not hidden:
        return ""
    names = ", ".join(map(str, list(hidden)[:4])) + (", …" if len(hidden) > 4 else "")
    return f"+{len(hidden)} more column{'s' if len(hidden) > 1 else ''} ({names}) — {where} has them all"


def _more_html(text: str) -> str:
    return (f"<div class='nbopt-more' style='color:var(--jp-ui-font-color2,#666);font-size:90%'>"
            f"{html.escape(text)}</div>") if text else ""


def html_table(df: pd.DataFrame, *, kinds: Mapping[str, str] | None = None, max_rows: int | None = MAX_ROWS,
               where: str = "`.table`", caption: str | None = None, index: bool = True,
               by_rows: bool = False) -> str:
    """The notebook HTML of a table: readable units, at most ``max_rows`` rows, a horizontal scroll box."""
    shown, hidden = _clip(df, max_rows)
    body = format_frame(shown, kinds, by_rows=by_rows).to_html(escape=True, border=0, index=index, na_rep="",
                                                               classes="nbopt-table")
    cap = f"<div class='nbopt-caption'><b>{html.escape(caption)}</b></div>" if caption else ""
    more = _more_html(more_rows_text(hidden, where))
    return (f"{cap}<div class='nbopt-scroll' style='overflow-x:auto;max-width:100%'>{body}</div>{more}")


def text_table(df: pd.DataFrame, *, kinds: Mapping[str, str] | None = None, max_rows: int | None = MAX_ROWS,
               where: str = ".table", index: bool = True, by_rows: bool = False,
               line_width: int | None = None) -> str:
    """The terminal text of a table, in the same units as :func:`html_table` (wrapped at ``line_width``
    characters, pandas' ``display.width`` by default)."""
    shown, hidden = _clip(df, max_rows)
    width = line_width if line_width is not None else pd.get_option("display.width")
    text = format_frame(shown, kinds, by_rows=by_rows).to_string(index=index, line_width=width)
    return text + (f"\n{more_rows_text(hidden, where)}" if hidden else "")


# ---------------------------------------------------------------- nbopt.table.Table's own display


def _view_columns(table: pd.DataFrame, wanted: Sequence[str] | None) -> tuple[list[Any], list[Any]]:
    """(shown, hidden) columns for a view: ``wanted`` in its order where present and not all NaN (those are
    named with the hidden ones); every column when ``wanted`` is None, names none present, or the table has only
    a few columns (a selection the user made)."""
    cols = list(table.columns)
    if wanted is None or len(cols) <= 6:
        return cols, []
    present = [c for c in wanted if c in cols]
    shown = [c for c in present if not table[c].isna().all()]  # a column with nothing measured says nothing
    if not shown:
        return cols, []
    return shown, [c for c in cols if c not in shown]


def _note(table: pd.DataFrame) -> str:
    note = table.attrs.get("note") if isinstance(getattr(table, "attrs", None), dict) else None
    return note if isinstance(note, str) else ""


def _plain(table: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(table, copy=False)


def table_html(table: Any, *, note: bool = True) -> str:
    """The notebook HTML of an :class:`nbopt.table.Table`: its view's columns and rows, then its note
    (``.attrs["note"]``; ``note=False`` leaves it to the caller)."""
    view = table.view
    shown, hidden = _view_columns(table, view.columns)
    plain = _plain(table)[shown]
    body = html_table(plain, kinds=view.kinds, max_rows=view.max_rows, where="`.shown(max_rows=None)`",
                      caption=view.caption or None, by_rows=view.by_rows)
    cols = _more_html(more_columns_text(hidden, "`.shown()`"))
    note = _note(table) if note else ""
    warn = f"<p class='nbopt-note' style='color:#a15c00'>&#9888; {html.escape(note)}</p>" if note else ""
    return f"<div class='nbopt-frame'>{body}{cols}{warn}</div>"


def table_text(table: Any) -> str:
    """The terminal text of an :class:`nbopt.table.Table`: its view's brief columns, at most its rows, pointers to
    the rest, its note."""
    view = table.view
    shown, hidden = _view_columns(table, view.brief if view.brief is not None else view.columns)
    lines = [view.caption] if view.caption else []
    lines.append(text_table(_plain(table)[shown], kinds=view.kinds, max_rows=view.max_rows,
                            where=".shown(max_rows=None)", by_rows=view.by_rows))
    more = more_columns_text(hidden, ".shown()")
    note = _note(table)
    return "\n".join(lines + ([more] if more else []) + ([note] if note else []))
