"""Real weight-only int8/int4 linears for CPU decoding, and torchao's ``quantize_`` configs, on a private copy.

Decoding one token reads every weight once, so on a CPU it is bound by the bytes of weights read: int8 weights
read 4x fewer bytes than fp32, int4 8x. The kernels are PyTorch's own, the ones torchao's CPU paths call:

* ``kernel="aten"`` (default): int8 -> ``aten._weight_int8pack_mm`` (per-output-channel symmetric int8, bf16
  activations); int4 -> ``aten._weight_int4pack_mm_for_cpu`` (the tinygemm layout of torchao's
  ``Int4WeightOnlyQuantizer``; group-wise asymmetric 4-bit, bf16 activations). Both run fast in eager mode.
* ``kernel="torchao"``: ``torchao.quantization.quantize_`` with ``Int8WeightOnlyConfig`` (an ``Int8Tensor``
  weight subclass); measured here it dequantizes on the CPU and is slower than fp32, so it is the reference,
  not the fast path. torchao 0.18's ``Int4WeightOnlyConfig`` needs the ``mslk`` (CUDA) package and does not run
  on a CPU. :func:`dynamic_int8` applies ``Int8DynamicActivationInt8WeightConfig``.

The codes may come from round-to-nearest (``method="rtn"``) or from GPTQ (``method="gptq"``, calibration data
needed, :mod:`nbopt.quantization.gptq`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import InputError, NboptError, require
from ..inputs import check_module
from ..layers import is_linear_like, linear_weight_view, set_submodule
from ..model_state import size_bytes, working_copy
from .observers import QParams, groupwise_qparams, quantize_groupwise

KERNELS = ("aten", "torchao")
METHODS = ("rtn", "gptq")
WEIGHT_BITS = (4, 8)
_INNER_K_TILES = 8


def _bias(layer: nn.Module) -> torch.Tensor | None:
    b = getattr(layer, "bias", None)
    return None if b is None else b.detach().float().clone()


class Int8WeightOnlyLinear(nn.Module):
    """``y = x @ (q * scale).T + b`` with int8 ``q`` (out, in) and one bf16 scale per output channel."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.register_buffer("weight", q.to(torch.int8).contiguous())
        self.register_buffer("scales", scale.reshape(-1).to(torch.bfloat16).contiguous())
        self.register_buffer("bias", bias)

    @classmethod
    def from_weight(cls, w: torch.Tensor, bias: torch.Tensor | None) -> "Int8WeightOnlyLinear":
        """Round-to-nearest symmetric per-channel int8 of a (out, in) float weight."""
        scale = (w.detach().float().abs().amax(1) / 127).clamp_min(torch.finfo(torch.float32).eps)
        q = torch.clamp(torch.round(w.detach().float() / scale[:, None]), -128, 127)
        return cls(q, scale, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, self.in_features).to(torch.bfloat16),
                                               self.weight, self.scales)
        y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


class Int4WeightOnlyLinear(nn.Module):
    """Group-wise 4-bit weights packed two per byte in the tinygemm CPU layout (bf16 scales and zeros).

    The output dimension is padded to a multiple of 16 (the kernel's tile) with zero rows and sliced back.
    """

    def __init__(self, q: torch.Tensor, qp: QParams, bias: torch.Tensor | None) -> None:
        super().__init__()
        n, k = q.shape
        self.out_features, self.in_features, self.group_size = n, k, int(qp.group_size)
        # tinygemm dequantizes (u - 8) * scale + zero with u in [0, 15]; map nbopt's (q - zp) * scale onto it
        u = q - qp.qmin if qp.symmetric else q
        zero = (8 - (qp.zero_point.float() - qp.qmin)) * qp.scale if qp.symmetric else \
            (8 - qp.zero_point.float()) * qp.scale
        pad = -n % 16
        u = torch.cat([u, torch.full((pad, k), 8, dtype=u.dtype)]) if pad else u
        scale = torch.cat([qp.scale, torch.ones(pad, qp.scale.shape[1])]) if pad else qp.scale
        zero = torch.cat([zero, torch.zeros(pad, zero.shape[1])]) if pad else zero
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(u.to(torch.int32).contiguous(), _INNER_K_TILES)
        self.register_buffer("weight", packed)
        self.register_buffer("scales_and_zeros",
                             torch.stack([scale, zero], -1).transpose(0, 1).contiguous().to(torch.bfloat16))
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.reshape(-1, self.in_features).to(torch.bfloat16),
                                                       self.weight, self.group_size, self.scales_and_zeros)
        y = y[:, : self.out_features].to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, int4 "
                f"group_size={self.group_size}")


@dataclass
class WeightOnlyResult:
    """A weight-only quantized copy of a model and what changed.

    ``layers``: quantized layer names; ``skipped``: name -> reason; ``weight_dtypes``: name -> stored dtype of
    the weight (``int8``, or ``uint8`` holding two int4 codes per byte); ``fp32_bytes``/``size_bytes``: the
    in-memory size of parameters and buffers before and after.
    """

    model: nn.Module
    bits: int
    group_size: int | None
    kernel: str
    method: str
    layers: list[str]
    skipped: dict[str, str]
    weight_dtypes: dict[str, str]
    fp32_bytes: int
    size_bytes: int
    notes: list[str] = field(default_factory=list)

    @property
    def compression(self) -> float:
        """fp32 size / quantized size (whole model: embeddings and norms included)."""
        return self.fp32_bytes / max(1, self.size_bytes)

    def __repr__(self) -> str:
        g = f", group_size={self.group_size}" if self.group_size else ""
        return (f"WeightOnlyResult(int{self.bits}{g}, kernel={self.kernel!r}, method={self.method!r}, "
                f"{len(self.layers)} layers, {self.fp32_bytes / 2**20:.2f} MiB -> {self.size_bytes / 2**20:.2f} MiB)")


def _check(bits: int, group_size: int | None, kernel: str, method: str) -> int | None:
    if bits not in WEIGHT_BITS:
        raise InputError(f"bits={bits!r}: weight-only kernels exist for 4 and 8 bits; use bits=4 or bits=8 "
                         f"(other widths: quantize(mode='simulate', weight_bits=...)).")
    if kernel not in KERNELS:
        raise InputError(f"kernel={kernel!r} is not one of {KERNELS}; pick one of those.")
    if method not in METHODS:
        raise InputError(f"method={method!r} is not one of {METHODS}; pick one of those.")
    if bits == 8 and group_size is not None:
        raise InputError("int8 weight-only kernels use one scale per output channel: pass group_size=None with "
                         "bits=8 (group-wise 8-bit: quantize(mode='simulate', granularity='per_group')).")
    if bits == 4:
        group_size = 128 if group_size is None else group_size
        if group_size not in (32, 64, 128, 256):
            raise InputError(f"group_size={group_size!r}: the int4 CPU kernel takes 32, 64, 128 or 256.")
        if kernel == "torchao":
            raise NboptError("torchao 0.18's Int4WeightOnlyConfig needs the CUDA-only mslk package; use "
                             "kernel='aten' (the same int4 CPU kernel torchao's Int4WeightOnlyQuantizer calls).")
    if method == "gptq" and kernel == "torchao":
        raise InputError("method='gptq' builds nbopt's own int8/int4 linears: use kernel='aten'.")
    return group_size


def _reason(name: str, layer: nn.Module, bits: int, group_size: int | None) -> str | None:
    k = linear_weight_view(layer).shape[1]
    if bits == 4 and k % group_size:
        return f"in_features {k} is not a multiple of group_size {group_size}"
    return None


def _targets(model: nn.Module, skip: tuple[str, ...]) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if is_linear_like(m) and n and not any(
        n == s or n.startswith(s + ".") for s in skip)}


def codes(w: torch.Tensor, bits: int, group_size: int | None, *, symmetric: bool | None = None
          ) -> tuple[torch.Tensor, QParams]:
    """Round-to-nearest integer codes and their parameters for a (out, in) weight (what the kernels store)."""
    if bits == 8:
        scale = (w.detach().float().abs().amax(1) / 127).clamp_min(torch.finfo(torch.float32).eps)
        q = torch.clamp(torch.round(w.detach().float() / scale[:, None]), -128, 127).to(torch.int32)
        qp = QParams(scale[:, None], torch.zeros_like(scale[:, None], dtype=torch.int32), 8, True, 0,
                     w.shape[1])
        return q, qp
    qp = groupwise_qparams(w, bits, group_size, symmetric=bool(symmetric))
    return quantize_groupwise(w, qp), qp


def kernel_linear(q: torch.Tensor, qp: QParams, bias: torch.Tensor | None) -> nn.Module:
    """The int8 or int4 kernel module holding codes ``q`` (out, in) with parameters ``qp``."""
    if qp.bits == 8:
        return Int8WeightOnlyLinear(q, qp.scale.reshape(-1), bias)
    return Int4WeightOnlyLinear(q, qp, bias)


def quantize_weights(model: nn.Module, bits: int = 4, group_size: int | None = None, *, kernel: str = "aten",
                     method: str = "rtn", calib: Any = None, symmetric: bool | None = None,
                     skip: tuple[str, ...] = (), progress: bool = True) -> WeightOnlyResult:
    """Weight-only int8 or int4 quantization of every linear layer of a copy of ``model`` (never changed).

    Args:
        bits: 8 (per-channel symmetric) or 4 (group-wise, asymmetric unless ``symmetric=True``).
        group_size: 4-bit only: 32, 64, 128 (default) or 256 input values per scale.
        kernel: "aten" (PyTorch's int8/int4 CPU kernels, fast eager) or "torchao" (``quantize_`` with
            ``Int8WeightOnlyConfig``; 8 bits).
        method: "rtn" (round to nearest) or "gptq" (error-compensating, needs ``calib``: batches of input ids).
        skip: layer names (and everything below them) to keep in float, e.g. ``("lm_head",)``.
    """
    check_module(model)
    group_size = _check(bits, group_size, kernel, method)
    if method == "gptq" and calib is None:
        raise InputError("method='gptq' needs calib: a few batches of inputs (e.g. nbopt.demo.lm.calibration_data()).")
    fp32 = size_bytes(model)
    qmodel = working_copy(model).eval()
    if kernel == "torchao":
        return _torchao(qmodel, fp32, require("torchao.quantization", extra="int8",
                                              purpose="torchao weight-only quantization").Int8WeightOnlyConfig(),
                        bits=8, kernel="torchao", method="rtn", skip=skip)
    targets = _targets(qmodel, skip)
    skipped = {n: r for n, m in targets.items() if (r := _reason(n, m, bits, group_size))}
    todo = {n: m for n, m in targets.items() if n not in skipped}
    if method == "gptq":
        from .gptq import gptq_codes
        found = gptq_codes(qmodel, todo, calib, bits=bits, group_size=group_size if bits == 4 else None,
                           symmetric=bool(symmetric) if bits == 4 else True, progress=progress)
    else:
        found = None
    dtypes = {}
    for name, layer in tqdm(todo.items(), desc=f"int{bits} weights", disable=not progress, leave=False):
        w = linear_weight_view(layer).detach().float()
        q, qp = found[name] if found is not None else codes(w, bits, group_size, symmetric=symmetric)
        module = kernel_linear(q, qp, _bias(layer))
        set_submodule(qmodel, name, module)
        dtypes[name] = "int8" if bits == 8 else "uint8 (two int4 codes per byte)"
    notes = [f"activations run in bfloat16 inside the int{bits} kernels"]
    if skipped:
        notes.append(f"{len(skipped)} linear layers kept in float: " +
                     "; ".join(f"{n}: {r}" for n, r in list(skipped.items())[:4]))
    return WeightOnlyResult(qmodel, bits, group_size if bits == 4 else None, kernel, method, list(todo), skipped,
                            dtypes, fp32, size_bytes(qmodel), notes)


def dynamic_int8(model: nn.Module, *, skip: tuple[str, ...] = ()) -> WeightOnlyResult:
    """torchao's ``Int8DynamicActivationInt8WeightConfig`` (int8 weights, activations quantized per token)."""
    check_module(model)
    ao = require("torchao.quantization", extra="int8", purpose="int8 dynamic-activation quantization")
    fp32 = size_bytes(model)
    return _torchao(working_copy(model).eval(), fp32, ao.Int8DynamicActivationInt8WeightConfig(), bits=8,
                    kernel="torchao", method="dynamic", skip=skip)


def _torchao(qmodel: nn.Module, fp32: int, config: Any, *, bits: int, kernel: str, method: str,
             skip: tuple[str, ...]) -> WeightOnlyResult:
    ao = require("torchao.quantization", extra="int8", purpose="torchao quantization")
    names = set(_targets(qmodel, skip))
    ao.quantize_(qmodel, config, filter_fn=lambda m, fqn: fqn in names and isinstance(m, nn.Linear))
    layers = [n for n in names if type(qmodel.get_submodule(n).weight).__name__ not in ("Parameter", "Tensor")]
    dtypes = {n: f"{type(qmodel.get_submodule(n).weight).__name__}"
                 f"[{_inner_dtype(qmodel.get_submodule(n).weight)}]" for n in layers}
    notes = [f"torchao {type(config).__name__}: a tensor subclass weight; measure its speed on your CPU "
             f"(without VNNI/AMX it may run slower than fp32)"]
    return WeightOnlyResult(qmodel, bits, None, kernel, method, layers, {}, dtypes, fp32, _subclass_bytes(qmodel),
                            notes)


def _inner_dtype(w: torch.Tensor) -> str:
    qdata = getattr(w, "qdata", None)
    return str(qdata.dtype).replace("torch.", "") if isinstance(qdata, torch.Tensor) else str(w.dtype)


def _subclass_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers, counting a tensor subclass by its inner tensors."""
    total, seen = 0, set()
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        inner = getattr(t, "__tensor_flatten__", None)
        if inner is not None and type(t) not in (torch.Tensor, nn.Parameter):
            names = inner()[0]
            total += sum(getattr(t, n).numel() * getattr(t, n).element_size() for n in names)
        else:
            total += t.numel() * t.element_size()
    return total
