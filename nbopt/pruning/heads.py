"""Attention-head pruning: whole heads scored, previewed and removed.

Hugging Face ``transformers`` attention heads and MLP channels (Llama/Mistral/Qwen2, BERT, GPT-2) are handled
by :mod:`.hf` (uniform groups across layers, configs updated); this module dispatches to it.

``nn.MultiheadAttention`` ties its inner width to the embedding width, which the residual stream (and its
LayerNorms) keeps whole, so fewer heads cannot be expressed with it. A head group is rooted at the
attention's ``out_proj``: the preview zeroes the head's q/k/v rows and its ``out_proj`` columns (the head
then adds exactly nothing), and :func:`remove_heads` swaps in :class:`PrunedMultiheadAttention`, the same
computation with ``kept_heads * head_dim`` inner channels.
"""
from __future__ import annotations

import math
import torch
import torch.nn.functional as F
from torch import nn

from . import hf
from .structured import ChannelGroup, Member, pruned_indices


def _supported(m: nn.MultiheadAttention) -> bool:
    return (m._qkv_same_embed_dim and m.bias_k is None and not m.add_zero_attn and m.num_heads > 1)


def head_rows(m: nn.MultiheadAttention, heads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``in_proj_weight`` (q, k, v of each head) and the head each row belongs to."""
    hd, e = m.head_dim, m.embed_dim
    inner = (heads[:, None] * hd + torch.arange(hd)).reshape(-1)
    owner = heads.repeat_interleave(hd)
    return torch.cat([inner + part * e for part in range(3)]), owner.repeat(3)


def head_owned_layers(model: nn.Module) -> set[str]:
    """Layers whose channels only head groups may remove: the q/k/v/o (``c_attn``/``c_proj``) projections and the
    MLP projections of transformers models (generic channel groups rooted at them must be blocked)."""
    return hf.owned_layers(model)


def head_groups(model: nn.Module, roots: set[str], criterion: str = "l1") -> list[ChannelGroup]:
    """One group per supported attention whose ``out_proj`` may be pruned: its heads, least important first;
    plus the uniform head and MLP-channel groups of transformers models (:func:`hf.groups`)."""
    groups: list[ChannelGroup] = list(hf.groups(model, roots, criterion))
    for name, m in model.named_modules():
        root = f"{name}.out_proj" if name else "out_proj"
        if not isinstance(m, nn.MultiheadAttention) or root not in roots or not _supported(m):
            continue
        heads = torch.arange(m.num_heads)
        rows, row_owner = head_rows(m, heads)
        cols, col_owner = rows[: m.embed_dim], row_owner[: m.embed_dim]
        p = 2 if criterion == "l2" else 1  # BatchNorm scale does not apply to heads: L1
        with torch.no_grad():
            w_in = m.in_proj_weight.detach().abs().pow(p).sum(1)
            w_out = m.out_proj.weight.detach().abs().pow(p).sum(0)
            imp = (torch.zeros(m.num_heads).index_add_(0, row_owner, w_in[rows].float())
                   .index_add_(0, col_owner, w_out[cols].float()))
        imp = imp / imp.mean().clamp_min(1e-12)
        order = torch.argsort(imp, stable=True)
        members = [Member(m, True, rows, row_owner), Member(m.out_proj, False, cols, col_owner)]
        groups.append(ChannelGroup(root, m.num_heads, order, imp[order], members, [root], heads=True))
    return groups


class PrunedMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with fewer heads (inner width ``num_heads * head_dim`` < ``embed_dim``)."""

    _qkv_same_embed_dim = False  # tells nn.TransformerEncoderLayer to skip its fused fast path (shapes differ)

    def __init__(self, mha: nn.MultiheadAttention, keep: torch.Tensor) -> None:
        super().__init__()
        self.embed_dim, self.head_dim, self.num_heads = mha.embed_dim, mha.head_dim, len(keep)
        self.batch_first, self.dropout = mha.batch_first, mha.dropout
        self.heads_before, self.heads_kept = mha.num_heads, keep.tolist()
        inner = self.num_heads * self.head_dim
        rows, _ = head_rows(mha, keep)
        bias = mha.in_proj_bias is not None
        self.in_proj = nn.Linear(self.embed_dim, 3 * inner, bias=bias)
        self.out_proj = nn.Linear(inner, self.embed_dim, bias=mha.out_proj.bias is not None)
        with torch.no_grad():
            self.in_proj.weight.copy_(mha.in_proj_weight[rows])
            if bias:
                self.in_proj.bias.copy_(mha.in_proj_bias[rows])
            self.out_proj.weight.copy_(mha.out_proj.weight[:, rows[:inner]])
            if self.out_proj.bias is not None:
                self.out_proj.bias.copy_(mha.out_proj.bias)

    @property
    def in_proj_weight(self) -> torch.Tensor:
        return self.in_proj.weight

    @property
    def in_proj_bias(self) -> torch.Tensor | None:
        return self.in_proj.bias

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Same arguments and outputs as ``nn.MultiheadAttention.forward``."""
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        q, k, v = self._project(query, key, value)
        if attn_mask is not None and attn_mask.dim() == 3:  # (batch * heads, L, S) over the original heads
            attn_mask = attn_mask.unflatten(0, (-1, self.heads_before))[:, self.heads_kept]
        mask = _merge_masks(attn_mask, key_padding_mask, q)
        p = self.dropout if self.training else 0.0
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
            if mask is not None:
                scores = scores + mask
            elif is_causal:
                scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
            weights = F.dropout(scores.softmax(-1), p, self.training)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                                 is_causal=is_causal and mask is None)
            weights = None
        # functional calls, like nn.MultiheadAttention, so the profiler attributes the work to this module
        out = F.linear(out.transpose(1, 2).flatten(2), self.out_proj.weight, self.out_proj.bias)
        if not self.batch_first:
            out = out.transpose(0, 1)
        if weights is not None and average_attn_weights:
            weights = weights.mean(1)
        return out, weights

    def _project(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> list[torch.Tensor]:
        w, b = self.in_proj.weight, self.in_proj.bias
        if query is key and key is value:
            qkv = F.linear(query, w, b).chunk(3, dim=-1)
        else:
            bs = b.chunk(3) if b is not None else (None,) * 3
            qkv = [F.linear(t, wi, bi) for t, wi, bi in zip((query, key, value), w.chunk(3), bs)]
        return [t.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2) for t in qkv]


def _merge_masks(attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None,
                 q: torch.Tensor) -> torch.Tensor | None:
    """One additive float mask of shape broadcastable to (batch, heads, L, S), or None."""
    mask = None
    for m, padding in ((attn_mask, False), (key_padding_mask, True)):
        if m is None:
            continue
        if m.dtype == torch.bool:
            m = torch.zeros(m.shape, dtype=q.dtype, device=q.device).masked_fill(m, float("-inf"))
        m = m.to(q.dtype)
        if padding:  # (batch, S)
            m = m[:, None, None, :]
        mask = m if mask is None else mask + m
    return mask


def remove_heads(model: nn.Module, groups: list[ChannelGroup], kept: dict[str, int]) -> None:
    """Swap each attention whose group keeps fewer heads for a :class:`PrunedMultiheadAttention`, and remove the
    units of transformers groups (:func:`hf.remove`; configs updated), in place."""
    for g in groups:
        if isinstance(g, hf.UniformGroup):  # MLP channels too (heads=False: their kept counts are rounded)
            hf.remove(model, g, kept[g.root])
            continue
        if not g.heads or kept[g.root] >= g.channels:
            continue
        parent_name, _, attr = g.root[: -len(".out_proj")].rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        mha = getattr(parent, attr)
        if isinstance(mha, nn.MultiheadAttention):
            removed = set(pruned_indices(g, kept[g.root]).tolist())
            keep = torch.tensor([h for h in range(g.channels) if h not in removed])
            setattr(parent, attr, PrunedMultiheadAttention(mha, keep).train(mha.training))


def notes(groups: list[ChannelGroup], kept: dict[str, int]) -> list[str]:
    """Caveats of a head-pruned model (e.g. a config that cannot express fewer heads), for a result's notes."""
    return hf.notes(groups, kept)
