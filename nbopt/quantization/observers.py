"""Quantization parameters (scale, zero point) from observed values, and PyTorch's fake-quantize ops.

Observers: ``minmax`` (full range), ``percentile`` (clip outliers), ``mse`` (clip ratio that minimises the
mean squared quantization error). Weights may be per-channel (axis 0); activations are per-tensor.
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

    @property
    def qmin(self) -> int:
        return qrange(self.bits, self.symmetric)[0]

    @property
    def qmax(self) -> int:
        return qrange(self.bits, self.symmetric)[1]

    @property
    def granularity(self) -> str:
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
