"""The per-module profile table: own and inclusive counts, latency with its spread, activation memory, intensity."""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ..layers import ROOT
from ..timing import ModuleTimings
from .attribution import OUTSIDE, ModuleNames, ModuleStats, ModuleTracker

COLUMNS = ["type", "depth", "calls", "in_shape", "out_shape", "params", "macs", "flops", "share",
           "latency_ms", "self_latency_ms", "latency_q1_ms", "latency_q3_ms", "self_latency_q1_ms",
           "self_latency_q3_ms", "latency_calls", "out_bytes", "intensity", "gflops_per_s", "params_total",
           "macs_total", "flops_total"]


def _ancestors(name: str, present: set[str]) -> list[str]:
    """Enclosing modules of ``name`` that appear in the table, nearest first."""
    if name == ROOT:
        return []
    out = []
    while "." in name:
        name = name.rsplit(".", 1)[0]
        if name in present:
            out.append(name)
    if ROOT in present:
        out.append(ROOT)
    return out


def _inclusive(rows: list[str], own: list[float], ancestors: list[list[str]]) -> list:
    """Own values plus those of every descendant."""
    total = dict(zip(rows, own))
    for v, ups in zip(own, ancestors):
        for a in ups:
            total[a] += v
    return [total[n] for n in rows]


def _fmt_shapes(shapes: list) -> str:
    """``[(2, 4, 5, 5)]`` -> ``"2x4x5x5"`` (several tensors comma-separated)."""
    return ", ".join("x".join(map(str, s)) for s in shapes)


def _self_latency(rows: list[str], ancestors: list[list[str]], lat: Mapping[str, float]) -> list[float]:
    """Each module's latency minus that of its nearest enclosing rows, at least 0 (NaN where not measured).

    Only for plain medians; :class:`~nbopt.timing.ModuleTimings` carry own times measured directly.
    """
    child_lat = dict.fromkeys(rows, 0.0)
    for n, ups in zip(rows, ancestors):
        if ups and n in lat:
            child_lat[ups[0]] += lat[n]
    return [max(0.0, lat[n] - child_lat[n]) if n in lat else math.nan for n in rows]


def _latency_columns(cols: dict[str, Any], rows: list[str], ancestors: list[list[str]],
                     latencies: ModuleTimings | Mapping[str, float] | None) -> None:
    """``latency_ms`` / ``self_latency_ms`` (medians over the timed calls), their quartiles and call count."""
    nan = np.full(len(rows), math.nan)
    if isinstance(latencies, ModuleTimings):
        inc, own = latencies.inclusive, latencies.own
        for col, source, stat in (("latency_ms", inc, "median_ms"), ("latency_q1_ms", inc, "q1_ms"),
                                  ("latency_q3_ms", inc, "q3_ms"), ("self_latency_ms", own, "median_ms"),
                                  ("self_latency_q1_ms", own, "q1_ms"), ("self_latency_q3_ms", own, "q3_ms")):
            cols[col] = np.array([getattr(source[n], stat) if n in source else math.nan for n in rows], dtype=float)
        cols["latency_calls"] = [inc[n].n if n in inc else 0 for n in rows]
        return
    lat = latencies or {}
    cols["latency_ms"] = np.array([lat.get(n, math.nan) for n in rows], dtype=float)
    cols["self_latency_ms"] = np.array(_self_latency(rows, ancestors, lat), dtype=float)
    for col in ("latency_q1_ms", "latency_q3_ms", "self_latency_q1_ms", "self_latency_q3_ms"):
        cols[col] = nan.copy()
    cols["latency_calls"] = [0] * len(rows)


def _intensity_and_throughput(cols: dict[str, Any], st: list[ModuleStats | None]) -> None:
    """FLOPs per byte moved (inputs, outputs, fp32 weights) and achieved GFLOP/s, added to ``cols``."""
    moved = np.array([s.in_bytes + s.out_bytes if s else 0 for s in st], dtype=float)
    moved += np.asarray(cols["params_total"], dtype=float) * 4
    flops_total = np.asarray(cols["flops_total"], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        cols["intensity"] = np.where(moved > 0, flops_total / np.where(moved > 0, moved, 1.0), math.nan)
        cols["gflops_per_s"] = flops_total / (cols["latency_ms"] * 1e6)


def build_table(names: ModuleNames, tracker: ModuleTracker | None, own_macs: Mapping[str, float] | None = None,
                own_flops: Mapping[str, float] | None = None,
                latencies: ModuleTimings | Mapping[str, float] | None = None) -> pd.DataFrame:
    """Assemble the per-module DataFrame (:data:`COLUMNS`), one row per module, indexed by name.

    Counts come from ``tracker`` unless ``own_macs``/``own_flops`` are given (thop's numbers);
    ``latencies`` are per-module timings (:class:`~nbopt.timing.ModuleTimings`: medians, quartiles and the
    number of timed calls of inclusive and own time), or plain inclusive medians in milliseconds.
    """
    types, params = names.types, names.params
    stats = tracker.stats if tracker is not None else {}
    rows = list(types) + [n for n in stats if n not in types]
    present = set(rows)
    ancestors = [_ancestors(n, present) for n in rows]
    st = [stats.get(n) for n in rows]
    has_root = 1 if ROOT in types else 0
    src_macs = own_macs if own_macs is not None else {n: s.macs for n, s in stats.items()}
    src_flops = own_flops if own_flops is not None else {n: s.flops for n, s in stats.items()}
    cols: dict[str, Any] = {
        "type": [types.get(n) or (s.type if s else "") for n, s in zip(rows, st)],
        "depth": [0 if n in (ROOT, OUTSIDE) else n.count(".") + has_root for n in rows],
        "calls": [s.calls if s else 0 for s in st],
        "in_shape": [_fmt_shapes(s.in_shapes) if s else "" for s in st],
        "out_shape": [_fmt_shapes(s.out_shapes) if s else "" for s in st],
        "params": [params.get(n, 0) for n in rows],
        "macs": [int(src_macs.get(n, 0)) for n in rows],
        "flops": [int(src_flops.get(n, 0)) for n in rows],
    }
    for own in ("params", "macs", "flops"):
        cols[f"{own}_total"] = _inclusive(rows, cols[own], ancestors)
    total_macs = sum(cols["macs"])
    macs = np.asarray(cols["macs"], dtype=np.int64)
    cols["share"] = macs / total_macs if total_macs else np.zeros(len(rows))
    _latency_columns(cols, rows, ancestors, latencies)
    cols["out_bytes"] = [s.out_bytes if s else 0 for s in st]
    _intensity_and_throughput(cols, st)
    df = pd.DataFrame(cols, index=pd.Index(rows, name="module"))
    return df[COLUMNS]
