"""Quick output shapes for ops whose meta kernels are slow Python decompositions.

On meta tensors batch norm and activations such as hardswish go through ``torch._refs`` and cost about 1 ms
per call — more than the real CPU kernel, so counting a MobileNet on meta tensors took longer than running
it. These ops keep their input's shape, dtype and layout, so their outputs are made directly. The checks the
meta kernels make (channel counts, dtypes) are kept; anything unusual goes to the real meta kernel.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

aten = torch.ops.aten

_ACTIVATIONS = ("relu", "hardswish", "hardsigmoid", "hardtanh", "silu", "gelu", "sigmoid", "tanh", "leaky_relu",
                "elu", "mish")
_BATCH_NORMS = (aten.native_batch_norm, aten._native_batch_norm_legit, aten._native_batch_norm_legit_no_training)


def _dense(t: torch.Tensor) -> bool:
    return t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)


def _only_tensor_is_first(args: tuple, kwargs: dict) -> bool:
    rest = list(args[1:]) + list(kwargs.values())
    return bool(args) and isinstance(args[0], torch.Tensor) and not any(isinstance(a, torch.Tensor) for a in rest)


def _activation(args: tuple, kwargs: dict) -> Any:
    x = args[0]
    if not (_only_tensor_is_first(args, kwargs) and x.is_floating_point() and _dense(x)):
        return NotImplemented
    return torch.empty_like(x)


def _activation_(args: tuple, kwargs: dict) -> Any:
    x = args[0]
    if not (_only_tensor_is_first(args, kwargs) and x.is_floating_point()):
        return NotImplemented
    return x


def _batch_norm(args: tuple, kwargs: dict) -> Any:
    x = args[0] if args else None
    if kwargs or not isinstance(x, torch.Tensor) or x.dim() < 2 or not x.is_floating_point() or not _dense(x):
        return NotImplemented
    channels = x.shape[1]
    for name, t in zip(("weight", "bias", "running_mean", "running_var"), args[1:5]):
        if isinstance(t, torch.Tensor) and t.numel() != channels:
            raise RuntimeError(f"batch norm {name} should contain {channels} elements not {t.numel()}")
    stats_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    stats = torch.empty((channels,), dtype=stats_dtype, device=x.device)
    return torch.empty_like(x), stats, torch.empty_like(stats)


def fast_meta(packet: Any) -> Callable[[tuple, dict], Any] | None:
    """A quick ``(args, kwargs) -> output`` for ``packet`` on meta tensors (NotImplemented: use the kernel)."""
    name = packet.__name__
    if packet in _BATCH_NORMS:
        return _batch_norm
    if name in _ACTIVATIONS:
        return _activation
    if name.endswith("_") and name[:-1] in _ACTIVATIONS:
        return _activation_
    return None
