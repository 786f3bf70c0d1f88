"""QuantResult: the quantized model, its per-layer report, sizes, latency and fidelity vs fp32."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from torch import nn

from ..table import Table, as_table
from ..timing import Ratio

# display kinds of summary()'s rows (the table is read by rows: a metric per row, fp32 / quantized / ratio columns)
SUMMARY_KINDS = {"latency (ms, median)": "ms", "latency q1 (ms)": "ms", "latency q3 (ms)": "ms",
                 "latency calls": "number", "speedup q1 (x)": "ratio", "speedup q3 (x)": "ratio",
                 "accuracy": "fraction", "top1_agreement vs fp32": "fraction", "sqnr_db vs fp32": "db"}
RATIO_ROWS = ("size dense in memory (MB)", "size on disk (MB)", "size deployable (MB)", "latency (ms, median)")


@dataclass
class QuantResult:
    """What :func:`nbopt.quantize` and :func:`nbopt.qat` return.

    ``real`` is True only when ``model`` runs int8 kernels; a simulated (or QAT) model computes in float32
    and is neither faster nor smaller in memory than fp32 (its ``deployable`` size is what a runtime with
    that bit width would need). ``size_bytes`` (and, when measured, ``latency_ms`` and ``accuracy``) have an
    ``"fp32"`` and a ``"quantized"`` entry; ``fidelity`` compares quantized with fp32 outputs on ``calib``
    (latency and fidelity are empty without calibration data; ``accuracy`` is None without ``evaluate``).

    ``latency_ms`` holds the medians and ``latency`` each side's full summary (median, quartiles, min/max and
    ``n`` timed calls) from ONE interleaved timing of both models on the first calibration batch;
    ``speedup`` is the ratio of those two medians and ``speedup_spread`` the :class:`~nbopt.timing.Ratio` of
    the same calls (``q1``/``q3``: quartiles of the per-round ratios). ``noisy`` is True when either side
    spreads more than :data:`~nbopt.timing.NOISY_SPREAD`, the per-round ratios do, or the machine was busy;
    ``latency_note`` (also the last entry of ``notes``) then says why the speedup is not a finding.
    """

    model: nn.Module
    report: pd.DataFrame
    mode: str
    backend: str
    real: bool
    size_bytes: dict[str, dict[str, int]]
    latency_ms: dict[str, float]
    fidelity: dict[str, float]
    accuracy: dict[str, float] | None = None
    backend_reason: str = ""
    cpu: str = ""  # real int8: the CPU's int8 instruction set and the settings chosen for it (nbopt.cpu)
    notes: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    partial: bool = False  # True when an interrupted run (e.g. QAT) returned what it had finished
    latency: dict[str, dict[str, float]] = field(default_factory=dict)  # fp32/quantized: Timing.summary()
    speedup_spread: Ratio | None = None  # the speedup with the IQR of its per-round ratios, same calls
    noisy: bool = False  # the latency timing was noisy or the machine busy: the speedup is not a finding
    latency_note: str = ""  # why it is noisy ("" when quiet)

    @property
    def speedup(self) -> float:
        """fp32 latency / quantized latency (medians of one interleaved measurement; < 1 means slower)."""
        q = self.latency_ms.get("quantized", math.nan)
        return self.latency_ms.get("fp32", math.nan) / q if q else math.nan

    def speedup_text(self) -> str:
        """``3.21x (IQR 3.05-3.40x, n=18)``, with ``, NOISY`` when the timing was noisy (``"not measured"``
        without calibration data)."""
        if self.speedup_spread is None:
            return "not measured" if not self.latency_ms else f"{self.speedup:.2f}x"
        return self.speedup_spread.describe() + (", NOISY" if self.noisy else "")

    @property
    def label(self) -> str:
        """How the model computes: real int8 / int4 weight-only (and on which backend) or simulated."""
        if self.mode == "weight_only":
            return f"real int{self.options.get('weight_bits', 8)} weight-only ({self.backend})"
        return f"real int8 ({self.backend})" if self.real else "simulated (fake quantization, float32 compute)"

    @property
    def metric(self) -> tuple[str, str]:
        """The name and display kind of what ``evaluate`` measured: ``("accuracy", "fraction")``, or for a
        lower-is-better evaluator (a perplexity) its own name and ``"number"``."""
        if self.options.get("lower_is_better"):
            return str(self.options.get("evaluate") or "metric"), "number"
        return "accuracy", "fraction"

    def summary(self) -> Table:
        """Before/after table with a fp32/quantized ratio: sizes three ways (MB), latency, accuracy (when
        measured) and each fidelity metric (fp32's own value: 1 for cosine and top-1 agreement, else NaN).

        With latency: its quartiles and number of calls per side, and the ``ratio`` of the median row (the
        speedup) with its per-round quartiles in the ``speedup q1 (x)``/``speedup q3 (x)`` rows, all from one
        interleaved measurement; ``.attrs["note"]`` is :attr:`latency_note`. The ratio is given only where it
        means something (sizes: how many times smaller; latency: the speedup), else NaN.

        A :class:`~nbopt.table.Table`: raw numbers, shown in readable units with blanks for NaN."""
        s = self.size_bytes
        out = {f"size {what} (MB)": (s["fp32"][key] / 1e6, s["quantized"][key] / 1e6)
               for what, key in (("dense in memory", "dense"), ("on disk", "disk"), ("deployable", "deployable"))}
        out["latency (ms, median)"] = (self.latency_ms.get("fp32", math.nan),
                                       self.latency_ms.get("quantized", math.nan))
        spread = []
        if self.latency:
            fp32, quant = self.latency["fp32"], self.latency["quantized"]
            spread = ["latency q1 (ms)", "latency q3 (ms)", "latency calls", "speedup q1 (x)", "speedup q3 (x)"]
            out.update(zip(spread, [(fp32["q1_ms"], quant["q1_ms"]), (fp32["q3_ms"], quant["q3_ms"]),
                                    (fp32["n"], quant["n"]), (math.nan, math.nan), (math.nan, math.nan)]))
        metric, kind = self.metric
        if self.accuracy:
            out[metric] = (self.accuracy["fp32"], self.accuracy["quantized"])
        for k, v in self.fidelity.items():
            if isinstance(v, (int, float)):  # not the "note" a fidelity check may add
                out[f"{k} vs fp32"] = (1.0 if k in ("cosine", "top1_agreement") else math.nan, v)
        df = pd.DataFrame(out, index=["fp32", self.label]).T
        df["ratio"] = [a / b if row in RATIO_ROWS and b else math.nan
                       for row, a, b in zip(df.index, df.iloc[:, 0], df.iloc[:, 1])]
        if spread:  # the ratio of the medians is the speedup; its spread is that of the per-round ratios
            r = self.speedup_spread
            df.loc[spread, "ratio"] = [math.nan, math.nan, math.nan, r.q1 if r else math.nan,
                                       r.q3 if r else math.nan]
        df.attrs["note"] = self.latency_note
        return as_table(df, by_rows=True, kinds={**SUMMARY_KINDS, metric: kind}, max_rows=None)

    def _repr_html_(self) -> str:
        from ..display.results import quant_html  # front-end imported on demand

        return quant_html(self)

    def __repr__(self) -> str:
        from ..display.results import quant_text

        return quant_text(self)
