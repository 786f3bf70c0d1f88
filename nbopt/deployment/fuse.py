"""Graph preparation for deployment: fold BatchNorm into the layer before it, drop training-only modules."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from ..inputs import call, channels_last, check_device, check_module
from ..model_state import working_copy
from ..timing import compare

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_TRAINING_ONLY = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


@dataclass
class FuseResult:
    """The fused model and what was done to it."""

    model: nn.Module
    fused: list[tuple[str, str]] = field(default_factory=list)   # (conv/linear, batchnorm) pairs folded
    removed: list[str] = field(default_factory=list)             # training-only modules replaced by Identity
    max_abs_diff: float = float("nan")                            # fused vs original on the example inputs
    method: str = "fx"                                            # how pairs were found: "fx" or "sequential"
    channels_last: bool = False
    latency_ms: dict[str, float] = field(default_factory=dict)   # measured when channels_last was asked

    def __repr__(self) -> str:
        lat = "".join(f", {k}={v:.3f} ms" for k, v in self.latency_ms.items())
        return (f"FuseResult(fused={len(self.fused)} pairs, removed={len(self.removed)}, "
                f"max_abs_diff={self.max_abs_diff:.2e}, method={self.method!r}{lat})")


def _called_once(gm: torch.fx.GraphModule) -> dict[str, int]:
    """How many times each submodule is called in the traced graph."""
    counts: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            counts[node.target] = counts.get(node.target, 0) + 1
    return counts


def pairs_from_graph(model: nn.Module) -> list[tuple[str, str]]:
    """(layer, batchnorm) pairs where the BN consumes only that layer's output, found with torch.fx."""
    gm = torch.fx.symbolic_trace(model)
    mods = dict(model.named_modules())
    counts = _called_once(gm)
    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), _BN):
            continue
        prev = node.args[0] if node.args else None
        if not isinstance(prev, torch.fx.Node) or prev.op != "call_module" or len(prev.users) != 1:
            continue
        if isinstance(mods.get(prev.target), _FOLDABLE) and counts[prev.target] == 1 == counts[node.target]:
            pairs.append((prev.target, node.target))
    return pairs


def pairs_from_sequential(model: nn.Module) -> list[tuple[str, str]]:
    """Fallback when tracing fails: adjacent (layer, batchnorm) children of every nn.Sequential."""
    pairs = []
    for name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        kids = list(seq.named_children())
        for (a, ma), (b, mb) in zip(kids, kids[1:]):
            if isinstance(ma, _FOLDABLE) and isinstance(mb, _BN):
                prefix = f"{name}." if name else ""
                pairs.append((prefix + a, prefix + b))
    return pairs


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def _fold(layer: nn.Module, bn: nn.Module) -> nn.Module | None:
    """The folded layer, or None when shapes do not line up (e.g. BN over another axis)."""
    out = layer.out_channels if isinstance(layer, nn.Conv1d | nn.Conv2d | nn.Conv3d) else layer.out_features
    if bn.num_features != out or bn.running_mean is None or getattr(layer, "transposed", False):
        return None
    if isinstance(layer, nn.Linear):
        return fuse_linear_bn_eval(layer, bn)
    return fuse_conv_bn_eval(layer, bn)


def fold_batchnorm(model: nn.Module) -> tuple[list[tuple[str, str]], str]:
    """Fold BN into the preceding conv/linear of ``model`` in place (``model`` must be a copy in eval mode)."""
    try:
        pairs, method = pairs_from_graph(model), "fx"
    except Exception:  # data-dependent control flow, unsupported Python: use module adjacency
        pairs, method = pairs_from_sequential(model), "sequential"
    done = []
    for layer_name, bn_name in pairs:
        fused = _fold(model.get_submodule(layer_name), model.get_submodule(bn_name))
        if fused is not None:
            _set(model, layer_name, fused)
            _set(model, bn_name, nn.Identity())
            done.append((layer_name, bn_name))
    return done, method


def drop_training_only(model: nn.Module) -> list[str]:
    """Replace Dropout-like modules (identities at inference) with nn.Identity, in place."""
    names = [n for n, m in model.named_modules() if n and isinstance(m, _TRAINING_ONLY)]
    for name in names:
        _set(model, name, nn.Identity())
    return names


def max_abs_diff(a: Any, b: Any) -> float:
    """Largest absolute difference between two (nested) outputs of the same structure."""
    from ..inputs import tensors_in

    ta, tb = list(tensors_in(a)), list(tensors_in(b))
    if len(ta) != len(tb):
        return float("inf")
    diffs = [(x.detach().float() - y.detach().float()).abs().max().item() for x, y in zip(ta, tb) if x.numel()]
    return max(diffs, default=0.0)


def to_channels_last(model: nn.Module, inputs: Any) -> Any:
    """Move ``model`` (in place) and 4-D ``inputs`` to NHWC memory format; returns the converted inputs."""
    model.to(memory_format=torch.channels_last)
    return channels_last(inputs)


def fuse(model: nn.Module, example_inputs: Any, *, channels_last: bool = False,
         measure: bool = True, repeat: int = 20) -> FuseResult:
    """Fold BatchNorm into the preceding conv/linear and remove Dropout, on a copy of ``model``.

    Pairs are found on a ``torch.fx`` trace (a BN is folded only when it is the sole consumer of the
    layer's output); models that cannot be traced fall back to adjacent layers inside ``nn.Sequential``.
    ``channels_last=True`` also converts the copy to NHWC and (``measure=True``) times both layouts,
    interleaved (``result.latency_ms``). Conv+ReLU fusion is left to the runtimes (onnxruntime, XNNPACK) that do it.
    """
    check_module(model)
    check_device(model, example_inputs)
    fused_model = working_copy(model).eval()
    with torch.no_grad():
        reference = call(fused_model, example_inputs)
        pairs, method = fold_batchnorm(fused_model)
        removed = drop_training_only(fused_model)
        result = FuseResult(fused_model, pairs, removed, method=method)
        result.max_abs_diff = max_abs_diff(reference, call(fused_model, example_inputs))
        if channels_last:
            contiguous = working_copy(fused_model) if measure else None
            nhwc_inputs = to_channels_last(fused_model, example_inputs)
            result.channels_last = True
            if measure:
                timings = compare({"contiguous": lambda: call(contiguous, example_inputs),
                                   "channels_last": lambda: call(fused_model, nhwc_inputs)}, repeat=repeat)
                result.latency_ms = {k: t.median_ms for k, t in timings.items()}
    return result
