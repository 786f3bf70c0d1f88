"""QuantResult: the quantized model, its per-layer report, sizes, latency and fidelity vs fp32."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from torch import nn


@dataclass
class QuantResult:
    """What :func:`nbopt.quantize` returns.

    ``real`` is True only when ``model`` runs int8 kernels; a simulated model computes in float32 and
    is neither faster nor smaller in memory than fp32 (its ``deployable`` size is what a runtime with
    that bit width would need).
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
    notes: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    partial: bool = False  # True when an interrupted run (e.g. QAT) returned what it had finished

    @property
    def speedup(self) -> float:
        """fp32 latency / quantized latency (measured; < 1 means slower)."""
        q = self.latency_ms.get("quantized", math.nan)
        return self.latency_ms.get("fp32", math.nan) / q if q else math.nan

    @property
    def label(self) -> str:
        return f"real int8 ({self.backend})" if self.real else "simulated (fake quantization, float32 compute)"

    def summary(self) -> pd.DataFrame:
        """Before/after table: sizes three ways, latency, accuracy or fidelity."""
        s = self.size_bytes
        rows = {
            "size dense in memory (MB)": (s["fp32"]["dense"], s["quantized"]["dense"]),
            "size on disk (MB)": (s["fp32"]["disk"], s["quantized"]["disk"]),
            "size deployable (MB)": (s["fp32"]["deployable"], s["quantized"]["deployable"]),
        }
        out = {k: (a / 1e6, b / 1e6) for k, b_a in rows.items() for a, b in [b_a]}
        out["latency (ms, median)"] = (self.latency_ms.get("fp32", math.nan), self.latency_ms.get("quantized", math.nan))
        if self.accuracy:
            out["accuracy"] = (self.accuracy["fp32"], self.accuracy["quantized"])
        for k, v in self.fidelity.items():
            out[f"{k} vs fp32"] = (1.0 if k in ("cosine", "top1_agreement") else math.nan, v)
        df = pd.DataFrame(out, index=["fp32", self.label]).T
        df["ratio"] = df.iloc[:, 0] / df.iloc[:, 1]
        return df

    def __repr__(self) -> str:
        acc = (f", accuracy {self.accuracy['fp32']:.4f} -> {self.accuracy['quantized']:.4f}" if self.accuracy else "")
        fid = ", ".join(f"{k}={v:.4g}" for k, v in self.fidelity.items())
        label = self.label + (", PARTIAL (interrupted)" if self.partial else "")
        return (f"QuantResult({label}, {len(self.report)} layers, "
                f"deployable {self.size_bytes['fp32']['deployable'] / 1e6:.3f} MB -> "
                f"{self.size_bytes['quantized']['deployable'] / 1e6:.3f} MB, speedup {self.speedup:.2f}x{acc}; {fid})")
