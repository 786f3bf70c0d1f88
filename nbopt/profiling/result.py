""":class:`Profile`: the result of :func:`nbopt.profile` — the per-module table, totals and views of it."""
from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..errors import InputError, InputTypeError, NboptError, NoisyTimingWarning
from ..table import Table, as_table
from ..timing import NOISY_SPREAD, MachineLoad, Timing, noise_note

ACCOUNTED = (0.8, 1.25)  # per-layer self latencies should add up to this share of the whole-model latency
LATENCY_COLUMNS = ("latency_ms", "self_latency_ms", "gflops_per_s")  # rankings by these are timings
# what a notebook / a terminal shows of a profile's tables (every column stays in the DataFrame)
SHOWN = ("count", "type", "out_shape", "params", "macs", "flops", "share", "latency_ms", "self_latency_ms",
         "out_bytes", "gflops_per_s")
BRIEF = ("count", "type", "params", "macs", "flops", "share", "self_latency_ms")


def profile_table(df: pd.DataFrame) -> Table:
    """``df`` as a :class:`~nbopt.table.Table` that shows a profile's readable columns."""
    return as_table(df, columns=SHOWN, brief=BRIEF)


@dataclass
class Profile:
    """Where a model's compute goes, one row per module (``table``), plus totals.

    ``table`` columns: ``params``/``macs``/``flops`` are the module's own (rows add up to the totals);
    ``*_total`` are inclusive of children; ``latency_ms`` is inclusive wall time per forward (median),
    ``self_latency_ms`` excludes children; ``out_bytes`` is activation memory (output bytes);
    ``intensity`` is FLOPs per byte moved; ``gflops_per_s`` is achieved throughput. Latencies are medians
    over ``latency_calls`` timed forwards, with quartiles in ``latency_q1_ms``/``latency_q3_ms`` (inclusive)
    and ``self_latency_q1_ms``/``self_latency_q3_ms`` (own); own time is measured per call (a module's time
    minus that of the modules it called), so it is never negative.

    ``timing`` holds the whole-model samples (timed without hooks) behind ``latency_ms``, ``load`` the
    machine's load when they were taken; ``noisy``, ``latency_accounted`` and ``latency_notes()`` say how far the
    timings can be trusted.

    ``notes`` say how the profile was made where it matters (why a count ran on real tensors, why latency was
    skipped, which inputs were copied); ``calls`` has one row per top-level forward (prefill and each decode step
    of ``generate()``: tokens in, MACs, MACs per generated token, KV-cache bytes read; see
    :func:`~nbopt.profiling.calls.calls_table`).
    """

    table: pd.DataFrame
    total_macs: int
    total_flops: int
    total_params: int
    latency_ms: float | None
    uncounted: dict[str, int] = field(default_factory=dict)
    coverage: float = 1.0
    engine: str = "aten"
    execution: str = "real"
    inputs: str = ""
    timing: Timing | None = None
    load: MachineLoad | None = None
    notes: list[str] = field(default_factory=list)
    calls: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.table, Table):
            self.table = profile_table(self.table)

    @classmethod
    def from_table(cls, table: pd.DataFrame, **fields: Any) -> "Profile":
        """A profile whose totals are the sums of ``table``'s own-count columns."""
        return cls(table=table, total_macs=int(table["macs"].sum()), total_flops=int(table["flops"].sum()),
                   total_params=int(table["params"].sum()), **fields)

    @property
    def layers(self) -> pd.DataFrame:
        """Rows of modules that do work themselves (leaves and containers with their own ops)."""
        t = self.table
        return t[(t["macs"] > 0) | (t["flops"] > 0) | (t["params"] > 0)]

    @property
    def latency_summary(self) -> dict[str, float] | None:
        """Whole-model median, quartiles, min/max and number of timed calls (``None`` without latency)."""
        return self.timing.summary() if self.timing is not None else None

    @property
    def noisy(self) -> bool:
        """Whether the whole-model timing's spread exceeds :data:`~nbopt.timing.NOISY_SPREAD` or the machine
        was busy (load average above its cores) while timing; ``False`` without latency."""
        if self.timing is None:
            return False
        return bool(self.timing.noisy or (self.load is not None and self.load.busy))

    @property
    def latency_accounted(self) -> float | None:
        """Sum of the per-module self latencies / the whole-model latency (``None`` without latency).

        Near 1 when the per-layer times explain the model's time; above :data:`ACCOUNTED` ``[1]`` when the
        timing hooks' overhead inflates small layers, below ``[0]`` when time is spent outside modules.
        """
        if self.latency_ms is None or "self_latency_ms" not in self.table or not self.latency_ms > 0:
            return None
        own = self.table["self_latency_ms"]
        return float(own.sum()) / self.latency_ms if own.notna().any() else None

    def latency_notes(self) -> list[str]:
        """Why the latencies should be read with care: noise, a busy machine, per-layer times that do not add
        up to the whole (empty when none applies or without latency)."""
        if self.timing is None and self.latency_ms is None:
            return []
        notes = []
        if self.timing is not None:
            note = noise_note(self.timing, self.load, what="latency")
            if note:
                notes.append(note)
        acc = self.latency_accounted
        if acc is not None and not ACCOUNTED[0] <= acc <= ACCOUNTED[1]:
            why = ("the per-module timing hooks add overhead to every layer, most to small ones"
                   if acc > ACCOUNTED[1] else "time is spent outside modules (functional ops in forward)")
            notes.append(f"per-layer self latencies add up to {100 * acc:.0f}% of the whole-model latency "
                         f"(expected {100 * ACCOUNTED[0]:.0f}-{100 * ACCOUNTED[1]:.0f}%): {why}; compare layers "
                         "with each other, not with the whole-model latency.")
        return notes

    def ranking_note(self, k: int = 10, by: str = "self_latency_ms") -> str:
        """Why a ranking of layers by latency is unreliable, or ``""``: the profile is noisy, the per-layer
        times do not add up to the whole, or one of the ``k`` top layers' own times spreads more than
        :data:`~nbopt.timing.NOISY_SPREAD`."""
        if self.latency_ms is None:
            return ""
        reasons = []
        if self.noisy:
            reasons.append("the timing is noisy" + (" (machine busy)" if self.load is not None and self.load.busy
                                                    else ""))
        acc = self.latency_accounted
        if acc is not None and not ACCOUNTED[0] <= acc <= ACCOUNTED[1]:
            reasons.append(f"per-layer times add up to {100 * acc:.0f}% of the whole")
        col = "self_latency" if by in ("self_latency_ms", "gflops_per_s") else "latency"
        q1, q3 = f"{col}_q1_ms", f"{col}_q3_ms"
        if q1 in self.table:
            top = self.layers.sort_values(f"{col}_ms", ascending=False).head(k)
            med = top[f"{col}_ms"]
            spread = (top[q3] - top[q1]) / med.where(med > 0)
            wide = spread[spread > NOISY_SPREAD]
            if len(wide):
                reasons.append(f"{len(wide)} of the top {len(top)} layers spread more than "
                               f"{100 * NOISY_SPREAD:.0f}% ({', '.join(map(str, wide.index[:3]))}"
                               f"{', ...' if len(wide) > 3 else ''})")
        if not reasons:
            return ""
        return ("latency ranking unreliable: " + "; ".join(reasons) + ". Layers whose IQRs overlap may swap "
                "places from run to run; re-run with more repeats on a quiet machine before acting on it.")

    def top(self, k: int = 10, by: str = "macs") -> pd.DataFrame:
        """The ``k`` layers with the most ``by`` (own counts: macs, flops, params, self_latency_ms ...).

        A ranking by a latency column that :meth:`ranking_note` calls unreliable carries the note in
        ``.attrs["note"]`` and warns (:class:`~nbopt.errors.NoisyTimingWarning`).
        """
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            raise InputTypeError(f"top(k) needs a whole number of layers k >= 1, got {k!r}; e.g. prof.top(10)")
        if k < 1:
            raise InputError(f"top(k) needs k >= 1 (how many layers to show), got {k}; e.g. prof.top(10)")
        if by not in self.table.columns:
            raise NboptError(f"unknown column {by!r}; choose one of {', '.join(self.table.columns)}")
        out = self.layers.sort_values(by, ascending=False).head(k)
        if by in LATENCY_COLUMNS or (by.endswith("_ms") and "latency" in by):
            note = self.ranking_note(k, by)
            out.attrs["note"] = note
            if note:
                warnings.warn(note, NoisyTimingWarning, stacklevel=2)
        return out

    def by_type(self) -> pd.DataFrame:
        """Totals grouped by layer type (own counts, so nothing is counted twice)."""
        cols = ["params", "macs", "flops", "self_latency_ms", "out_bytes"]
        layers = pd.DataFrame(self.layers)
        grouped = layers.groupby("type")[cols].sum()
        # a sum of timings none of which was measured is missing, not 0 ms
        grouped["self_latency_ms"] = layers.groupby("type")["self_latency_ms"].sum(min_count=1)
        grouped.insert(0, "count", layers.groupby("type").size())
        grouped["share"] = grouped["macs"] / self.total_macs if self.total_macs else 0.0
        return profile_table(grouped.sort_values("macs", ascending=False))

    def at_depth(self, depth: int) -> pd.DataFrame:
        """The tree collapsed to ``depth`` levels: deeper modules fold into their ancestor's inclusive row."""
        t = self.table
        kept = t[t["depth"] <= depth].copy()
        folded = kept["depth"] == depth
        for own, total in (("params", "params_total"), ("macs", "macs_total"), ("flops", "flops_total"),
                           ("self_latency_ms", "latency_ms"), ("self_latency_q1_ms", "latency_q1_ms"),
                           ("self_latency_q3_ms", "latency_q3_ms")):
            if own not in kept:
                continue
            kept.loc[folded, own] = kept.loc[folded, total]
        kept["share"] = kept["macs"] / self.total_macs if self.total_macs else 0.0
        return kept

    def summary(self) -> dict[str, Any]:
        """Totals as a plain dict."""
        return {"params": self.total_params, "macs": self.total_macs, "flops": self.total_flops,
                "latency_ms": self.latency_ms, "latency": self.latency_summary, "noisy": self.noisy,
                "latency_accounted": self.latency_accounted, "coverage": self.coverage, "uncounted": dict(self.uncounted),
                "engine": self.engine, "inputs": self.inputs, "notes": list(self.notes),
                "calls": len(self.calls) if self.calls is not None else 0}

    def plot(self, k: int = 10, **kwargs: Any) -> Any:
        """Top layers by MACs beside top layers by latency (matplotlib; drawn by :mod:`nbopt.display.figures`)."""
        from ..display.figures import plot_profile  # front-end imported on demand: the core stays matplotlib-free
        return plot_profile(self, k=k, **kwargs)

    def _repr_html_(self) -> str:
        from ..display.tables import profile_html
        return profile_html(self)

    def __repr__(self) -> str:
        lat = f", latency={self.latency_ms:.3f} ms" if self.latency_ms is not None else ""
        if self.timing is not None:
            lat += f" (IQR {self.timing.q1_ms:.3f}-{self.timing.q3_ms:.3f}, n={self.timing.n}" + \
                (", noisy)" if self.noisy else ")")
        return (f"Profile(params={self.total_params:,}, macs={self.total_macs:,}, flops={self.total_flops:,}"
                f"{lat}, layers={len(self.layers)}, engine={self.engine!r})")
