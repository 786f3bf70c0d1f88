"""nbopt: find and remove the compute bottlenecks of PyTorch models without leaving the notebook.

Public API (imported lazily so ``import nbopt`` stays fast)::

    nbopt.profile(model, inputs)        per-layer params, MACs, FLOPs, latency, memory -> Profile
    nbopt.compare({...}, inputs)        several variants side by side -> DataFrame
    nbopt.quantize / sensitivity / mixed_precision / qat / QuantTuner     quantization
    nbopt.Pruner / prune / finetune     pruning
    nbopt.fuse / export / compatibility / peak_memory / threads_sweep      deployment
    nbopt.export_decoder                a causal LM's generation as one onnxruntime program
    nbopt.optimize                      the whole pipeline, measured step by step
    nbopt.distill                       knowledge distillation (teacher -> student) on a copy
    nbopt.search / SearchPanel          accuracy-budgeted compression search (Optuna; local or dask)

The layout of the package is described in ``docs/architecture.md``.

``%load_ext nbopt`` registers the IPython magics (``%%profile_flops`` ...).
"""
from __future__ import annotations

import importlib
import logging
from typing import Any

__version__ = "0.1.0"


class _TorchaoEnumNotice(logging.Filter):
    """Drops one known deprecation notice: torchao 0.18 registers its enums as pytree constants, which torch 2.14
    logs at WARNING on ``torch.utils._pytree`` ("... is an Enum subclass and is now natively supported by
    torch.compile ...") whenever torchao is imported, e.g. by ``import transformers``. Nothing else is touched."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is an Enum subclass and is now natively supported" not in record.getMessage()


logging.getLogger("torch.utils._pytree").addFilter(_TorchaoEnumNotice())

# public name -> module that defines it (relative to this package)
_EXPORTS: dict[str, str] = {
    "profile": ".profiling",
    "compare": ".profiling",
    "Profile": ".profiling",
    "register_formula": ".profiling",
    "clever_format": ".profiling.thop_engine",
    "NboptError": ".errors",
    "InputError": ".errors",
    "ForwardError": ".errors",
    "UnsupportedModelError": ".errors",
    "MissingDependencyError": ".errors",
    "PartialResultWarning": ".errors",
    "NoisyTimingWarning": ".errors",
    "SkippedLayerWarning": ".errors",
    "cpu_info": ".cpu",
    "Timing": ".timing",
    "quantize": ".quantization",
    "QuantResult": ".quantization",
    "sensitivity": ".quantization",
    "mixed_precision": ".quantization",
    "qat": ".quantization",
    "QuantTuner": ".quantization.tuner",
    "ProfilePanel": ".panels",
    "PruningPanel": ".panels",
    "QuantizationPanel": ".panels",
    "fuse": ".deployment",
    "export": ".deployment",
    "export_decoder": ".deployment",
    "ExportResult": ".deployment",
    "register_format": ".deployment",
    "compatibility": ".deployment",
    "peak_memory": ".deployment",
    "threads_sweep": ".deployment",
    "optimize": ".pipeline",
    "Pruner": ".pruning",
    "prune": ".pruning",
    "PruneResult": ".pruning",
    "finetune": ".pruning",
    "distill": ".distillation",
    "DistillResult": ".distillation",
    "search": ".autosearch",
    "SearchResult": ".autosearch",
    "SearchSpace": ".autosearch",
    "SearchPanel": ".panels.search",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        if name == "demo":
            return importlib.import_module(".demo", __name__)
        raise AttributeError(f"module 'nbopt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS) + ["demo"])


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nbopt``: register the magics (IPython is imported only here)."""
    from .magics import load_ipython_extension as _load

    _load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext nbopt``: remove the magics again."""
    from .magics import unload_ipython_extension as _unload

    _unload(ipython)


__all__ = sorted(_EXPORTS) + ["demo", "load_ipython_extension", "unload_ipython_extension"]
