"""GPTQ (Frantar et al., 2022): quantize a linear layer column by column, compensating each column's rounding error.

A compact reference implementation of the paper's Algorithm 1. torchao 0.18 ships GPTQ only as a prototype
(``torchao.prototype.gptq``) that converts into ``Int4Tensor`` (CUDA-only ``mslk`` kernels) or ``Int8Tensor``, so
its codes cannot feed the CPU int4 kernel; this module returns integer codes and scales that
:mod:`nbopt.quantization.weight_only` packs for PyTorch's int8/int4 CPU kernels.

For each layer: ``H = 2/n * X^T X`` over the calibration inputs (dampened by ``damp * mean(diag H)``), its
inverse's upper Cholesky factor ``U``; then for each column ``i``: quantize ``w_i``, ``err = (w_i - q_i) / U_ii``,
``W[:, i:] -= err * U[i, i:]``. Columns are processed in blocks of ``block_size`` with the rest of the matrix
updated once per block (the paper's lazy batch updates); group-wise scales are fixed when their group starts,
from the error-updated weights. Every layer's Hessian comes from the float model's inputs (one calibration pass).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..inputs import watch_layer_inputs
from ..layers import linear_weight_view
from .observers import QParams, from_range, groupwise_qparams, qrange


def hessian(inputs: torch.Tensor) -> torch.Tensor:
    """``2/n * X^T X`` of inputs (..., in) flattened to (n, in)."""
    x = inputs.detach().reshape(-1, inputs.shape[-1]).double()
    return (2.0 / x.shape[0]) * (x.T @ x)


def _quant(w: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: int, qmax: int):
    q = torch.clamp(torch.round(w / scale) + zp, qmin, qmax)
    return q, (q - zp) * scale


def gptq_quantize(weight: torch.Tensor, H: torch.Tensor, bits: int, group_size: int | None = None, *,
                  symmetric: bool = False, block_size: int = 128, damp: float = 0.01
                  ) -> tuple[torch.Tensor, QParams]:
    """GPTQ codes (int32, (out, in)) and their parameters for a (out, in) ``weight`` with Hessian ``H`` (in, in).

    ``group_size=None``: one scale per output row (fixed from the original weight); else one per group of
    ``group_size`` columns, from the updated weights when the group starts. ``block_size`` must be a multiple of
    ``group_size``.
    """
    W = weight.detach().double().clone()
    rows, cols = W.shape
    H = H.detach().double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=H.dtype)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    qmin, qmax = qrange(bits, symmetric)
    group = group_size or cols
    if block_size % group and group < cols:
        block_size = group
    ngroups = cols // group
    scales = torch.zeros(rows, ngroups, dtype=torch.float64)
    zps = torch.zeros(rows, ngroups, dtype=torch.float64)
    if group_size is None:
        qp = from_range(W.amin(1), W.amax(1), bits, symmetric, 0)
        scales[:, 0], zps[:, 0] = qp.scale.double(), qp.zero_point.double()
    Q = torch.zeros_like(W)
    for b0 in range(0, cols, block_size):
        b1 = min(b0 + block_size, cols)
        W1, E1, U1 = W[:, b0:b1].clone(), torch.zeros(rows, b1 - b0, dtype=W.dtype), U[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = b0 + i
            if group_size is not None and col % group == 0:
                g = W1[:, i: i + group]
                qp = from_range(g.amin(1), g.amax(1), bits, symmetric, 0)
                scales[:, col // group], zps[:, col // group] = qp.scale.double(), qp.zero_point.double()
            s, z = scales[:, col // group], zps[:, col // group]
            q, deq = _quant(W1[:, i], s, z, qmin, qmax)
            Q[:, col] = q
            err = (W1[:, i] - deq) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            E1[:, i] = err
        W[:, b1:] -= E1 @ U[b0:b1, b1:]
    qp = QParams(scales.float(), zps.to(torch.int32), bits, symmetric, 0, group)
    return Q.to(torch.int32), qp


def rtn_quantize(weight: torch.Tensor, bits: int, group_size: int | None = None, *, symmetric: bool = False
                 ) -> tuple[torch.Tensor, QParams]:
    """Round-to-nearest codes with the same grids as :func:`gptq_quantize` (the baseline GPTQ must beat)."""
    w = weight.detach().float()
    qp = groupwise_qparams(w, bits, group_size or w.shape[1], symmetric=symmetric)
    from .observers import quantize_groupwise
    return quantize_groupwise(w, qp), qp


def collect_hessians(model: nn.Module, layers: dict[str, nn.Module], calib: Any, *, progress: bool = True
                     ) -> dict[str, torch.Tensor]:
    """One calibration pass over the float ``model``: the Hessian ``2/n X^T X`` of each layer's input."""
    sums: dict[str, torch.Tensor | None] = dict.fromkeys(layers)
    counts = dict.fromkeys(layers, 0)

    def add(name: str, x: torch.Tensor) -> None:
        x = x.double()
        sums[name] = x.T @ x if sums[name] is None else sums[name] + x.T @ x
        counts[name] += x.shape[0]

    watch_layer_inputs(model, layers, calib, add, desc="GPTQ calibration", progress=progress)
    return {n: (2.0 / max(1, counts[n])) * s if s is not None else None for n, s in sums.items()}


def gptq_codes(model: nn.Module, layers: dict[str, nn.Module], calib: Any, *, bits: int,
               group_size: int | None, symmetric: bool, progress: bool = True
               ) -> dict[str, tuple[torch.Tensor, QParams]]:
    """GPTQ codes of every layer in ``layers`` (Hessians from ``model``'s float forward on ``calib``)."""
    hs = collect_hessians(model, layers, calib, progress=progress)
    out = {}
    for name, layer in tqdm(layers.items(), desc=f"GPTQ int{bits}", disable=not progress, leave=False):
        w = linear_weight_view(layer).detach().float()
        H = hs[name] if hs[name] is not None else torch.eye(w.shape[1], dtype=torch.float64)
        out[name] = gptq_quantize(w, H, bits, group_size, symmetric=symmetric)
    return out
