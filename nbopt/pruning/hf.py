"""Whole attention heads and MLP channels of Hugging Face ``transformers`` models, removed uniformly.

Supported layouts (found by their submodules, so ``transformers`` is never imported here):

- Llama / Mistral / Qwen2 attention (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``, ``num_key_value_groups``):
  a unit is one key/value head TOGETHER with its group of query heads (grouped-query attention);
- BERT attention (``self.query/key/value`` + ``output.dense``): a unit is one head;
- GPT-2 attention (``transformers.pytorch_utils.Conv1D`` ``c_attn``, q/k/v stacked along weight dim 1, and
  ``c_proj``, input along weight dim 0): a unit is one head;
- gated MLPs (``gate_proj``/``up_proj`` rows, ``down_proj`` columns; a layer's ``mlp`` and an MoE layer's
  ``shared_expert``, each its own kind), BERT ``intermediate.dense`` +
  ``output.dense``, GPT-2 ``mlp.c_fc`` + ``mlp.c_proj``: a unit is one intermediate channel.

A unit is scored per layer by the L1 (or L2) norm of its q/k/v rows and output-projection columns (MLP: its
input rows and output columns), normalised to mean 1 within the layer. Configs hold ONE head count and ONE
intermediate size for all layers, so every layer loses the same number of units: one :class:`UniformGroup`
per kind, whose channel ``j`` is "the ``j``-th least important unit of every layer", scored by the mean of
those units' scores. Llama-family attention and every MLP then round-trip through ``save_pretrained`` /
``from_pretrained`` (``config.num_attention_heads``/``num_key_value_heads``/``head_dim``,
``intermediate_size``/``n_inner`` are updated). BERT and GPT-2 derive the head size from
``hidden_size / num_attention_heads``, which fewer heads of the same size cannot express: a model with heads
removed there runs, but a reload from its config needs the original head count (see :func:`notes`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..layers import is_transposed_linear as is_conv1d
from .structured import ChannelGroup, Member

Slices = dict[str, tuple[int, bool, torch.Tensor, torch.Tensor]]  # name -> (weight dim, output side, idx, owner)


def _is_hf(m: nn.Module) -> bool:
    return type(m).__module__.startswith("transformers.")


@dataclass
class Layer:
    """One attention or MLP block: how many units it has and the weight slices each unit owns."""

    kind: str
    name: str  # qualified name of the block
    units: int
    slices: Slices
    fix: Callable[[nn.Module, nn.Module, int], list[Any]]  # (model, block, kept units) -> configs edited


@dataclass
class UniformGroup(ChannelGroup):
    """Units removed in equal number from every layer of one kind; channel ``j`` is each layer's ``j``-th least
    important unit (``ranks[layer]`` lists a layer's units, least important first). Removed by
    :func:`remove` (``heads.remove_heads``), never by Torch-Pruning: its projections are :func:`owned_layers`.
    ``heads`` is True for attention units (kept counts not rounded) and False for MLP channels (rounded)."""

    kind: str = ""
    layers: list[Layer] = field(default_factory=list)
    ranks: list[torch.Tensor] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- layouts
def _rows(units: torch.Tensor, size: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``offset + u*size + t`` of every unit ``u`` and the unit each index belongs to."""
    idx = (offset + units[:, None] * size + torch.arange(size)).reshape(-1)
    return idx, units.repeat_interleave(size)


def _linear(m: Any) -> bool:
    return isinstance(m, nn.Linear)


def _llama_attention(name: str, m: nn.Module) -> Layer | None:
    parts = [getattr(m, p, None) for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
    if not (all(_linear(p) for p in parts) and isinstance(getattr(m, "head_dim", None), int)
            and isinstance(getattr(m, "num_key_value_groups", None), int)):
        return None
    hd, g = m.head_dim, m.num_key_value_groups
    kv = m.k_proj.out_features // hd
    if kv * hd != m.k_proj.out_features or m.q_proj.out_features != kv * g * hd or m.v_proj.out_features != kv * hd:
        return None
    units = torch.arange(kv)
    q, q_owner = _rows(units, g * hd)  # a kv head's query heads are contiguous: heads u*g .. u*g+g-1
    k, k_owner = _rows(units, hd)
    p = f"{name}." if name else ""
    slices = {f"{p}q_proj": (0, True, q, q_owner), f"{p}k_proj": (0, True, k, k_owner),
              f"{p}v_proj": (0, True, k, k_owner), f"{p}o_proj": (1, False, q, q_owner)}
    return Layer("attention", name, kv, slices, _fix_llama_attention)


def _fix_llama_attention(model: nn.Module, m: nn.Module, kept: int) -> list[Any]:
    g = m.num_key_value_groups
    for attr, value in (("num_heads", kept * g), ("num_attention_heads", kept * g), ("num_key_value_heads", kept)):
        if isinstance(getattr(m, attr, None), int):
            setattr(m, attr, value)
    return _set_config(model, m, num_attention_heads=kept * g, num_key_value_heads=kept, head_dim=m.head_dim)


def _bert_attention(name: str, m: nn.Module) -> Layer | None:
    s, out = getattr(m, "self", None), getattr(getattr(m, "output", None), "dense", None)
    if s is None or not _linear(out) or not all(_linear(getattr(s, p, None)) for p in ("query", "key", "value")):
        return None
    hs, heads = getattr(s, "attention_head_size", None), getattr(s, "num_attention_heads", None)
    if not isinstance(hs, int) or not isinstance(heads, int) or s.query.out_features != hs * heads:
        return None
    rows, owner = _rows(torch.arange(heads), hs)
    p = f"{name}." if name else ""
    slices = {f"{p}self.query": (0, True, rows, owner), f"{p}self.key": (0, True, rows, owner),
              f"{p}self.value": (0, True, rows, owner), f"{p}output.dense": (1, False, rows, owner)}
    return Layer("attention", name, heads, slices, _fix_bert_attention)


def _fix_bert_attention(model: nn.Module, m: nn.Module, kept: int) -> list[Any]:
    m.self.num_attention_heads, m.self.all_head_size = kept, kept * m.self.attention_head_size
    return []  # the config cannot express it: see notes()


def _gpt2_attention(name: str, m: nn.Module) -> Layer | None:
    c_attn, c_proj = getattr(m, "c_attn", None), getattr(m, "c_proj", None)
    if not (c_attn is not None and is_conv1d(c_attn) and c_proj is not None and is_conv1d(c_proj)) \
            or hasattr(m, "q_attn") or not all(isinstance(getattr(m, a, None), int)
                                               for a in ("num_heads", "head_dim", "split_size")):
        return None
    hd, heads, split = m.head_dim, m.num_heads, m.split_size
    if split != hd * heads or c_attn.weight.shape[1] != 3 * split or c_proj.weight.shape[0] != split:
        return None
    units = torch.arange(heads)
    parts = [_rows(units, hd, part * split) for part in range(3)]
    rows, owner = torch.cat([r for r, _ in parts]), torch.cat([o for _, o in parts])
    p = f"{name}." if name else ""
    slices = {f"{p}c_attn": (1, True, rows, owner), f"{p}c_proj": (0, False, *_rows(units, hd))}
    return Layer("attention", name, heads, slices, _fix_gpt2_attention)


def _fix_gpt2_attention(model: nn.Module, m: nn.Module, kept: int) -> list[Any]:
    m.num_heads, m.split_size = kept, kept * m.head_dim
    return []  # the config cannot express it: see notes()


def _config(model: nn.Module) -> Any:
    return getattr(model, "config", None)


GATED = {"mlp": "intermediate_size", "shared_expert": "shared_expert_intermediate_size"}  # block name -> config field


def _gated_mlp(name: str, m: nn.Module, config: Any) -> Layer | None:
    parts = [getattr(m, p, None) for p in ("gate_proj", "up_proj", "down_proj")]
    kind = name.rpartition(".")[2]  # a decoder layer's own MLP, or an MoE layer's shared expert
    if not all(_linear(p) for p in parts) or kind not in GATED \
            or getattr(config, GATED[kind], None) != m.gate_proj.out_features:
        return None
    rows, owner = _rows(torch.arange(m.gate_proj.out_features), 1)
    p = f"{name}."
    slices = {f"{p}gate_proj": (0, True, rows, owner), f"{p}up_proj": (0, True, rows, owner),
              f"{p}down_proj": (1, False, rows, owner)}
    return Layer(kind, name, m.gate_proj.out_features, slices, _fix_intermediate(GATED[kind]))


def _bert_mlp(name: str, m: nn.Module, config: Any) -> Layer | None:
    inner = getattr(getattr(m, "intermediate", None), "dense", None)
    out = getattr(getattr(m, "output", None), "dense", None)
    if not (_linear(inner) and _linear(out)) or getattr(config, "intermediate_size", None) != inner.out_features:
        return None
    rows, owner = _rows(torch.arange(inner.out_features), 1)
    p = f"{name}." if name else ""
    slices = {f"{p}intermediate.dense": (0, True, rows, owner), f"{p}output.dense": (1, False, rows, owner)}
    return Layer("mlp", name, inner.out_features, slices, _fix_intermediate("intermediate_size"))


def _gpt2_mlp(name: str, m: nn.Module, config: Any) -> Layer | None:
    c_fc, c_proj = getattr(m, "c_fc", None), getattr(m, "c_proj", None)
    if not (c_fc is not None and is_conv1d(c_fc) and c_proj is not None and is_conv1d(c_proj)):
        return None
    n = c_fc.weight.shape[1]
    if config is None or (getattr(config, "n_inner", None) or 4 * getattr(config, "n_embd", -1)) != n:
        return None
    rows, owner = _rows(torch.arange(n), 1)
    p = f"{name}." if name else ""
    slices = {f"{p}c_fc": (1, True, rows, owner), f"{p}c_proj": (0, False, rows, owner)}
    return Layer("mlp", name, n, slices, _fix_intermediate("n_inner"))


def _fix_intermediate(field_name: str) -> Callable[[nn.Module, nn.Module, int], list[Any]]:
    def fix(model: nn.Module, m: nn.Module, kept: int) -> list[Any]:
        if isinstance(getattr(m, "intermediate_size", None), int):
            m.intermediate_size = kept
        return _set_config(model, m, **{field_name: kept})
    return fix


def _set_config(model: nn.Module, m: nn.Module, **values: int) -> list[Any]:
    """Write ``values`` into the model's config (and the block's, when it holds another object)."""
    configs = {id(c): c for c in (_config(model), getattr(m, "config", None)) if c is not None}
    for c in configs.values():
        for k, v in values.items():
            setattr(c, k, v)
    return list(configs.values())


ATTENTION = (_llama_attention, _bert_attention, _gpt2_attention)
MLP = (_gated_mlp, _bert_mlp, _gpt2_mlp)


def find_layers(model: nn.Module) -> dict[str, list[Layer]]:
    """The supported blocks of a transformers model by kind (``attention``, ``mlp``, ``shared_expert``); empty for
    other models. A block is one kind only (a BERT layer is an MLP block, its ``attention`` an attention block)."""
    found: dict[str, list[Layer]] = {}
    if not any(_is_hf(m) for m in model.modules()):
        return found
    config = _config(model)
    for name, m in model.named_modules():
        if not _is_hf(m):
            continue
        layers = [detect(name, m) for detect in ATTENTION] + [detect(name, m, config) for detect in MLP]
        layer = next((x for x in layers if x is not None), None)
        if layer is not None:
            found.setdefault(layer.kind, []).append(layer)
    return found


def owned_layers(model: nn.Module) -> set[str]:
    """Names of every projection whose channels the head/MLP groups here handle (generic groups must not)."""
    return {n for layers in find_layers(model).values() for layer in layers for n in layer.slices}


# ---------------------------------------------------------------------------------------------- scoring
def _scores(model: nn.Module, layer: Layer, p: int) -> torch.Tensor:
    """Importance of each unit of one block: the p-norm^p of its slices, normalised to mean 1."""
    imp = torch.zeros(layer.units)
    with torch.no_grad():
        for name, (dim, _, idx, owner) in layer.slices.items():
            w = model.get_submodule(name).weight.detach().float()
            per = w.abs().pow(p).sum(1 - dim)
            imp.index_add_(0, owner, per.cpu()[idx])
    return imp / imp.mean().clamp_min(1e-12)


def groups(model: nn.Module, roots: set[str], criterion: str = "l1") -> list[UniformGroup]:
    """One uniform group per kind (attention units, MLP channels) whose projections are all in ``roots``."""
    p = 2 if criterion == "l2" else 1  # BatchNorm scale does not apply to heads: L1
    out = []
    for kind, layers in find_layers(model).items():
        names = [n for layer in layers for n in layer.slices]
        if not layers or len({layer.units for layer in layers}) != 1 or not set(names) <= roots:
            continue
        units = layers[0].units
        scores = [_scores(model, layer, p) for layer in layers]
        ranks = [torch.argsort(s, stable=True) for s in scores]
        mean = torch.stack([s[r] for s, r in zip(scores, ranks)]).mean(0)
        members = []
        for layer, rank in zip(layers, ranks):
            position = torch.empty(units, dtype=torch.long)
            position[rank] = torch.arange(units)  # the rank (group channel) of each unit
            for name, (dim, is_out, idx, owner) in layer.slices.items():
                members.append(Member(model.get_submodule(name), is_out, idx, position[owner]))
        root = next(n for n, (_, is_out, _, _) in layers[0].slices.items() if not is_out)
        order = torch.argsort(mean, stable=True)
        out.append(UniformGroup(root, units, order, mean[order], members, names, heads=kind == "attention",
                                kind=kind, layers=layers, ranks=ranks))
    return out


# ---------------------------------------------------------------------------------------------- removal
def _slice(m: nn.Module, dim: int, is_out: bool, keep: torch.Tensor) -> None:
    """Keep only ``keep`` along weight ``dim`` of a Linear or Conv1D (and the bias on the output side)."""
    w = m.weight
    m.weight = nn.Parameter(w.detach().index_select(dim, keep.to(w.device)).clone(), requires_grad=w.requires_grad)
    b = getattr(m, "bias", None)
    if is_out and b is not None:
        m.bias = nn.Parameter(b.detach().index_select(0, keep.to(b.device)).clone(), requires_grad=b.requires_grad)
    if isinstance(m, nn.Linear):
        m.out_features, m.in_features = m.weight.shape
    elif is_conv1d(m):
        m.nx, m.nf = m.weight.shape


def remove(model: nn.Module, group: UniformGroup, kept: int) -> list[Any]:
    """Remove the ``channels - kept`` least important units of every layer of ``group`` from ``model`` (in
    place; found by name, so ``model`` may be a copy of the one the group was built on). Returns the configs
    edited."""
    n_remove = group.channels - kept
    if n_remove <= 0:
        return []
    configs: dict[int, Any] = {}
    for layer, rank in zip(group.layers, group.ranks):
        gone = torch.zeros(layer.units, dtype=torch.bool)
        gone[rank[:n_remove]] = True
        for name, (dim, is_out, idx, owner) in layer.slices.items():
            m = model.get_submodule(name)
            keep_flag = torch.ones(m.weight.shape[dim], dtype=torch.bool)
            keep_flag[idx[gone[owner]]] = False
            _slice(m, dim, is_out, keep_flag.nonzero().view(-1))
        for c in layer.fix(model, model.get_submodule(layer.name), kept):
            configs[id(c)] = c
    return list(configs.values())


def notes(groups_: list[ChannelGroup], kept: dict[str, int]) -> list[str]:
    """What a reload from the pruned model's config cannot reproduce (BERT/GPT-2 attention heads)."""
    out = []
    for g in groups_:
        if isinstance(g, UniformGroup) and g.kind == "attention" and kept.get(g.root, g.channels) < g.channels:
            fixes = {layer.fix for layer in g.layers}
            if fixes & {_fix_bert_attention, _fix_gpt2_attention}:
                out.append(f"{g.channels - kept[g.root]} of {g.channels} attention heads were removed from every "
                           "layer; this architecture's config derives the head size from hidden_size / "
                           "num_attention_heads, so save_pretrained/from_pretrained cannot rebuild it (keep the "
                           f"pruned model with torch.save, or keep the heads with exclude=[{g.layers[0].name!r}]).")
    return out
