"""Quantization parameters (scale, zero point) from observed values, and PyTorch's fake-quantize ops.

Observers: ``minmax`` (full range), ``percentile`` (clip outliers), ``mse`` (clip ratio that minimises the
mean squared quantization error). Weights may be per-channel (axis 0) or group-wise (one scale per ``group_size`` consecutive input values of each
output row: :func:`groupwise_qparams`); activations are per-tensor.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

MSE_RATIOS = torch.linspace(0.3, 1.0, 29)


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer range: [-2^(b-1), 2^(b-1)-1] when symmetric, [0, 2^b-1] otherwise."""
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)


@dataclass
class QParams:
    """Scale/zero point of one tensor (scalars for per-tensor, vectors along ``axis`` for per-channel)."""

    scale: torch.Tensor
    zero_point: torch.Tensor
    bits: int
    symmetric: bool
    axis: int | None = None
    group_size: int | None = None  # group-wise: scale/zero_point are (out, in // group_size)

    @property
    def qmin(self) -> int:
        return qrange(self.bits, self.symmetric)[0]

    @property
    def qmax(self) -> int:
        return qrange(self.bits, self.symmetric)[1]

    @property
    def granularity(self) -> str:
        if self.group_size:
            return "per_group"
        return "per_tensor" if self.axis is None else "per_channel"


def from_range(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool, axis: int | None) -> QParams:
    """Scale/zero point covering [lo, hi] (which is widened to contain 0)."""
    qmin, qmax = qrange(bits, symmetric)
    lo, hi = torch.clamp(lo.float(), max=0.0), torch.clamp(hi.float(), min=0.0)
    eps = torch.finfo(torch.float32).eps
    if symmetric:  # scale = amax / qmax keeps +-amax on the grid: error <= scale/2 everywhere in range
        scale = torch.clamp(torch.maximum(-lo, hi) / qmax, min=eps)
        zp = torch.zeros_like(scale, dtype=torch.int32)
    else:
        scale = torch.clamp((hi - lo) / (qmax - qmin), min=eps)
        zp = torch.clamp(torch.round(qmin - lo / scale), qmin, qmax).to(torch.int32)
    return QParams(scale, zp, bits, symmetric, axis)


def fake_quant(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Quantize-dequantize with torch's fake-quantize ops (straight-through gradient inside the range)."""
    if qp.group_size:
        return fake_quant_groupwise(x, qp)
    if qp.axis is None:
        return torch.fake_quantize_per_tensor_affine(x, qp.scale.reshape(()), qp.zero_point.reshape(()),
                                                     qp.qmin, qp.qmax)
    return torch.fake_quantize_per_channel_affine(x, qp.scale, qp.zero_point, qp.axis, qp.qmin, qp.qmax)


def _channel_view(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """(channels, values) view for per-channel statistics, (1, values) for per-tensor."""
    x = x.detach().float()
    return x.reshape(1, -1) if axis is None else x.movedim(axis, 0).reshape(x.shape[axis], -1)


def _percentile_range(flat: torch.Tensor, pct: float) -> tuple[torch.Tensor, torch.Tensor]:
    q = torch.tensor([1 - pct / 100, pct / 100])
    if flat.shape[1] > 2 ** 20:  # torch.quantile's input limit: subsample evenly
        flat = flat[:, :: flat.shape[1] // 2 ** 20 + 1]
    lo_hi = torch.quantile(flat, q, dim=1)
    return lo_hi[0], lo_hi[1]


def _mse_params(flat: torch.Tensor, bits: int, symmetric: bool, axis: int | None) -> QParams:
    """Per row, the clip ratio of the min/max range with the lowest quantization MSE."""
    lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
    best_err, best = None, None
    for r in MSE_RATIOS.tolist():
        qp = from_range(lo * r, hi * r, bits, symmetric, 0)
        err = (fake_quant(flat, qp) - flat).pow(2).mean(dim=1)
        if best_err is None:
            best_err, best = err, qp
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best.scale = torch.where(better, qp.scale, best.scale)
            best.zero_point = torch.where(better, qp.zero_point, best.zero_point)
    return _reshape_axis(best, axis)


def _reshape_axis(qp: QParams, axis: int | None) -> QParams:
    if axis is None:
        qp.scale, qp.zero_point = qp.scale.reshape(()), qp.zero_point.reshape(())
    qp.axis = axis
    return qp


def compute_qparams(x: torch.Tensor, bits: int, *, symmetric: bool = True, axis: int | None = None,
                    observer: str = "minmax", percentile: float = 99.99) -> QParams:
    """Quantization parameters for ``x`` (per-channel along ``axis``, per-tensor when None)."""
    flat = _channel_view(x, axis)
    if observer == "mse":
        return _mse_params(flat, bits, symmetric, axis)
    if observer == "percentile":
        lo, hi = _percentile_range(flat, percentile)
    else:
        lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
    return _reshape_axis(from_range(lo, hi, bits, symmetric, 0), axis)


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when identical)."""
    ref = reference.detach().float()
    noise = (ref - approx.detach().float()).pow(2).sum()
    if float(noise) == 0.0:
        return float("inf")
    return float(10 * torch.log10(ref.pow(2).sum().clamp_min(1e-30) / noise))


def check_group_size(in_features: int, group_size: int) -> None:
    """``group_size`` must be a positive divisor of the input dimension."""
    from ..errors import InputError
    if not isinstance(group_size, int) or group_size < 1 or in_features % group_size:
        raise InputError(f"group_size={group_size!r} does not divide the input dimension {in_features}; use a "
                         f"divisor of it (32, 64 or 128 usually) or group_size=None for per-channel scales.")


def _rows(w: torch.Tensor, axis: int) -> torch.Tensor:
    """A weight as (out, in): transposed for axis 1 (``Conv1D``), conv kernels flattened per output channel."""
    return w.t() if axis == 1 else w.reshape(w.shape[0], -1)


def groupwise_qparams(w: torch.Tensor, bits: int, group_size: int, *, symmetric: bool = False,
                      axis: int = 0) -> QParams:
    """Min/max scale and zero point of each group of ``group_size`` input values of each output channel.

    ``w`` is (out, in) (``axis=0``; conv weights are flattened per output channel) or (in, out) (``axis=1``,
    transformers' ``Conv1D``). ``scale`` and ``zero_point`` have shape (out, in // group_size); symmetric grids
    have zero point 0.
    """
    w = _rows(w.detach().float(), axis)
    check_group_size(w.shape[1], group_size)
    g = w.reshape(w.shape[0], -1, group_size)
    qp = from_range(g.amin(-1), g.amax(-1), bits, symmetric, 0)
    qp.group_size, qp.axis = group_size, axis
    return qp


def _expand(qp: QParams, t: torch.Tensor) -> torch.Tensor:
    return t.repeat_interleave(qp.group_size, dim=-1)


def quantize_groupwise(w: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Integer codes (int32, in [qmin, qmax]) of a (out, in) weight under group-wise ``qp``."""
    scale, zp = _expand(qp, qp.scale), _expand(qp, qp.zero_point)
    return torch.clamp(torch.round(w.detach().float() / scale) + zp, qp.qmin, qp.qmax).to(torch.int32)


def dequantize_groupwise(q: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Float weight of group-wise codes ``q``."""
    return (q.float() - _expand(qp, qp.zero_point)) * _expand(qp, qp.scale)


def fake_quant_groupwise(w: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Quantize-dequantize a weight group-wise in its own layout (straight-through gradient, like torch's ops)."""
    axis = qp.axis or 0
    deq = dequantize_groupwise(quantize_groupwise(_rows(w, axis), qp), qp)
    deq = deq.t() if axis == 1 else deq.reshape(w.shape)
    return w + (deq.to(w.dtype) - w).detach()
