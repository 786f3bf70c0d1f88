"""Quantization: simulated any-bit (2-16) fake quantization, per-layer sensitivity, mixed precision,
QAT, and real int8 models (torchao PT2E + torch.compile, or onnxruntime)."""
from __future__ import annotations

from .api import quantize
from .mixed_precision import mixed_precision
from .qat import qat
from .result import QuantResult
from .sensitivity import sensitivity

__all__ = ["quantize", "QuantResult", "sensitivity", "mixed_precision", "qat"]
