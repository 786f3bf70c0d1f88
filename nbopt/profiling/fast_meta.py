"""Quick output shapes for ops whose meta kernels are slow Python decompositions.

On meta tensors batch norm and activations such as hardswish go through ``torch._refs`` and cost about 1 ms
per call — more than the real CPU kernel, so counting a MobileNet on meta tensors took longer than running
it. These ops keep their input's shape, dtype and layout, so their outputs are made directly. The checks the
meta kernels make (channel counts, dtypes) are kept; anything unusual goes to the real meta kernel.

Convolution's meta kernel is quick but skips checks the real kernels make (a grouped conv whose filters do not
divide into its groups, a transposed conv's input channels, the bias size): those are made here before the
meta kernel runs, so a meta count fails where a real run would.
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


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


def _check_convolution(args: tuple, kwargs: dict) -> Any:
    """Raise what the CPU/CUDA convolution raises and the meta kernel does not check (grouped channels,
    the bias size), then let the meta kernel make the output (``NotImplemented``)."""
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "transposed", "output_padding", "groups")
    bound = dict(zip(names, args))
    bound.update(kwargs)
    x, w, bias = bound.get("input"), bound.get("weight"), bound.get("bias")
    transposed, groups = bool(bound.get("transposed", False)), bound.get("groups", 1)
    if not (isinstance(x, torch.Tensor) and isinstance(w, torch.Tensor) and isinstance(groups, int)):
        return NotImplemented
    if groups <= 0:
        raise RuntimeError("non-positive groups is not supported")
    if w.dim() < 2 or x.dim() != w.dim():
        return NotImplemented  # the meta kernel checks ranks itself
    if w.shape[0] % groups:
        raise RuntimeError(f"Given groups={groups}, expected weight to be divisible by {groups} at dimension 0, "
                           f"but got weight of size [{_shape(w)}] instead")
    if transposed:
        expected_in, out_channels = w.shape[0], w.shape[1] * groups
    else:
        expected_in, out_channels = w.shape[1] * groups, w.shape[0]
    if x.shape[1] != expected_in:
        what = "transposed=1" if transposed else f"groups={groups}"
        raise RuntimeError(f"Given {what}, weight of size {_shape(w)}, expected input{_shape(x)} to have "
                           f"{expected_in} channels, but got {x.shape[1]} channels instead")
    if isinstance(bias, torch.Tensor) and (bias.dim() != 1 or bias.shape[0] != out_channels):
        what = "transposed=1, " if transposed else ""
        raise RuntimeError(f"Given {what}weight of size {_shape(w)}, expected bias to be 1-dimensional with "
                           f"{out_channels} elements, but got bias of size {_shape(bias)} instead")
    return NotImplemented


_CONVOLUTIONS = (aten.convolution, aten._convolution)
_GROUPED_MMS = tuple(getattr(aten, n) for n in ("_grouped_mm", "_scaled_grouped_mm") if hasattr(aten, n))


def _grouped_mm(args: tuple, kwargs: dict) -> Any:
    """The output of a grouped matrix multiply. Its meta kernel accepts only bf16/fp16 (the CUDA kernel's
    limits), while the CPU kernel also runs float32 mixture-of-experts models."""
    a, b = args[0], args[1]
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        return NotImplemented
    out_dtype = kwargs.get("out_dtype") or (args[-1] if len(args) in (5, 8) and isinstance(args[-1], torch.dtype)
                                             else None) or a.dtype
    if a.dim() == 2 and b.dim() == 3 and a.shape[1] == b.shape[1]:
        shape = (a.shape[0], b.shape[2])
    elif a.dim() == 3 and b.dim() == 3 and a.shape[0] == b.shape[0] and a.shape[2] == b.shape[1]:
        shape = (a.shape[0], a.shape[1], b.shape[2])
    else:
        return NotImplemented
    if a.dtype != b.dtype:
        raise RuntimeError(f"grouped_mm expects both matrices to share one dtype, got {a.dtype} and {b.dtype}")
    return torch.empty(shape, dtype=out_dtype, device=a.device)


def fast_meta(packet: Any) -> Callable[[tuple, dict], Any] | None:
    """A quick ``(args, kwargs) -> output`` for ``packet`` on meta tensors (NotImplemented: use the kernel)."""
    name = packet.__name__
    if packet in _CONVOLUTIONS:
        return _check_convolution
    if packet in _GROUPED_MMS:
        return _grouped_mm
    if packet in _BATCH_NORMS:
        return _batch_norm
    if name in _ACTIVATIONS:
        return _activation
    if name.endswith("_") and name[:-1] in _ACTIVATIONS:
        return _activation_
    return None
