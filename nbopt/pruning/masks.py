"""Reversible unstructured L1 masks: magnitudes sorted once, any setting applied from the kept original.

Each prunable weight keeps an untouched clone of its original values and a stable rank of every
element by magnitude; a setting becomes "the k smallest of this layer are zero", so it is exact
(ties broken by position) and reverting to k = 0 copies the original back bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import InputTypeError, NboptError, UnsupportedModelError
from ..inputs import check_finite_weights
from ..layers import WEIGHTED, is_transposed_linear


@dataclass
class LayerMask:
    """One prunable weight: its original values, magnitudes sorted ascending, and the current k."""

    name: str
    module: nn.Module
    original: torch.Tensor
    sorted_abs: torch.Tensor
    order: torch.Tensor  # flat element indices by ascending magnitude (stable), int64 as index ops need
    k: int = 0
    _rank: torch.Tensor | None = field(default=None, repr=False)

    @property
    def numel(self) -> int:
        return self.original.numel()

    @property
    def rank(self) -> torch.Tensor:
        """Position of every element in the magnitude order (for non-contiguous weights; built on first use)."""
        if self._rank is None:
            rank = torch.empty(self.numel, dtype=torch.int32)
            rank[self.order] = torch.arange(self.numel, dtype=torch.int32)
            self._rank = rank.view_as(self.original)
        return self._rank

    def count_below(self, threshold: float) -> int:
        """How many weights have magnitude strictly below ``threshold``."""
        t = torch.tensor([threshold], dtype=self.sorted_abs.dtype)
        return int(torch.searchsorted(self.sorted_abs, t, right=False))

    def apply(self, k: int) -> None:
        """Zero the ``k`` smallest-magnitude weights (k = 0 restores the original bit for bit).

        Only the weights between the previous and the new cut are touched (or, going a long way back, one
        sequential copy of the original), so small slider steps are cheap.
        """
        k, w = int(k), self.module.weight.data
        if k == self.k:
            return
        flat = w.view(-1) if w.is_contiguous() else None
        if flat is None:
            torch.mul(self.original, self.rank >= k, out=w)
        elif k > self.k:
            flat.index_fill_(0, self.order[self.k:k], 0)
        elif 2 * (self.k - k) > k + self.numel // 8:  # a long way back: one sequential copy is cheaper
            flat.copy_(self.original.view(-1))
            flat.index_fill_(0, self.order[:k], 0)
        else:
            idx = self.order[k:self.k]
            flat.index_copy_(0, idx, self.original.view(-1).index_select(0, idx))
        self.k = k


def check_finite_parameters(model: nn.Module) -> None:
    """Raise naming the first parameter or buffer that holds NaN or Inf (magnitudes could not be ranked)."""
    check_finite_weights(model, "its weights cannot be ranked for pruning")


def prunable_layers(model: nn.Module, layers: list[str] | None = None,
                    exclude: list[str] | None = None) -> dict[str, nn.Module]:
    """Conv/Linear modules by qualified name, filtered by ``layers``/``exclude`` (names or prefixes)."""
    found: dict[str, nn.Module] = {}
    seen: set[int] = set()
    for name, m in model.named_modules():
        if (isinstance(m, WEIGHTED) or is_transposed_linear(m)) and isinstance(getattr(m, "weight", None), torch.Tensor) \
                and id(m.weight) not in seen:
            seen.add(id(m.weight))
            found[name] = m
    check_names(model, found, layers, "layers")
    check_names(model, found, exclude, "exclude")
    if layers is not None:
        found = {n: m for n, m in found.items() if any(_matches(n, p) for p in layers)}
    if exclude:
        found = {n: m for n, m in found.items() if not any(_matches(n, p) for p in exclude)}
    if not found and not _all_prunable(model):
        raise UnsupportedModelError(f"no prunable Conv/Linear layer is left to prune: {type(model).__name__} has none "
                                    "(nbopt prunes the weights of nn.Conv1d/2d/3d and nn.Linear layers only).")
    if not found:
        raise NboptError("no prunable Conv/Linear layer is left to prune; check layers=/exclude= "
                         f"(prunable layers: {', '.join(list(_all_prunable(model))[:8])} ...)")
    return found


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.startswith(pattern + ".")


def _all_prunable(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, WEIGHTED) or is_transposed_linear(m)]


def check_names(model: nn.Module, found: dict[str, nn.Module], names: list[str] | None, what: str) -> None:
    """Raise naming the unknown layer and a few valid ones when a name matches no module."""
    if names is None:
        return
    if isinstance(names, str):
        raise InputTypeError(f"{what}= takes a list of layer names, e.g. {what}=[{names!r}]")
    modules = [n for n, _ in model.named_modules() if n]
    for pattern in names:
        if not any(_matches(n, pattern) for n in modules):
            close = [n for n in found if pattern.split(".")[-1] in n][:5] or list(found)[:5]
            raise NboptError(f"{what}= names layer {pattern!r}, which the model does not have; "
                             f"use a qualified module name such as {', '.join(close)}.")


def build_masks(layers: dict[str, nn.Module], progress: bool = False) -> dict[str, LayerMask]:
    """Clone every weight and sort its magnitudes once (the slow part; setting masks is then cheap).

    Layers are sorted concurrently, one per torch thread: a 1-d sort runs on a single core, and torch
    releases the GIL while it sorts.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    def one(item: tuple[str, nn.Module]) -> LayerMask:
        name, m = item
        original = m.weight.detach().clone(memory_format=torch.contiguous_format)
        sorted_abs, order = torch.sort(original.abs().flatten().float(), stable=True)
        return LayerMask(name, m, original, sorted_abs, order)

    items = sorted(layers.items(), key=lambda kv: -kv[1].weight.numel())  # largest first: balanced workers
    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
        done = {mask.name: mask for mask in tqdm(pool.map(one, items), total=len(items),
                                                 desc="sort weight magnitudes", disable=not progress, leave=False)}
    return {name: done[name] for name in layers}


def global_counts(masks: list[LayerMask], k_total: int) -> dict[str, int]:
    """Split ``k_total`` pruned weights across layers by one global magnitude order (exact count).

    The cut t is the k-th smallest magnitude of the pool, found by bisecting float32 bit patterns over the
    layers' sorted magnitudes (no sort of the whole pool), so that #(|w| < t) <= k_total <= #(|w| <= t);
    the remaining ties at t go to layers in order.
    """
    if k_total <= 0:
        return {m.name: 0 for m in masks}
    lo, hi = 0, 0x7F800000  # non-negative float32 bit patterns are ordered like their values
    as_float = lambda bits: torch.tensor([bits], dtype=torch.int32).view(torch.float32)  # noqa: E731
    while lo < hi:  # smallest t with #(|w| <= t) >= k_total
        mid = (lo + hi) // 2
        t = as_float(mid)
        n = sum(int(torch.searchsorted(m.sorted_abs, t, right=True)) for m in masks)
        if n >= k_total:
            hi = mid
        else:
            lo = mid + 1
    return _split_at(masks, k_total, as_float(lo))


def _split_at(masks: list[LayerMask], k_total: int, t: torch.Tensor) -> dict[str, int]:
    counts = {m.name: int(torch.searchsorted(m.sorted_abs, t, right=False)) for m in masks}
    left = k_total - sum(counts.values())
    for m in masks:
        if left <= 0:
            break
        ties = int(torch.searchsorted(m.sorted_abs, t, right=True)) - counts[m.name]
        take = min(ties, left)
        counts[m.name] += take
        left -= take
    return counts
