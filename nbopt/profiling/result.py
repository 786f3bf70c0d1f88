""":class:`Profile`: the result of :func:`nbopt.profile` — the per-module table, totals and views of it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..errors import NboptError


@dataclass
class Profile:
    """Where a model's compute goes, one row per module (``table``), plus totals.

    ``table`` columns: ``params``/``macs``/``flops`` are the module's own (rows add up to the totals);
    ``*_total`` are inclusive of children; ``latency_ms`` is inclusive wall time per forward (median),
    ``self_latency_ms`` excludes children; ``out_bytes`` is activation memory (output bytes);
    ``intensity`` is FLOPs per byte moved; ``gflops_per_s`` is achieved throughput.
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

    def top(self, k: int = 10, by: str = "macs") -> pd.DataFrame:
        """The ``k`` layers with the most ``by`` (own counts: macs, flops, params, self_latency_ms ...)."""
        if by not in self.table.columns:
            raise NboptError(f"unknown column {by!r}; choose one of {', '.join(self.table.columns)}")
        return self.layers.sort_values(by, ascending=False).head(k)

    def by_type(self) -> pd.DataFrame:
        """Totals grouped by layer type (own counts, so nothing is counted twice)."""
        cols = ["params", "macs", "flops", "self_latency_ms", "out_bytes"]
        grouped = self.layers.groupby("type")[cols].sum()
        grouped.insert(0, "count", self.layers.groupby("type").size())
        grouped["share"] = grouped["macs"] / self.total_macs if self.total_macs else 0.0
        return grouped.sort_values("macs", ascending=False)

    def at_depth(self, depth: int) -> pd.DataFrame:
        """The tree collapsed to ``depth`` levels: deeper modules fold into their ancestor's inclusive row."""
        t = self.table
        kept = t[t["depth"] <= depth].copy()
        folded = kept["depth"] == depth
        for own, total in (("params", "params_total"), ("macs", "macs_total"), ("flops", "flops_total"),
                           ("self_latency_ms", "latency_ms")):
            kept.loc[folded, own] = kept.loc[folded, total]
        kept["share"] = kept["macs"] / self.total_macs if self.total_macs else 0.0
        return kept

    def summary(self) -> dict[str, Any]:
        """Totals as a plain dict."""
        return {"params": self.total_params, "macs": self.total_macs, "flops": self.total_flops,
                "latency_ms": self.latency_ms, "coverage": self.coverage, "uncounted": dict(self.uncounted),
                "engine": self.engine, "inputs": self.inputs}

    def plot(self, k: int = 10, **kwargs: Any) -> Any:
        """Top layers by MACs beside top layers by latency (matplotlib; drawn by :mod:`nbopt.display.figures`)."""
        from ..display.figures import plot_profile  # front-end imported on demand: the core stays matplotlib-free
        return plot_profile(self, k=k, **kwargs)

    def _repr_html_(self) -> str:
        from ..display.tables import profile_html
        return profile_html(self)

    def __repr__(self) -> str:
        lat = f", latency={self.latency_ms:.3f} ms" if self.latency_ms is not None else ""
        return (f"Profile(params={self.total_params:,}, macs={self.total_macs:,}, flops={self.total_flops:,}"
                f"{lat}, layers={len(self.layers)}, engine={self.engine!r})")
