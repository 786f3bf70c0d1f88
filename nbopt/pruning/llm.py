"""Pruning criteria for the linear layers of language models: magnitude and Wanda, unstructured or N:M.

* ``magnitude``: score ``|W_ij|``.
* ``wanda`` (Sun et al., 2023): score ``|W_ij| * ||X_j||_2``, the weight times the norm of its input feature
  over the calibration tokens; weights are compared within each output row.

Unstructured sparsity prunes the lowest-scoring fraction of each output row; N:M keeps the ``n`` best of every
``m`` consecutive input weights of a row (2:4, 4:8). Dense CPU kernels do not skip zeros: the gain on a CPU is
the effective MACs (and a sparse format's size), not time; :func:`prune_llm` says so in its notes.

Masks are :class:`nbopt.pruning.masks.LayerMask` objects whose ``order`` ranks elements by their place within
their row (or group), so ``mask.apply(k)`` is reversible like the magnitude masks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..inputs import check_module, watch_layer_inputs
from ..layers import is_linear_like, is_transposed_linear, linear_weight_view
from ..model_state import working_copy
from .masks import LayerMask

CRITERIA = ("magnitude", "wanda")
DEFAULT_EXCLUDE = ("lm_head",)


def parse_pattern(pattern: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"2:4"`` -> (2, 4); None stays None."""
    if pattern is None:
        return None
    try:
        n, m = (int(v) for v in (pattern.split(":") if isinstance(pattern, str) else pattern))
    except (ValueError, TypeError):
        raise InputError(f"pattern={pattern!r} is not 'N:M' (e.g. '2:4' or '4:8').") from None
    if not 0 < n < m:
        raise InputError(f"pattern={pattern!r}: need 0 < N < M (e.g. '2:4').")
    return n, m


def linear_layers(model: nn.Module, exclude: tuple[str, ...] = DEFAULT_EXCLUDE) -> dict[str, nn.Module]:
    """Linear-like layers by name, without ``exclude`` (names or prefixes; the LM head by default)."""
    return {n: m for n, m in model.named_modules() if n and is_linear_like(m)
            and not any(n == e or n.startswith(e + ".") for e in exclude)}


def input_norms(model: nn.Module, layers: dict[str, nn.Module], calib: Any, *, progress: bool = True
                ) -> dict[str, torch.Tensor]:
    """``||X_j||_2`` of each input feature ``j`` of each layer over every calibration token (float forward)."""
    sq: dict[str, torch.Tensor | None] = dict.fromkeys(layers)

    def add(name: str, x: torch.Tensor) -> None:
        s = x.float().pow(2).sum(0)
        sq[name] = s if sq[name] is None else sq[name] + s

    watch_layer_inputs(model, layers, calib, add, desc="Wanda calibration", progress=progress)
    return {n: (s if s is not None else torch.zeros(linear_weight_view(layers[n]).shape[1])).sqrt()
            for n, s in sq.items()}


def scores(weight: torch.Tensor, criterion: str, norms: torch.Tensor | None = None) -> torch.Tensor:
    """Importance of each weight of a (out, in) matrix: ``|W|`` or Wanda's ``|W| * ||X_j||``."""
    if criterion not in CRITERIA:
        raise InputError(f"criterion={criterion!r} is not one of {CRITERIA}; pick one of those.")
    s = weight.detach().float().abs()
    if criterion == "wanda":
        if norms is None:
            raise InputError("criterion='wanda' needs calibration data (the input norms of each layer).")
        s = s * norms.float()[None, :]
    return s


def row_order(score: torch.Tensor, pattern: tuple[int, int] | None = None) -> torch.Tensor:
    """Flat indices of a (out, in) score matrix ordered so that cutting the first ``k`` prunes evenly.

    Unstructured: by rank within the row (all rows' lowest first, then their second lowest, ...), so
    ``k = fraction * numel`` prunes the same fraction of every row. N:M: by rank within each group of ``m``,
    so ``k = (m - n) / m * numel`` leaves exactly ``n`` of every ``m``.
    """
    rows, cols = score.shape
    width = pattern[1] if pattern else cols
    if cols % width:
        raise InputError(f"an N:M pattern with M={width} needs in_features divisible by it (got {cols}).")
    grouped = score.reshape(rows, cols // width, width)
    rank = torch.empty_like(grouped, dtype=torch.int64)
    rank.scatter_(2, torch.argsort(grouped, dim=2, stable=True),
                  torch.arange(width).expand_as(grouped).contiguous())
    key = rank.reshape(-1) * score.numel() + torch.arange(score.numel())
    return torch.argsort(key)


def keep_mask(score: torch.Tensor, sparsity: float = 0.5, pattern: str | tuple[int, int] | None = None
              ) -> torch.Tensor:
    """Boolean (out, in) mask of the weights kept: ``sparsity`` of each row pruned, or N:M."""
    nm = parse_pattern(pattern)
    order = row_order(score, nm)
    k = _k(score, sparsity, nm)
    keep = torch.ones(score.numel(), dtype=torch.bool)
    keep[order[:k]] = False
    return keep.reshape(score.shape)


def _k(score: torch.Tensor, sparsity: float, nm: tuple[int, int] | None) -> int:
    rows, cols = score.shape
    if nm:
        return rows * cols // nm[1] * (nm[1] - nm[0])
    if not 0.0 <= sparsity < 1.0:
        raise InputError(f"sparsity={sparsity!r} must be in [0, 1), e.g. 0.5.")
    return rows * int(round(sparsity * cols))


def layer_mask(name: str, layer: nn.Module, score: torch.Tensor, pattern: tuple[int, int] | None
               ) -> LayerMask:
    """A reversible :class:`LayerMask` of ``layer`` ordered by ``score`` (per row, or per N:M group)."""
    order = row_order(score, pattern)
    if is_transposed_linear(layer):  # the weight is stored (in, out): map (out, in) flat indices onto it
        rows, cols = score.shape
        order = (order % cols) * rows + order // cols
    w = layer.weight.detach()
    return LayerMask(name, layer, w.clone(), w.abs().reshape(-1)[order].clone(), order)


@dataclass
class LLMPruneResult:
    """A pruned copy of a language model: masks kept, achieved sparsity, effective MACs saved."""

    model: nn.Module
    criterion: str
    pattern: str | None
    sparsity: float  # of the pruned layers' weights
    masks: dict[str, torch.Tensor]  # name -> boolean keep mask (out, in)
    notes: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        kind = self.pattern or f"{self.sparsity:.0%} unstructured"
        return f"LLMPruneResult({self.criterion}, {kind}, {len(self.masks)} layers)"


def prune_llm(model: nn.Module, calib: Any = None, *, sparsity: float = 0.5,
              pattern: str | tuple[int, int] | None = None, criterion: str = "wanda",
              exclude: tuple[str, ...] = DEFAULT_EXCLUDE, progress: bool = True) -> LLMPruneResult:
    """Zero the least important weights of every linear layer of a copy of ``model`` (never changed).

    Args:
        calib: batches of inputs (input ids); needed for ``criterion="wanda"``.
        sparsity: fraction of each output row pruned (unstructured); ignored with ``pattern``.
        pattern: ``"2:4"``, ``"4:8"`` (N kept of every M consecutive inputs) or None.
        criterion: "wanda" (|W| x input norm) or "magnitude" (|W|).
        exclude: layers kept dense (the LM head by default, as in the Wanda paper).
    """
    check_module(model)
    nm = parse_pattern(pattern)
    if criterion not in CRITERIA:
        raise InputError(f"criterion={criterion!r} is not one of {CRITERIA}; pick one of those.")
    if criterion == "wanda" and calib is None:
        raise InputError("criterion='wanda' needs calib: a few batches of inputs "
                         "(e.g. nbopt.demo.lm.calibration_data()).")
    pruned = working_copy(model).eval()
    layers = linear_layers(pruned, exclude)
    norms = input_norms(pruned, layers, calib, progress=progress) if criterion == "wanda" else {}
    masks, kept, total = {}, 0, 0
    with torch.no_grad():
        for name, layer in layers.items():
            w = linear_weight_view(layer)
            keep = keep_mask(scores(w, criterion, norms.get(name)), sparsity, nm)
            w.mul_(keep.to(w.dtype))  # a view for transposed linears: zeroes the stored weight in place
            masks[name] = keep
            kept += int(keep.sum())
            total += keep.numel()
    notes = ["dense CPU kernels do not skip zeros: the pruned model runs at the dense model's speed; the gain "
             "is the effective MACs and a sparse format's size"]
    return LLMPruneResult(pruned, criterion, f"{nm[0]}:{nm[1]}" if nm else None, 1 - kept / max(1, total),
                          masks, notes)
