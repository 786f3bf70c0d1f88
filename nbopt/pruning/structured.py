"""Structured channel pruning over Torch-Pruning's dependency groups.

A *group* is a root layer's output channels plus every tensor slice that must shrink with them
(BatchNorm, the convolutions summed with it in a residual add, concat slices, depthwise convs, the
next layer's input columns, the Linear after a flatten). Channel importance is scored once per
group; a setting zeroes the chosen channels in every member (a reversible preview, see ``preview.py``),
and :func:`remove_channels` physically removes the same channels from a fresh copy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import NboptError, require
from ..inputs import as_args
from ..layers import BATCH_NORMS, CONVS, WEIGHTED

CRITERIA = ("l1", "l2", "bn")


def import_tp() -> Any:
    """torch_pruning, or an error naming the extra to install."""
    return require("torch_pruning", extra="prune", package="Torch-Pruning",
                   purpose="structured pruning (or prune unstructured with structured=False)")


@dataclass
class Member:
    """One tensor slice that follows the group's root channels: ``idx[j]`` moves with root channel ``root[j]``."""

    module: nn.Module
    out: bool
    idx: torch.Tensor
    root: torch.Tensor


@dataclass
class ChannelGroup:
    """A root layer's output channels, their importance order and the slices that depend on them."""

    root: str
    channels: int
    order: torch.Tensor  # channel indices, least important first
    scores: torch.Tensor  # importance normalised to mean 1, in ``order``
    members: list[Member] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    heads: bool = False  # channels are attention heads (kept counts are not rounded)


@dataclass
class Blocked:
    """A root layer whose dependants cannot be followed (left unpruned)."""

    root: str
    reason: str


def build_graph(model: nn.Module, example_inputs: Any) -> Any:
    """Trace ``model`` into a Torch-Pruning DependencyGraph (needs autograd)."""
    tp = import_tp()
    args, kwargs = as_args(example_inputs)
    inputs = kwargs if kwargs else (args[0] if len(args) == 1 else args)
    with torch.enable_grad():
        try:
            return tp.DependencyGraph().build_dependency(model, example_inputs=inputs, verbose=False)
        except Exception as exc:
            raise NboptError(f"could not trace {type(model).__name__} to follow its channel dependencies "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                             "prune it unstructured (structured=False) instead.") from None


def output_layers(dg: Any) -> list[nn.Module]:
    """Conv/Linear layers whose output channels reach the model output (pruning them would change its shape)."""
    found, seen = [], set()
    stack = [n for n in dg.module2node.values() if not n.outputs]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node.module, WEIGHTED):
            found.append(node.module)
        else:
            stack.extend(node.inputs)
    return found


def _blocker(dg: Any, group: Any) -> str | None:
    """The first member we cannot follow (not Conv/Linear/BN nor a traced functional op), else None."""
    for item in group:
        m = item.dep.target.module
        if isinstance(m, CONVS) and m.groups not in (1, m.in_channels) \
                and not dg.is_out_channel_pruning_fn(item.dep.handler):
            return f"{dg._module2name.get(m, m)} (grouped convolution)"
        if isinstance(m, WEIGHTED + BATCH_NORMS):
            continue
        if isinstance(m, nn.Module) and type(m).__module__.startswith("torch_pruning"):
            continue  # traced functional op: add, cat, split, reshape, flatten ...
        name = dg._module2name.get(m) if isinstance(m, nn.Module) else None
        return f"{name or item.dep.target.name} ({type(m).__name__})"
    return None


def _importance(criterion: str) -> Any:
    tp = import_tp()
    if criterion == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if criterion == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    return tp.importance.BNScaleImportance()


def build_groups(model: nn.Module, example_inputs: Any, roots: set[str], criterion: str = "l1"
                 ) -> tuple[list[ChannelGroup], list[Blocked]]:
    """Every prunable channel group whose root is in ``roots``, scored once; and the blocked roots."""
    if criterion not in CRITERIA:
        raise NboptError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    dg = build_graph(model, example_inputs)
    names = {m: n for n, m in model.named_modules()}
    ignored = output_layers(dg) + [m for m, n in names.items() if isinstance(m, WEIGHTED)
                                   and n not in roots]
    scorer = _importance(criterion)
    groups, blocked = [], []
    with torch.no_grad():
        for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=WEIGHTED):
            root = names[group[0].dep.target.module]
            reason = _blocker(dg, group)
            if reason is not None:
                blocked.append(Blocked(root, f"its channels also feed {reason}"))
                continue
            groups.append(_channel_group(dg, group, root, names, scorer))
    return groups, blocked


def _channel_group(dg: Any, group: Any, root: str, names: dict, scorer: Any) -> ChannelGroup:
    imp = scorer(group)
    channels = len(group[0].idxs)
    if imp is None or len(imp) != channels:
        imp = torch.ones(channels)
    imp = imp.detach().float().cpu()
    imp = imp / imp.mean().clamp_min(1e-12)
    order = torch.argsort(imp, stable=True)
    members, member_names = [], []
    for item in group:
        m = item.dep.target.module
        if isinstance(m, WEIGHTED + BATCH_NORMS):
            members.append(Member(m, dg.is_out_channel_pruning_fn(item.dep.handler),
                                  torch.as_tensor(list(item.idxs), dtype=torch.long),
                                  torch.as_tensor(list(item.root_idxs), dtype=torch.long)))
            if names[m] not in member_names:
                member_names.append(names[m])
    return ChannelGroup(root, channels, order, imp[order], members, member_names)


def kept_channels(channels: int, n_prune: int, round_to: int) -> int:
    """Channels left after removing ``n_prune``, rounded up to a multiple of ``round_to`` (at least one)."""
    kept = max(1, channels - int(n_prune))
    if round_to > 1 and channels >= round_to:
        kept = min(channels, max(round_to, math.ceil(kept / round_to) * round_to))
    return kept


def plan(groups: list[ChannelGroup], *, amount: float | None, threshold: float | None, scope: str,
         round_to: int, overrides: dict[str, float]) -> dict[str, int]:
    """Channels to keep per group root for a setting (importance below the cut goes first)."""
    n_prune: dict[str, int] = {}
    if threshold is not None:
        for g in groups:
            n_prune[g.root] = int(torch.searchsorted(g.scores, torch.tensor([threshold]), right=False))
    elif scope == "layer" or not amount:
        n_prune = {g.root: round((amount or 0.0) * g.channels) for g in groups}
    else:
        free = [g for g in groups if g.root not in overrides]
        if free:
            allscores = torch.cat([g.scores for g in free])
            k = round(amount * len(allscores))
            cut = allscores.kthvalue(k).values if k > 0 else torch.tensor(-1.0)
            for g in free:
                n_prune[g.root] = int(torch.searchsorted(g.scores, cut.view(1), right=True))
    for g in groups:
        if g.root in overrides:
            n_prune[g.root] = round(overrides[g.root] * g.channels)
    return {g.root: kept_channels(g.channels, n_prune.get(g.root, 0), 1 if g.heads else round_to) for g in groups}


def pruned_indices(group: ChannelGroup, kept: int) -> torch.Tensor:
    """Root channel indices removed when ``kept`` channels stay (the least important ones)."""
    return group.order[: group.channels - kept].sort().values


def remove_channels(model: nn.Module, example_inputs: Any, groups: list[ChannelGroup],
                    kept: dict[str, int], allowed: set[str]) -> nn.Module:
    """Physically remove the planned channels from ``model`` (in place; pass a copy)."""
    dg = build_graph(model, example_inputs)
    names = {m: n for n, m in model.named_modules()}
    by_root = {g.root: g for g in groups if not g.heads}
    roots = [m for m, n in names.items() if n in by_root and kept[n] < by_root[n].channels]
    ignored = output_layers(dg) + [m for m, n in names.items() if isinstance(m, WEIGHTED)
                                   and n not in allowed]
    for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=WEIGHTED):
        root_module = group[0].dep.target.module
        if root_module not in roots:
            continue
        g = by_root[names[root_module]]
        idxs = pruned_indices(g, kept[g.root]).tolist()
        handler = dg.get_pruner_of_module(root_module).prune_out_channels
        dg.get_pruning_group(root_module, handler, idxs).prune()
    return model
