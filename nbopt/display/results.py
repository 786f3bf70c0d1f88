"""How the results of quantize, prune, export and optimize read: a headline, the summary table (through
:mod:`nbopt.display.frames`), notes, and the per-layer report folded away; a short text for terminals.

A result's ``_repr_html_``/``__repr__`` calls these lazily; the magics display the same HTML.
"""
from __future__ import annotations

import html
from typing import Any, Iterable

import pandas as pd

from . import frames
from .format import readable, readable_bytes

BRIEF_LINES = 15  # a result's repr fits in this many lines


def notes_html(notes: Iterable[str]) -> str:
    """Warnings and caveats as marked paragraphs (so they are not read as findings)."""
    return "".join(f"<p class='nbopt-note' style='color:#a15c00'>&#9888; {html.escape(str(n))}</p>"
                   for n in notes if n)


def _details(title: str, body: str) -> str:
    return f"<details><summary>{html.escape(title)}</summary>{body}</details>"


def _table(df: pd.DataFrame) -> str:
    """A result's table (an :class:`nbopt.table.Table`) in its own view; its note is among the result's notes."""
    if hasattr(df, "view"):
        return frames.table_html(df, note=False)
    return frames.html_table(df)


def _text(head: str, lines: Iterable[str], notes: Iterable[str] = ()) -> str:
    """A headline, indented detail lines and notes, cut to :data:`BRIEF_LINES` lines."""
    out = [head] + [f"  {x}" for x in lines if x] + [str(n) for n in notes if n]
    return "\n".join(out[:BRIEF_LINES])


def _change(before: float, after: float, fmt: Any) -> str:
    ratio = f" ({before / after:.2f}x)" if after else ""
    return f"{fmt(before)} -> {fmt(after)}{ratio}"


# ---------------------------------------------------------------- quantize


METRIC_NAMES = {"sqnr_db": "SQNR", "top1_agreement": "top-1 agreement", "max_abs_diff": "max |diff|",
                "kl_div": "KL"}


def quant_fidelity_text(result: Any) -> str:
    """``cosine 0.9998, SQNR 29.0 dB, top-1 agreement 99.7%`` (numbers only)."""
    return ", ".join(f"{METRIC_NAMES.get(k, k.replace('_', ' '))} {frames.format_value(v, frames.kind_of(k))}"
                     for k, v in result.fidelity.items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v)


def quant_text(result: Any) -> str:
    s = result.size_bytes
    label = result.label + (", PARTIAL (interrupted)" if result.partial else "")
    acc = ""
    if result.accuracy:
        metric, kind = getattr(result, "metric", ("accuracy", "fraction"))
        acc = (f"{metric} {frames.format_value(result.accuracy['fp32'], kind)} -> "
               f"{frames.format_value(result.accuracy['quantized'], kind)}; ")
    lines = [f"deployable size {_change(s['fp32']['deployable'], s['quantized']['deployable'], readable_bytes)}, "
             f"speedup {result.speedup_text()}",
             acc + quant_fidelity_text(result),
             f".summary() has the before/after table, .report the {len(result.report)} layers, .model the model"]
    return _text(f"QuantResult({label}, {len(result.report)} layers)", lines,
                 [result.latency_note] if result.latency_note else [])


def quant_html(result: Any) -> str:
    head = (f"<p><b>{html.escape(result.label)}</b>{' · PARTIAL (interrupted)' if result.partial else ''} · "
            f"{len(result.report)} layers · speedup {html.escape(result.speedup_text())}</p>")
    report = _details(f"per-layer report ({len(result.report)} layers; .report has them all)",
                      frames.html_table(result.report, where="`.report`"))
    return f"<div class='nbopt-result'>{head}{_table(result.summary())}{notes_html(result.notes)}{report}</div>"


# ---------------------------------------------------------------- prune


def _setting_text(setting: dict) -> str:
    kind = "structured" if setting.get("structured") else "unstructured"
    what = (f"threshold {setting['threshold']}" if setting.get("threshold") is not None
            else f"amount {frames.format_value(setting.get('amount', 0.0), 'fraction')}")
    extra = [f"{k} {v}" for k, v in setting.items()
             if k not in ("structured", "threshold", "amount") and v not in (None, {}, [], "")]
    return ", ".join([kind, what] + extra)


def prune_text(result: Any) -> str:
    s = result.summary
    row = lambda name, fmt: _change(s.loc[name, "before"], s.loc[name, "after"], fmt)  # noqa: E731
    lines = [f"params (nonzero) {row('nonzero_params', readable)}, MACs (effective) {row('effective_macs', readable)}",
             f"dense size {row('size_bytes', readable_bytes)}"]
    if "latency_ms" in s.index:
        spread = result.speedup_spread.describe() if result.speedup_spread else f"{result.speedup:.2f}x"
        lines.append(f"latency {frames.format_value(s.loc['latency_ms', 'before'], 'ms')} -> "
                     f"{frames.format_value(s.loc['latency_ms', 'after'], 'ms')} ms, speedup {spread}"
                     + (", NOISY" if result.noisy else ""))
    lines.append(f".summary has the before/after table, .report the {len(result.report)} layers, .model the model")
    return _text(f"PruneResult({_setting_text(result.setting)})", lines, result.notes)


def prune_html(result: Any) -> str:
    head = f"<p><b>pruned: {html.escape(_setting_text(result.setting))}</b></p>"
    report = _details(f"per-layer report ({len(result.report)} layers; .report has them all)",
                      frames.html_table(result.report, where="`.report`"))
    return f"<div class='nbopt-result'>{head}{_table(result.summary)}{notes_html(result.notes)}{report}</div>"


# ---------------------------------------------------------------- export

EXPORT_ROWS = ("format", "runtime", "path", "file_bytes", "operators", "max_abs_diff", "latency_ms",
               "eager_latency_ms", "speedup", "latency_q1_ms", "latency_q3_ms", "eager_latency_q1_ms",
               "eager_latency_q3_ms", "latency_calls", "speedup_q1", "speedup_q3")


def export_frame(result: Any) -> pd.DataFrame:
    """The export's summary as one column of cells, each in its row's units (``file_bytes`` in KiB/MiB)."""
    row = result.summary()
    cells = {k: frames.format_value(row[k], frames.kind_of(k)) for k in EXPORT_ROWS if k in row}
    if "noisy" in row:
        cells["noisy"] = "yes" if row["noisy"] else "no"
    return pd.DataFrame({"": list(cells.values())}, index=list(cells))


def export_html(result: Any) -> str:
    ops = pd.DataFrame(sorted(result.operators.items(), key=lambda kv: -kv[1]), columns=["operator", "count"])
    table = frames.html_table(export_frame(result), max_rows=None)
    return (f"<div class='nbopt-result'><p><b>exported to {html.escape(str(result.path))}</b></p>{table}"
            f"{notes_html(list(result.notes) + ([result.latency_note] if result.latency_note else []))}"
            + _details(f"{len(ops)} operator types", frames.html_table(ops, index=False, where="`.operators`"))
            + "</div>")


# ---------------------------------------------------------------- optimize

def optimize_html(result: Any) -> str:
    head = f"<p><b>optimize: speedup {html.escape(result._speedup_text())}</b></p>"
    return f"<div class='nbopt-result'>{head}{_table(result.table)}{notes_html(result.notes)}</div>"


def optimize_text(result: Any) -> str:
    return "\n".join([f"OptimizeResult(speedup {result._speedup_text()})", repr(result.table), *result.notes])


def export_text(result: Any) -> str:
    ms = lambda v: frames.format_value(v, "ms")  # noqa: E731
    head = (f"ExportResult({result.format} -> {result.path}, {readable_bytes(result.file_bytes)}, "
            f"{len(result.operators)} operator types, max |diff| {frames.format_value(result.max_abs_diff, 'number')})")
    lines = []
    if result.latency:
        rt, eager = result.latency["runtime"], result.latency["eager"]
        lines.append(f"{result.runtime} {ms(result.latency_ms)} ms (IQR {ms(rt['q1_ms'])}-{ms(rt['q3_ms'])}) vs eager "
                     f"{ms(result.eager_latency_ms)} ms (IQR {ms(eager['q1_ms'])}-{ms(eager['q3_ms'])}), speedup "
                     f"{result.speedup_spread.describe()}" + (", NOISY" if result.noisy else ""))
    elif result.latency_ms == result.latency_ms:
        lines.append(f"{result.runtime} {ms(result.latency_ms)} ms vs eager {ms(result.eager_latency_ms)} ms")
    return _text(head, lines, [result.latency_note] if result.latency_note else [])
