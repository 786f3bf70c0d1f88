"""Reversible structured previews: zero removed channel slices, and between settings touch only what changed.

The preview state is, per module, which output rows (dim 0) and input columns (dim 1) are zero. A new
setting restores the slices that come back (from the saved originals) and zeroes the ones that go, so a
slider step costs the channels it moves, not the whole model.
"""
from __future__ import annotations

import torch
from torch import nn

from ..layers import out_axis
from .structured import ChannelGroup, pruned_indices

Key = tuple[nn.Module, int]  # (module, 0: output rows / 1: input columns)


def removed_slices(groups: list[ChannelGroup], kept: dict[str, int]) -> dict[Key, torch.Tensor]:
    """Boolean flags of the rows/columns removed per ``(module, dim)`` when each group keeps ``kept[root]``."""
    flags: dict[Key, torch.Tensor] = {}
    for g in groups:
        removed = pruned_indices(g, kept[g.root])
        if len(removed) == 0:
            continue
        root_flag = torch.zeros(g.channels, dtype=torch.bool)
        root_flag[removed] = True
        for mem in g.members:
            m = mem.module
            dim = 0 if _is_bn(m) else (out_axis(m) if mem.out else 1 - out_axis(m))
            if dim == 1 and not (isinstance(m, nn.Linear) or getattr(m, "groups", 1) == 1):
                continue  # depthwise/grouped input side: its output rows follow as an ``out`` member
            key = (m, dim)
            if key not in flags:
                flags[key] = torch.zeros(weight(m).shape[dim], dtype=torch.bool)
            flags[key][mem.idx[root_flag[mem.root]]] = True
    return flags


def weight(m: nn.Module) -> torch.Tensor:
    """The weight whose rows/columns a group member slices (q/k/v projections for attention)."""
    return m.in_proj_weight if isinstance(m, nn.MultiheadAttention) else m.weight


def bias(m: nn.Module) -> torch.Tensor | None:
    """The bias that follows the weight's rows."""
    return m.in_proj_bias if isinstance(m, nn.MultiheadAttention) else getattr(m, "bias", None)


def _is_bn(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm)


def _where(flag: torch.Tensor) -> torch.Tensor:
    return flag.nonzero().view(-1)


class ChannelPreview:
    """Zeroed channel slices of a model's weights, updated incrementally and undone bit for bit."""

    def __init__(self, originals: dict[int, torch.Tensor] | None = None) -> None:
        self._flags: dict[Key, torch.Tensor] = {}
        self._orig: dict[int, torch.Tensor] = {}
        self._shared = originals or {}  # id(tensor) -> an untouched copy already kept elsewhere

    @property
    def counts(self) -> dict[Key, int]:
        """How many rows/columns are zero per ``(module, dim)``."""
        return {k: int(f.sum()) for k, f in self._flags.items()}

    def update(self, flags: dict[Key, torch.Tensor]) -> None:
        """Make exactly the slices in ``flags`` zero (everything else original); ``{}`` restores the model."""
        modules = {k[0] for k in self._flags} | {k[0] for k in flags}
        with torch.no_grad():
            for m in modules:
                self._update_module(m, flags)
        self._flags = {k: f for k, f in flags.items() if bool(f.any())}

    def _original(self, t: torch.Tensor) -> torch.Tensor:
        key = id(t)
        if key not in self._orig:
            self._orig[key] = self._shared[key] if key in self._shared else t.detach().clone()
        return self._orig[key]

    def _diff(self, m: nn.Module, dim: int, new: dict[Key, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Indices along ``dim``: removed by the new setting, coming back, newly removed."""
        w = weight(m)
        size = w.shape[dim] if w.dim() > dim else 0
        empty = torch.zeros(size, dtype=torch.bool)
        old_f, new_f = self._flags.get((m, dim), empty), new.get((m, dim), empty)
        return _where(new_f), _where(old_f & ~new_f), _where(new_f & ~old_f)

    def _update_module(self, m: nn.Module, new: dict[Key, torch.Tensor]) -> None:
        rows, rows_back, rows_gone = self._diff(m, 0, new)
        cols, cols_back, cols_gone = self._diff(m, 1, new)
        if not (len(rows_back) or len(rows_gone) or len(cols_back) or len(cols_gone)):
            return
        w, orig = weight(m).data, self._original(weight(m))  # saved before the first change
        b = bias(m)
        orig_b = None if b is None else self._original(b)
        if len(rows_back):  # restored rows keep the columns that stay removed at zero
            w.index_copy_(0, rows_back, orig.index_select(0, rows_back).index_fill_(1, cols, 0)
                          if len(cols) else orig.index_select(0, rows_back))
        if len(cols_back):
            w.index_copy_(1, cols_back, orig.index_select(1, cols_back).index_fill_(0, rows, 0))
        w.index_fill_(0, rows_gone, 0)
        if len(cols_gone):
            w.index_fill_(1, cols_gone, 0)
        if b is not None and orig_b is not None:
            back, gone = (cols_back, cols_gone) if out_axis(m) == 1 else (rows_back, rows_gone)
            b.data.index_copy_(0, back, orig_b.index_select(0, back))
            b.data.index_fill_(0, gone, 0)
