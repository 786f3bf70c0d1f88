"""Deployment: fuse, export (ONNX, TorchScript, ExecuTorch, or a format added with ``register_format``) with
runtime verification, operator compatibility, activation memory and thread scaling (core, no display).
Graph capture and ONNX sessions live in :mod:`nbopt.graph`; the pipeline that orchestrates every
capability is :mod:`nbopt.pipeline`."""
from __future__ import annotations

from .compatibility import TARGETS, compatibility
from .decoder import OnnxDecoder, export_decoder
from .export import FORMATS, ExportOptions, ExportResult, Format, Written, export, register_format
from .fuse import FuseResult, fuse
from .memory import MemoryReport, peak_memory
from .runtime import RuntimeModule
from .threads import threads_sweep

__all__ = ["fuse", "FuseResult", "export", "ExportResult", "FORMATS", "Format", "ExportOptions", "Written",
           "register_format", "compatibility", "TARGETS", "peak_memory", "MemoryReport", "threads_sweep",
           "RuntimeModule", "export_decoder", "OnnxDecoder"]
