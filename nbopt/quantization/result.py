"""QuantResult: the quantized model, its per-layer report, sizes, latency and fidelity vs fp32."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from torch import nn


@dataclass
class QuantResult:
    """What :func:`nbopt.quantize` and :func:`nbopt.qat` return.

    ``real`` is True only when ``model`` runs int8 kernels; a simulated (or QAT) model computes in float32
    and is neither faster nor smaller in memory than fp32 (its ``deployable`` size is what a runtime with
    that bit width would need). ``size_bytes`` (and, when measured, ``latency_ms`` and ``accuracy``) have an
    ``"fp32"`` and a ``"quantized"`` entry; ``fidelity`` compares quantized with fp32 outputs on ``calib``
    (latency and fidelity are empty without calibration data; ``accuracy`` is None without ``evaluate``).
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

    @property
    def speedup(self) -> float:
        """fp32 latency / quantized latency (measured; < 1 means slower)."""
        q = self.latency_ms.get("quantized", math.nan)
        return self.latency_ms.get("fp32", math.nan) / q if q else math.nan

    @property
    def label(self) -> str:
        """How the model computes: real int8 (and on which backend) or simulated."""
        return f"real int8 ({self.backend})" if self.real else "simulated (fake quantization, float32 compute)"

    def summary(self) -> pd.DataFrame:
        """Before/after table with a fp32/quantized ratio: sizes three ways (MB), latency, accuracy (when
        measured) and each fidelity metric (fp32's own value: 1 for cosine and top-1 agreement, else NaN)."""
        s = self.size_bytes
        out = {f"size {what} (MB)": (s["fp32"][key] / 1e6, s["quantized"][key] / 1e6)
               for what, key in (("dense in memory", "dense"), ("on disk", "disk"), ("deployable", "deployable"))}
        out["latency (ms, median)"] = (self.latency_ms.get("fp32", math.nan),
                                       self.latency_ms.get("quantized", math.nan))
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
