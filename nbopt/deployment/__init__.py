"""Deployment: fuse, export (ONNX, TorchScript, ExecuTorch) with runtime verification, operator
compatibility, activation memory and thread scaling (core, no display). The pipeline that
orchestrates every capability is :mod:`nbopt.pipeline`."""
from __future__ import annotations

from .compatibility import TARGETS, compatibility
from .export import FORMATS, ExportResult, export
from .fuse import FuseResult, fuse
from .memory import MemoryReport, peak_memory
from .runtime import RuntimeModule
from .threads import threads_sweep

__all__ = ["fuse", "FuseResult", "export", "ExportResult", "FORMATS", "compatibility", "TARGETS", "peak_memory",
           "MemoryReport", "threads_sweep", "RuntimeModule"]
