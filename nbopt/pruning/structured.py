"""Structured channel pruning over Torch-Pruning's dependency groups.

A *group* is a root layer's output channels plus every tensor slice that must shrink with them
(BatchNorm, the convolutions summed with it in a residual add, concat slices, depthwise convs, the
next layer's input columns, the Linear after a flatten). Channel importance is scored once per
group; a setting zeroes the chosen channels in every member (a reversible preview, see ``preview.py``),
and :func:`remove_channels` physically removes the same channels from a fresh copy.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import NboptError, UnsupportedModelError, describe_exception, require
from ..graph import failing_module
from ..inputs import as_args, tensors_in
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
    ch_groups: int = 1  # grouped convolutions among the members: every conv group keeps as many channels


@dataclass
class Blocked:
    """A root layer whose dependants cannot be followed (left unpruned)."""

    root: str
    reason: str


# Bounds of the channel-group search: Torch-Pruning's group search can grow without bound on some graphs (swin_t's
# shifted windows: 18 GB after 3 minutes; now refused in seconds). Per group: dependencies followed, indices one
# flatten makes and channel indices held; in all: seconds.
MAX_GROUP_STEPS = 10_000  # vit_b_16 needs 503, densenet121 101, resnet50 32
MAX_ITEM_INDICES = 1_000_000  # one layer's channels after a flatten (VGG's classifier takes 25,088)
MAX_GROUP_INDICES = 5_000_000  # vit_b_16 holds about 0.4M
GROUP_SEARCH_SECONDS = 300.0


class GroupSearchTooLarge(Exception):
    """Internal: the group search passed one of its bounds (turned into an UnsupportedModelError)."""


_GRAPH_CLASS: Any = None


def _graph_class() -> Any:
    """Torch-Pruning's DependencyGraph with a bounded group search (same algorithm as 1.6.1, counted)."""
    global _GRAPH_CLASS
    if _GRAPH_CLASS is not None:
        return _GRAPH_CLASS
    tp = import_tp()
    from torch_pruning import _helpers, ops
    from torch_pruning.dependency import index_mapping
    from torch_pruning.dependency.dependency import Dependency
    from torch_pruning.dependency.group import Group
    from torch_pruning.pruner import function

    class BoundedGraph(tp.DependencyGraph):
        deadline = math.inf
        largest = 0  # the most dependencies one group search followed (how close the bound came)

        def get_pruning_group(self, module: nn.Module, pruning_fn: Any, idxs: Any) -> Any:
            if module not in self.module2node:
                raise ValueError(f"Module {module} is not in the dependency graph.")
            if time.monotonic() > self.deadline:
                raise GroupSearchTooLarge(f"the channel-group search took over {GROUP_SEARCH_SECONDS:g} s")
            if isinstance(module, ops.TORCH_CONV) and module.groups == module.out_channels and module.out_channels > 1:
                pruning_fn = function.prune_depthwise_conv_out_channels
            idxs = [_helpers._HybridIndex(idx=i, root_idx=i) for i in idxs]
            index_mapping.update_index_mapping(self)
            group = Group()
            root = self.module2node[module]
            group.add_dep(dep=Dependency(pruning_fn, pruning_fn, source=root, target=root), idxs=idxs)
            visited, stack, steps, held = set(), [(group[0].dep, idxs)], 0, len(idxs)
            while stack:
                dep, idx = stack.pop(-1)
                node, fn = dep.target, dep.handler
                visited.add(node)
                for new_dep in node.dependencies:
                    if not new_dep.is_triggered_by(fn):
                        continue
                    new_idx = idx
                    for mapping in new_dep.index_mapping:
                        if mapping is not None:
                            if _mapped_size(mapping, len(new_idx)) > MAX_ITEM_INDICES:
                                raise GroupSearchTooLarge(
                                    f"a flatten in the channel group of "
                                    f"{self._module2name.get(module, type(module).__name__)!r} maps "
                                    f"{len(new_idx):,} channels to more than {MAX_ITEM_INDICES:,} indices")
                            new_idx = mapping(new_idx)
                    if len(new_idx) == 0 or (new_dep.target in visited and group.has_pruning_op(new_dep, new_idx)):
                        continue
                    group.add_dep(new_dep, new_idx)
                    stack.append((new_dep, new_idx))
                    steps, held = steps + 1, held + len(new_idx)
                    if steps > MAX_GROUP_STEPS or held > MAX_GROUP_INDICES:
                        what = (f"more than {MAX_GROUP_STEPS:,} dependencies" if steps > MAX_GROUP_STEPS
                                else f"more than {MAX_GROUP_INDICES:,} channel indices")
                        raise GroupSearchTooLarge(f"the search for the channel group of "
                                                  f"{self._module2name.get(module, type(module).__name__)!r} "
                                                  f"reached {what}")
                    if steps % 256 == 0 and time.monotonic() > self.deadline:
                        raise GroupSearchTooLarge(f"the channel-group search took over {GROUP_SEARCH_SECONDS:g} s")
            self.largest = max(self.largest, steps)
            merged = Group()
            for dep, idx in group.items:
                if isinstance(dep.target.module, nn.Parameter) and any(dep.target.module is p
                                                                        for p in self.ignored_params):
                    continue
                merged.add_and_merge(dep, idx)
            merged._DG = self
            for i in range(len(merged)):
                hybrid = merged[i].idxs
                item = _helpers.GroupItem(merged[i].dep, _helpers.to_plain_idxs(hybrid))
                item.root_idxs = _helpers.to_root_idxs(hybrid)
                merged[i] = item
            return merged

    _GRAPH_CLASS = BoundedGraph
    return BoundedGraph


def _mapped_size(mapping: Any, n: int) -> int:
    """How many indices Torch-Pruning's index ``mapping`` makes of ``n`` (a flatten multiplies them by its stride)."""
    if type(mapping).__name__ == "_FlattenIndexMapping" and not mapping.reverse:
        return n * int(getattr(mapping, "_stride", 1))
    return n


@contextlib.contextmanager
def grads_enabled(model: nn.Module) -> Iterator[dict[str, bool]]:
    """Let every floating-point parameter of ``model`` (a private copy) require grad for tracing; the saved
    flags (by name) are put back afterwards, also on parameters that pruning replaced."""
    flags = {n: p.requires_grad for n, p in model.named_parameters(remove_duplicate=False)}
    try:
        for p in model.parameters():
            if p.is_floating_point() or p.is_complex():
                p.requires_grad_(True)
        yield flags
    finally:
        for n, p in model.named_parameters(remove_duplicate=False):
            if n in flags:
                p.requires_grad_(flags[n])


def _traceable_inputs(example_inputs: Any) -> tuple[Any, dict[Any, str]]:
    """The inputs as Torch-Pruning takes them, floating tensors replaced by clones of grad-requiring leaves
    (so the traced graph shows where an input meets the model's channels); and those clones' grad_fns -> names."""
    args, kwargs = as_args(example_inputs)
    fns: dict[Any, str] = {}

    def clone(t: Any, name: str) -> Any:
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.device.type == "meta":
            return t
        c = t.detach().clone().requires_grad_(True).clone()  # not a leaf: in-place ops on it stay legal
        fns[c.grad_fn] = name
        return c

    def walk(obj: Any, name: str) -> Any:
        if isinstance(obj, dict):
            return {k: walk(v, f"{name}[{k!r}]" if name else str(k)) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)) and not isinstance(obj, torch.Size):
            out = [walk(v, f"{name}[{i}]" if name else f"input {i}") for i, v in enumerate(obj)]
            return type(obj)(out) if type(obj) in (list, tuple) else obj
        return clone(obj, name)

    if kwargs:
        return walk(kwargs, ""), fns
    args = walk(tuple(args), "")
    return (args[0] if len(args) == 1 else args), fns


def build_graph(model: nn.Module, example_inputs: Any) -> Any:
    """Trace ``model`` (a private copy) into a bounded Torch-Pruning DependencyGraph.

    Tracing needs autograd: it runs with grad enabled and every parameter requiring grad, then puts the
    ``requires_grad`` flags back. The graph also carries ``nbopt_outputs`` (the traced forward's output, to find
    every layer that produces a returned tensor) and ``nbopt_inputs`` (grad_fn of each floating input -> name).
    """
    graph_class = _graph_class()
    with torch.inference_mode(False), torch.enable_grad(), grads_enabled(model):
        inputs, fns = _traceable_inputs(example_inputs)
        captured: list[Any] = []

        def keep(out: Any) -> list[torch.Tensor]:
            captured.append(out)
            return returned_tensors(out)  # every tensor leaf, whatever holds it (Torch-Pruning's own walk
            # stops at objects it does not know, such as a Hugging Face cache)
        try:
            dg = graph_class().build_dependency(model, example_inputs=inputs, output_transform=keep, verbose=False)
        except Exception as exc:
            raise UnsupportedModelError(
                f"could not trace {type(model).__name__} to follow its channel dependencies "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                "prune it unstructured (structured=False) instead.") from None
    dg.nbopt_outputs = captured[0] if captured else None
    dg.nbopt_inputs = fns
    return dg


def output_layers(dg: Any) -> list[nn.Module]:
    """Conv/Linear layers whose output channels reach a tensor the model returns (pruning them would change
    its shape): walked back from every leaf of the output (dict, tuple, list, nested) and every end node."""
    by_fn = {n.grad_fn: n for n in dg.module2node.values() if n.grad_fn is not None}
    stack = [n for n in dg.module2node.values() if not n.outputs]
    for t in returned_tensors(getattr(dg, "nbopt_outputs", None)):
        stack.extend(_nodes_behind(t.grad_fn, by_fn))
    found, seen = [], set()
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


def returned_tensors(out: Any) -> list[torch.Tensor]:
    """Every tensor in a model output: pytree leaves (dicts, tuples, lists, registered output classes) and
    tensors nested in plain containers."""
    found = {id(t): t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)}
    found.update((id(t), t) for t in tensors_in(out))
    return list(found.values())


def _nodes_behind(grad_fn: Any, by_fn: dict) -> list[Any]:
    """The graph nodes nearest to ``grad_fn`` walking back through autograd (the node itself when traced)."""
    found, stack, seen = [], [grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if fn in by_fn:
            found.append(by_fn[fn])
        else:
            stack.extend(f for f, _ in getattr(fn, "next_functions", ()))
    return found


def head_owned(model: nn.Module) -> set[str]:
    """Layers whose output channels belong to attention heads (``heads.head_owned_layers``, when it exists)."""
    from . import heads

    owned = getattr(heads, "head_owned_layers", None)
    return set(owned(model)) if owned is not None else set()


def _is_grouped(m: nn.Module) -> bool:
    """A grouped convolution other than the plain depthwise one (groups == in == out, which Torch-Pruning
    prunes channel by channel)."""
    return isinstance(m, CONVS) and m.groups > 1 and not (m.groups == m.in_channels == m.out_channels)


def _blocker(dg: Any, group: Any, names: dict, owned: set[str]) -> str | None:
    """Why a group cannot be pruned (the first member we cannot follow), else None."""
    inputs = getattr(dg, "nbopt_inputs", {})
    for item in group:
        node, m = item.dep.target, item.dep.target.module
        out = dg.is_out_channel_pruning_fn(item.dep.handler)
        name = names.get(m) if isinstance(m, nn.Module) else None
        if node.grad_fn in inputs:
            return f"its channels meet the input {inputs[node.grad_fn]!r} elementwise (an input cannot shrink)"
        if name is not None and name in owned:
            return f"its channels reach {name}, whose channels are attention heads (pruned as whole heads only)"
        if _is_grouped(m) and not out:
            return (f"its channels also feed {name} (grouped convolution, groups={m.groups}), whose input "
                    "channels cannot shrink consistently per group")
        if isinstance(m, WEIGHTED + BATCH_NORMS):
            continue
        if isinstance(m, nn.Module) and type(m).__module__.startswith("torch_pruning"):
            continue  # traced functional op: add, cat, split, reshape, flatten ...
        return f"its channels also feed {name or item.dep.target.name} ({type(m).__name__})"
    return None


def _conv_groups(group: Any, channels: int, names: dict) -> tuple[int, str | None]:
    """Channel groups the root's channels come in (a grouped conv among the members whose output rows are
    pruned must lose the same number per group), or a reason the group cannot be pruned consistently."""
    counts = set()
    for item in group:
        m = item.dep.target.module
        if not _is_grouped(m):
            continue
        if list(item.idxs) != list(range(m.out_channels)) or list(item.root_idxs) != list(range(channels)):
            return 1, (f"its channels reach {names.get(m, m)} (grouped convolution) through a concat or split, "
                       "so whole conv groups cannot be kept")
        counts.add(m.groups)
    if len(counts) > 1:
        return 1, f"its channels reach grouped convolutions with different groups {sorted(counts)}"
    return (counts.pop() if counts else 1), None


def _importance(criterion: str) -> Any:
    tp = import_tp()
    if criterion == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if criterion == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    return tp.importance.BNScaleImportance()


def _groups(model: nn.Module, dg: Any, roots: set[str]) -> Iterator[Any]:
    """Torch-Pruning's groups rooted at the Conv/Linear layers in ``roots``, skipping every group that reaches a
    returned tensor; the same order for scoring and for removal. The search is bounded (``MAX_GROUP_*``)."""
    names = {m: n for n, m in model.named_modules()}
    roots = set(roots) - head_owned(model)  # head groups own these: never search from them (it may not end)
    ignored = output_layers(dg) + [m for m, n in names.items() if isinstance(m, WEIGHTED) and n not in roots]
    dg.deadline = time.monotonic() + GROUP_SEARCH_SECONDS
    try:
        yield from dg.get_all_groups(ignored_layers=ignored, root_module_types=WEIGHTED)
    except GroupSearchTooLarge as exc:
        raise UnsupportedModelError(
            f"cannot prune {type(model).__name__} structurally: following its channel dependencies grows "
            f"past nbopt's bound ({exc}; the graph has {len(dg.module2node)} nodes). Prune it unstructured "
            "(structured=False), or restrict structured pruning to a few layers (layers=[...]).") from None


def build_groups(model: nn.Module, example_inputs: Any, roots: set[str], criterion: str = "l1"
                 ) -> tuple[list[ChannelGroup], list[Blocked]]:
    """Every prunable channel group whose root is in ``roots``, scored once; and the blocked roots."""
    if criterion not in CRITERIA:
        raise NboptError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    dg = build_graph(model, example_inputs)
    names = {m: n for n, m in model.named_modules()}
    owned = head_owned(model)
    scorer = _importance(criterion)
    groups, blocked = [], []
    with torch.no_grad():
        for group in _groups(model, dg, roots):
            root = names[group[0].dep.target.module]
            reason = _blocker(dg, group, names, owned)
            ch_groups, reason = (1, reason) if reason else _conv_groups(group, len(group[0].idxs), names)
            if reason is not None:
                blocked.append(Blocked(root, reason))
                continue
            groups.append(_channel_group(dg, group, root, names, scorer, ch_groups))
    return groups, blocked


def _channel_group(dg: Any, group: Any, root: str, names: dict, scorer: Any, ch_groups: int = 1) -> ChannelGroup:
    imp = scorer(group)
    channels = len(group[0].idxs)
    if imp is None or len(imp) != channels:
        imp = torch.ones(channels)
    imp = imp.detach().float().cpu()
    imp = imp / imp.mean().clamp_min(1e-12)
    order, scores = _order(imp, ch_groups)
    members, member_names = [], []
    for item in group:
        m = item.dep.target.module
        if isinstance(m, WEIGHTED + BATCH_NORMS):
            members.append(Member(m, dg.is_out_channel_pruning_fn(item.dep.handler),
                                  torch.as_tensor(list(item.idxs), dtype=torch.long),
                                  torch.as_tensor(list(item.root_idxs), dtype=torch.long)))
            if names[m] not in member_names:
                member_names.append(names[m])
    return ChannelGroup(root, channels, order, scores, members, member_names, ch_groups=ch_groups)


def _order(imp: torch.Tensor, ch_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Channels least important first, and their (non-decreasing) scores. With conv groups, the order goes
    rank by rank through the groups (the least important of each group, then the next ...), so removing a
    multiple of ``ch_groups`` channels removes as many from every group; a rank's score is the highest so far."""
    if ch_groups <= 1:
        order = torch.argsort(imp, stable=True)
        return order, imp[order]
    size = len(imp) // ch_groups
    within = torch.argsort(imp.view(ch_groups, size), dim=1, stable=True)
    order = (within + torch.arange(ch_groups)[:, None] * size).T.reshape(-1)
    return order, torch.cummax(imp[order], 0).values


def kept_channels(channels: int, n_prune: int, round_to: int, multiple: int = 1) -> int:
    """Channels left after removing ``n_prune``, rounded up to a multiple of ``round_to`` (at least one), and to
    a multiple of ``multiple`` (conv groups: every group keeps as many)."""
    kept = max(1, channels - int(n_prune))
    step = round_to
    if multiple > 1:
        lcm = round_to * multiple // math.gcd(round_to, multiple)
        step = lcm if lcm <= channels else multiple
    if step > 1 and channels >= step:
        kept = min(channels, max(step, math.ceil(kept / step) * step))
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
    return {g.root: kept_channels(g.channels, n_prune.get(g.root, 0), 1 if g.heads else round_to, g.ch_groups)
            for g in groups}


def pruned_indices(group: ChannelGroup, kept: int) -> torch.Tensor:
    """Root channel indices removed when ``kept`` channels stay (the least important ones)."""
    return group.order[: group.channels - kept].sort().values


def remove_channels(model: nn.Module, example_inputs: Any, groups: list[ChannelGroup],
                    kept: dict[str, int], allowed: set[str]) -> nn.Module:
    """Physically remove the planned channels from ``model`` (in place; pass a copy). ``requires_grad`` of
    every parameter stays as it was (Torch-Pruning's new parameters would require grad)."""
    dg = build_graph(model, example_inputs)
    names = {m: n for n, m in model.named_modules()}
    by_root = {g.root: g for g in groups if not g.heads}
    roots = [m for m, n in names.items() if n in by_root and kept[n] < by_root[n].channels]
    flags = {n: p.requires_grad for n, p in model.named_parameters(remove_duplicate=False)}
    for group in list(_groups(model, dg, allowed)):
        root_module = group[0].dep.target.module
        if root_module not in roots:
            continue
        g = by_root[names[root_module]]
        idxs = pruned_indices(g, kept[g.root]).tolist()
        handler = dg.get_pruner_of_module(root_module).prune_out_channels
        dg.get_pruning_group(root_module, handler, idxs).prune()
    for n, p in model.named_parameters(remove_duplicate=False):
        p.requires_grad_(flags.get(n, p.requires_grad))
    return model


# ---------------------------------------------------------------- the pruned model still runs, with the same outputs

def output_spec(out: Any) -> tuple[Any, list[tuple]]:
    """The structure of a model output: its pytree spec, and per leaf the type (with shape and dtype for a tensor)."""
    leaves, spec = torch.utils._pytree.tree_flatten(out)
    return spec, [(type(v), tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else (type(v),) for v in leaves]


def spec_difference(before: tuple[Any, list[tuple]], after: tuple[Any, list[tuple]]) -> str | None:
    """How two :func:`output_spec` differ, in words, or None when they are equal."""
    (s0, l0), (s1, l1) = before, after
    if s0 != s1:
        return f"its output structure changed from {_short(s0)} to {_short(s1)}"
    for i, (a, b) in enumerate(zip(l0, l1)):
        if a != b:
            what = lambda v: f"{v[0].__name__} {list(v[1])} {str(v[2]).replace('torch.', '')}" if len(v) > 1 \
                else v[0].__name__  # noqa: E731
            return f"output leaf {i} changed from {what(a)} to {what(b)}"
    return None


def _short(spec: Any) -> str:
    text = str(spec).replace("\n", " ")
    return text if len(text) < 160 else text[:157] + "..."


def check_runs(model: nn.Module, example_inputs: Any, reference: tuple[Any, list[tuple]]) -> str | None:
    """Run ``model`` once (no grad) and say how it fails, or how its outputs differ from ``reference``; None if
    it runs and returns the same structure, types, shapes and dtypes."""
    args, kwargs = as_args(example_inputs)
    with torch.no_grad():
        try:
            out = model(*args, **kwargs)
        except (KeyboardInterrupt, NboptError):
            raise
        except Exception as exc:  # noqa: BLE001 - becomes the reason the pruned model is refused
            where = failing_module(exc, model)
            return f"it no longer runs{f' (in {where})' if where else ''}: {describe_exception(exc)}"
    return spec_difference(reference, output_spec(out))
