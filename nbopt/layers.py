"""What nbopt acts on inside a model: the layer families, submodule replacement and BatchNorm folding.

One definition each, shared by quantization (the layers it quantizes, BN folded first), pruning (the layers it
prunes) and deployment (``fuse``).

Linear-like layers are ``nn.Linear`` and modules that compute a linear map with a differently laid-out weight:
Hugging Face's ``transformers.pytorch_utils.Conv1D`` (GPT-2; ``y = x @ W + b`` with ``W`` of shape (in, out)),
recognised by class name so transformers is never imported here. :func:`linear_weight_view` gives every one's
weight as (out, in) and :func:`out_axis` the weight dimension that holds its output channels.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from .errors import SkippedLayerWarning  # noqa: F401 - re-exported: capabilities warn with it from here

ROOT = "(root)"                               # the name of the model itself in every table and message
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
WEIGHTED = CONVS + (nn.Linear,)              # quantized, pruned, and what BatchNorm folds into
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
TRAINING_ONLY = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
# linear layers with a transposed (in, out) weight, by "module.Class" (a subclass counts too); y = x @ W + b
TRANSPOSED_LINEARS = ("transformers.pytorch_utils.Conv1D",)
LINEAR_LIKE = (nn.Linear,)  # plus every class in TRANSPOSED_LINEARS (checked by name: transformers stays optional)


def _class_names(m: nn.Module) -> set[str]:
    return {f"{c.__module__}.{c.__qualname__}" for c in type(m).__mro__}


def is_transposed_linear(m: nn.Module) -> bool:
    """True for a linear layer whose weight is stored (in, out), e.g. transformers' ``Conv1D``."""
    return bool(_class_names(m) & set(TRANSPOSED_LINEARS)) and isinstance(getattr(m, "weight", None), torch.Tensor)


def is_linear_like(m: nn.Module) -> bool:
    """``nn.Linear`` or a transposed linear (:data:`TRANSPOSED_LINEARS`)."""
    return isinstance(m, LINEAR_LIKE) or is_transposed_linear(m)


def is_quantizable(m: nn.Module) -> bool:
    """A Conv1d/2d/3d or linear-like layer: what simulated quantization and sensitivity round."""
    return isinstance(m, WEIGHTED) or is_transposed_linear(m)


def out_axis(m: nn.Module) -> int:
    """The weight dimension of ``m`` that holds its output channels (1 for transposed linears, else 0)."""
    return 1 if is_transposed_linear(m) else 0


def linear_weight_view(m: nn.Module) -> torch.Tensor:
    """The weight of a linear-like layer as (out, in) (a view for transposed linears)."""
    return m.weight.t() if is_transposed_linear(m) else m.weight


def weighted_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Conv and linear-like layers (``nn.Linear``, transformers' ``Conv1D``) by qualified name."""
    return {name: m for name, m in model.named_modules() if is_quantizable(m)}


def skipped_layers(model: nn.Module) -> dict[str, str]:
    """Modules holding a weight of 2+ dims that is not a quantized layer's weight: name -> type and parameters.

    Embeddings, transposed convolutions, ``nn.MultiheadAttention``'s ``in_proj_weight``, bilinear and custom
    layers: what a weight-rounding capability leaves in float32 and must list rather than skip silently. A
    weight tied to a quantized layer's (GPT-2's ``wte`` and ``lm_head``) is quantized with it and not listed.
    """
    layers = weighted_layers(model)
    done = {id(m.weight) for m in layers.values()}
    out = {}
    for name, m in model.named_modules():
        if name in layers:
            continue
        params = [p for p, t in m.named_parameters(recurse=False) if t.dim() >= 2 and id(t) not in done]
        if params:
            out[name or ROOT] = f"{type(m).__name__}: {', '.join(params)}"
    return out


def warn_skipped(skipped: dict[str, str], what: str, stacklevel: int = 3) -> str:
    """Warn (:class:`SkippedLayerWarning`) that ``what`` left the ``skipped`` layers in float; returns the note
    ("" when none)."""
    if not skipped:
        return ""
    listed = ", ".join(f"{n} ({t})" for n, t in list(skipped.items())[:6]) + (" ..." if len(skipped) > 6 else "")
    note = (f"{what} left {len(skipped)} layer(s) with weights in float32 (not a Conv/Linear-like layer): "
            f"{listed}. They run in float32 in the quantized model too.")
    warnings.warn(f"nbopt: {note}", SkippedLayerWarning, stacklevel=stacklevel)
    return note


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
        if node.op != "call_module" or not isinstance(mods.get(node.target), BATCH_NORMS):
            continue
        prev = node.args[0] if node.args else None
        if not isinstance(prev, torch.fx.Node) or prev.op != "call_module" or len(prev.users) != 1:
            continue
        if isinstance(mods.get(prev.target), WEIGHTED) and counts[prev.target] == 1 == counts[node.target]:
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
            if isinstance(ma, WEIGHTED) and isinstance(mb, BATCH_NORMS):
                prefix = f"{name}." if name else ""
                pairs.append((prefix + a, prefix + b))
    return pairs


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at qualified ``name`` (``layer1.0.bn1``) by ``module``, in place."""
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def _fold(layer: nn.Module, bn: nn.Module) -> nn.Module | None:
    """The folded layer, or None when shapes do not line up (e.g. BN over another axis)."""
    out = layer.out_channels if isinstance(layer, CONVS) else layer.out_features
    if bn.num_features != out or bn.running_mean is None or getattr(layer, "transposed", False):
        return None
    if isinstance(layer, nn.Linear):
        return fuse_linear_bn_eval(layer, bn)
    return fuse_conv_bn_eval(layer, bn)


def fold_batchnorm(model: nn.Module) -> tuple[list[tuple[str, str]], str]:
    """Fold eval-mode BN into the preceding Conv/Linear of ``model``, in place; returns (pairs folded, method).

    ``model`` must be a copy in eval mode. It keeps its class, module names and ``forward`` signature: pairs
    are found on a torch.fx trace (``method="fx"``), or inside ``nn.Sequential`` when the model cannot be
    traced (``"sequential"``), and each folded BN becomes ``nn.Identity``.
    """
    try:
        pairs, method = pairs_from_graph(model), "fx"
    except Exception:  # data-dependent control flow, unsupported Python: use module adjacency
        pairs, method = pairs_from_sequential(model), "sequential"
    done = []
    for layer_name, bn_name in pairs:
        fused = _fold(model.get_submodule(layer_name), model.get_submodule(bn_name))
        if fused is not None:
            set_submodule(model, layer_name, fused)
            set_submodule(model, bn_name, nn.Identity())
            done.append((layer_name, bn_name))
    return done, method


def drop_training_only(model: nn.Module) -> list[str]:
    """Replace Dropout-like modules (identities at inference) with nn.Identity, in place."""
    names = [n for n, m in model.named_modules() if n and isinstance(m, TRAINING_ONLY)]
    for name in names:
        set_submodule(model, name, nn.Identity())
    return names




def eval_folded(model: nn.Module) -> nn.Module:
    """``model`` (a copy) in eval mode with BatchNorm folded in place (:func:`fold_batchnorm`); returns it."""
    model.eval()
    fold_batchnorm(model)
    return model
