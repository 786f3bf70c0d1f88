"""The built-in formulas: how much work each ATen op does, read from its arguments by schema name.

Conventions (defined once, used everywhere):

* **MACs** — multiply-accumulates of the GEMM-like ops only: convolution (every kind), mm/addmm/bmm
  (so ``F.linear``, ``matmul`` and ``einsum``), attention (``Q @ K^T`` and ``P @ V``, also in the fused
  CPU kernels) and RNN/LSTM/GRU cells. This is torchvision's published "GMACs" convention.
* **FLOPs** — every floating-point operation: ``2 * MACs`` for the GEMM-like ops plus the elementwise,
  normalization, pooling, softmax, reduction and interpolation work (formulas below).
* **Bias adds are never counted** — not in convolution, linear (``addmm``, or a matrix product followed by
  the add of a vector along its last dimension, see :mod:`..counter`), nor in the projections of the fused
  attention and encoder-layer kernels, as in ``torch.utils.flop_counter`` and torchvision.
* **Attention counts the full score matrix** — ``Q @ K^T`` and ``P @ V`` over all ``L x S`` positions for every
  query head (grouped-query attention included), also when causal or windowed, as PyTorch's kernels and
  ``torch.utils.flop_counter`` do; each kernel's tensor layout ((B, H, S, D) or (B, S, H, D)) is fixed by the op.
* **Fused kernels count what their reference decomposition counts** — a fused attention kernel counts the
  ops of PyTorch's math reference (scaling, ``Q @ K^T``, mask add, softmax, ``P @ V``), so a meta run, which
  decomposes, and a real run, which calls the kernel, give the same FLOPs.

Every formula is ``fn(*, out, **arguments) -> Cost`` (``self`` arrives as ``input``; see
:mod:`.registry`). Matrix-multiply and convolution counts follow ``torch.utils.flop_counter``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import torch
from torch.utils import flop_counter as _fc

from .registry import Cost

aten = torch.ops.aten
NamedFormula = Callable[..., Cost]

BUILTIN: dict[Any, NamedFormula] = {}      # OpOverloadPacket -> fn(*, out, **arguments) -> Cost


def _formula(*ops: Any) -> Callable[[NamedFormula], NamedFormula]:
    def deco(fn: NamedFormula) -> NamedFormula:
        for op in ops:
            BUILTIN[op] = fn
        return fn
    return deco


def _numel(t: Any) -> int:
    return t.numel() if isinstance(t, torch.Tensor) else 0


def _is_fake(t: torch.Tensor) -> bool:
    """A fake tensor (``torch._subclasses.FakeTensor``): shapes only, like a meta tensor."""
    return type(t).__name__ == "FakeTensor"


class _Shape(NamedTuple):
    """A shape standing in for a tensor in the attention formulas (which read ``.shape`` only)."""

    shape: torch.Size


def _first(out: Any) -> Any:
    return out[0] if isinstance(out, (tuple, list)) else out


# --- GEMM-like: PyTorch's flop_counter conventions, read straight off the shapes (FLOPs = 2 * MACs) ------
def _gemm(macs: int) -> Cost:
    return Cost(macs, 2 * macs)


@_formula(aten.mm)
def _mm(*, input: torch.Tensor, mat2: torch.Tensor, **_: Any) -> Cost:
    (m, k), n = input.shape, mat2.shape[1]
    return _gemm(m * k * n)


@_formula(*(getattr(aten, n) for n in ("_scaled_mm", "_scaled_mm_v2") if hasattr(aten, n)))
def _scaled_mm(*, input: torch.Tensor, mat2: torch.Tensor, **_: Any) -> Cost:
    """float8 (scaled) matrix multiply: ``m * k * n`` MACs like ``mm``; scaling and bias are not counted."""
    (m, k), n = input.shape, mat2.shape[1]
    return _gemm(m * k * n)


def _used(offs: Any, full: int) -> int:
    """How many rows (or columns) the groups of ``offs`` cover: its last offset on real tensors; on meta
    tensors (no values) all ``full`` of them, exact when the groups cover the whole input (MoE routing)."""
    if isinstance(offs, torch.Tensor) and offs.numel() and offs.device.type != "meta" and not _is_fake(offs):
        return int(offs[-1])
    return full


@_formula(*(getattr(aten, n) for n in ("_grouped_mm", "_scaled_grouped_mm") if hasattr(aten, n)))
def _grouped_mm(*, input: torch.Tensor, mat2: torch.Tensor, offs: Any = None, **_: Any) -> Cost:
    """Grouped matrix multiply (transformers' mixture-of-experts kernel): the sum over groups of each group's
    ``m * k * n``. ``offs`` holds the groups' cumulative ends (``offs[g] - offs[g-1]`` tokens for expert ``g``).

    * 2-D x 3-D (MoE experts: tokens sorted by expert, one weight per expert): ``sum_g rows_g * K * N`` =
      ``offs[-1] * K * N``; on meta tensors ``offs`` has no values and all ``M`` rows count, which is exact
      when every routed token is in a group (``sum_g rows_g = M``, as transformers' routing does).
    * 3-D x 2-D: groups split the columns of ``mat2``; 2-D x 2-D: groups split ``K`` (weight gradients);
      3-D x 3-D: a batch of ``G`` products. Scaling (``_scaled_grouped_mm``) and bias are not counted.
    """
    a, b = input.shape, mat2.shape
    if len(a) == 2 and len(b) == 3:
        return _gemm(_used(offs, a[0]) * a[1] * b[-1])
    if len(a) == 3 and len(b) == 2:
        return _gemm(a[-2] * a[-1] * _used(offs, b[-1]))
    if len(a) == 2 and len(b) == 2:
        return _gemm(a[0] * _used(offs, a[1]) * b[-1])
    return _gemm(a[0] * a[-2] * a[-1] * b[-1])


@_formula(aten.addmm)
def _addmm(*, mat1: torch.Tensor, mat2: torch.Tensor, **_: Any) -> Cost:
    (m, k), n = mat1.shape, mat2.shape[1]
    return _gemm(m * k * n)


@_formula(aten.bmm)
def _bmm(*, input: torch.Tensor, mat2: torch.Tensor, **_: Any) -> Cost:
    (b, m, k), n = input.shape, mat2.shape[2]
    return _gemm(b * m * k * n)


@_formula(aten.baddbmm)
def _baddbmm(*, batch1: torch.Tensor, batch2: torch.Tensor, **_: Any) -> Cost:
    (b, m, k), n = batch1.shape, batch2.shape[2]
    return _gemm(b * m * k * n)


@_formula(aten.convolution, aten._convolution)
def _conv(*, input: torch.Tensor, weight: torch.Tensor, transposed: bool, out: torch.Tensor, **_: Any) -> Cost:
    """Every kind (grouped, dilated, strided, transposed): torch.utils.flop_counter's own count."""
    return _gemm(_fc.conv_flop_count(input.shape, weight.shape, out.shape, transposed=bool(transposed)) // 2)


def _attention_macs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> int:
    """``Q @ K^T`` plus ``P @ V`` for (..., Hq, L, E) queries, (..., Hk, S, E) keys, (..., Hk, S, Ev) values.

    The batch (and query heads) come from the query: with grouped-query attention (``Hq = Hk * groups``, with
    or without ``enable_gqa``) every query head multiplies the key/value head it shares, so the count is
    ``B * Hq * L * S * (E + Ev)`` whatever ``Hk`` is (as ``torch.utils.flop_counter.sdpa_flop_count``).
    """
    batch = math.prod(q.shape[:-2])
    lq, e = q.shape[-2], q.shape[-1]
    s, ev = k.shape[-2], v.shape[-1]
    return batch * lq * s * (e + ev)


def _attention_cost(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scaled_keys: bool = True,
                    masked: bool = False, causal: bool = False) -> Cost:
    """Attention as PyTorch's math reference computes it (``_scaled_dot_product_attention_math``), on
    (B, H, L, E) tensors.

    ``Q @ K^T`` and ``P @ V`` (2 FLOPs per MAC); one multiply per element of Q (and of K, per query head,
    when ``scaled_keys``: the reference scales both by ``sqrt(scale)``); the mask add (``masked``) or the causal
    mask (an (L, S) select, then its add); softmax (3 per score).

    **Masks never reduce the count**: causal attention, sliding windows and any other mask count the full
    ``L x S`` products, which is what the math reference and PyTorch's CPU kernels compute (and what
    ``torch.utils.flop_counter`` counts); kernels that skip fully masked blocks do less work than this.
    """
    macs = _attention_macs(q, k, v)
    heads = math.prod(q.shape[:-2])
    lq, e, s = q.shape[-2], q.shape[-1], k.shape[-2]
    scores = heads * lq * s
    scale = heads * lq * e + (heads * s * k.shape[-1] if scaled_keys else 0)
    mask = scores if (masked or causal) else 0
    causal_mask = lq * s if causal else 0
    return Cost(macs, 2 * macs + scale + mask + causal_mask + 3 * scores)


def _has_mask(rest: dict) -> bool:
    return any(isinstance(rest.get(n), torch.Tensor) for n in ("attn_mask", "attn_bias", "bias"))


# The layout of every attention op is fixed by the op, never guessed from shapes (a (B, S, H, D) tensor and a
# (B, H, S, D) one can have the same shape). (B, H, S, D): the scaled_dot_product_* family, the math reference
# and scaled_dot_product_attention itself.
_BHSD_ATTENTION = tuple(getattr(aten, n) for n in (
    "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_fused_attention_overrideable", "_scaled_dot_product_attention_math",
    "_scaled_dot_product_attention_math_for_mps", "scaled_dot_product_attention") if hasattr(aten, n))
# ... and (B, S, H, D) (or (total tokens, H, D) with cumulative sequence lengths): the kernels underneath
_BSHD_ATTENTION = tuple(getattr(aten, n) for n in ("_flash_attention_forward", "_efficient_attention_forward")
                        if hasattr(aten, n))
# op -> the dimension of its keys that holds the sequence (their 2nd and 3rd arguments are keys and values)
ATTENTION_KEY_SEQ_DIM = {**{op: -2 for op in _BHSD_ATTENTION}, **{op: -3 for op in _BSHD_ATTENTION}}


@_formula(*_BHSD_ATTENTION)
def _sdpa(*, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, is_causal: Any = False, **rest: Any
          ) -> Cost:
    """(B, H, S, D) attention: ``B * Hq * L * S * (E + Ev)`` MACs, GQA included (see :func:`_attention_cost`
    for masks, causal attention and sliding windows: the full ``L x S`` products are counted)."""
    return _attention_cost(query, key, value, masked=_has_mask(rest), causal=bool(is_causal))


def _sequence_lengths(cum: Any, longest: Any, count: int) -> list[int]:
    """Per-sequence lengths from cumulative offsets; on meta tensors (no values) ``count`` times the longest."""
    if isinstance(cum, torch.Tensor) and cum.device.type != "meta" and not _is_fake(cum):
        return [int(n) for n in cum.diff().tolist()]
    return [int(longest)] * count



@_formula(*_BSHD_ATTENTION)
def _attention_bshd(*, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, is_causal: Any = False,
                    custom_mask_type: Any = 0, cum_seq_q: Any = None, cum_seq_k: Any = None, max_q: Any = 0,
                    max_k: Any = 0, cu_seqlens_q: Any = None, cu_seqlens_k: Any = None, max_seqlen_q: Any = 0,
                    max_seqlen_k: Any = 0, **rest: Any) -> Cost:
    """(B, S, H, D) attention (``_flash_attention_forward``, ``_efficient_attention_forward``), counted as the
    (B, H, S, D) ops are; windows (``window_size_*``) and causal masks do not reduce the count.

    Variable-length batches ((total tokens, H, D) with cumulative sequence lengths) count each sequence's
    ``L_i x S_i`` products; on meta tensors the lengths are unknown and every sequence counts as the longest
    (an upper bound, as ``torch.utils.flop_counter``)."""
    cum_q = cum_seq_q if cum_seq_q is not None else cu_seqlens_q
    cum_k = cum_seq_k if cum_seq_k is not None else cu_seqlens_k
    causal = bool(is_causal) or bool(custom_mask_type)
    masked = _has_mask(rest)
    if isinstance(cum_q, torch.Tensor) and isinstance(cum_k, torch.Tensor):
        q3, k3, v3 = (t.reshape(-1, *t.shape[-2:]) for t in (query, key, value))   # (tokens, H, D)
        n = cum_q.shape[0] - 1
        total = Cost()
        for lq, lk in zip(_sequence_lengths(cum_q, max_q or max_seqlen_q, n),
                          _sequence_lengths(cum_k, max_k or max_seqlen_k, n)):
            q = _Shape(torch.Size((1, q3.shape[1], lq, q3.shape[2])))
            k = _Shape(torch.Size((1, k3.shape[1], lk, k3.shape[2])))
            v = _Shape(torch.Size((1, v3.shape[1], lk, v3.shape[2])))
            total = total + _attention_cost(q, k, v, masked=masked, causal=causal)
        return total
    q, k, v = (t.transpose(-3, -2) for t in (query, key, value))
    return _attention_cost(q, k, v, masked=masked, causal=causal)


def _projection(tokens: int, out_features: int, in_features: int) -> Cost:
    return _gemm(tokens * out_features * in_features)  # the bias add is not counted


def _mha_cost(query: torch.Tensor, key: torch.Tensor, num_heads: int, embed_dim: int, *, need_weights: bool,
              average_weights: bool, masked: bool = False) -> Cost:
    """In-projections, attention and out-projection of multi-head attention ((B, L, E) tensors), counted as
    ``F.multi_head_attention_forward`` computes them: with ``need_weights`` an explicit softmax(Q K^T) whose
    weights are averaged over heads (one add per weight; a mask goes into ``baddbmm``, uncounted), else
    ``scaled_dot_product_attention`` (which adds a mask, one FLOP per score)."""
    b, lq = math.prod(query.shape[:-2]) or 1, query.shape[-2]
    lk = key.shape[-2]
    head = embed_dim // num_heads
    proj = (_projection(b * lq, embed_dim, embed_dim) + _projection(b * lk, embed_dim, embed_dim)
            + _projection(b * lk, embed_dim, embed_dim) + _projection(b * lq, embed_dim, embed_dim))
    q = _Shape(torch.Size((b, num_heads, lq, head)))
    kv = _Shape(torch.Size((b, num_heads, lk, head)))
    attention = _attention_cost(q, kv, kv, scaled_keys=not need_weights, masked=masked and not need_weights)
    averaged = Cost(0, b * num_heads * lq * lk) if need_weights and average_weights else Cost()
    return proj + attention + averaged


@_formula(aten._native_multi_head_attention)
def _native_mha(*, query: torch.Tensor, key: torch.Tensor, embed_dim: int, num_head: int, mask: Any = None,
                need_weights: Any = True, average_attn_weights: Any = True, **_: Any) -> Cost:
    return _mha_cost(query, key, int(num_head), int(embed_dim), need_weights=bool(need_weights),
                     average_weights=bool(average_attn_weights), masked=isinstance(mask, torch.Tensor))


@_formula(aten._transformer_encoder_layer_fwd)
def _encoder_layer(*, src: torch.Tensor, embed_dim: int, num_heads: int, ffn_weight_1: torch.Tensor,
                   ffn_weight_2: torch.Tensor, mask: Any = None, **_: Any) -> Cost:
    """Self-attention (as ``need_weights=False``), two residual adds, two layer norms, the feed-forward pair
    and its activation; no bias adds."""
    tokens = math.prod(src.shape[:-1])
    ffn = _projection(tokens, *ffn_weight_1.shape) + _projection(tokens, *ffn_weight_2.shape)
    norms = Cost(0, 2 * 5 * _numel(src))
    residual_and_act = Cost(0, 2 * _numel(src) + tokens * ffn_weight_1.shape[0])
    attention = _mha_cost(src, src, int(num_heads), int(embed_dim), need_weights=False, average_weights=False,
                          masked=isinstance(mask, torch.Tensor))
    return attention + ffn + norms + residual_and_act


@_formula(aten.mkldnn_rnn_layer)
def _mkldnn_rnn_layer(*, input: torch.Tensor, weight0: torch.Tensor, weight1: torch.Tensor, **_: Any) -> Cost:
    """One direction of one LSTM layer: input and hidden GEMMs per time step, plus gate arithmetic."""
    w_ih, w_hh = weight0, weight1
    steps = _numel(input) // input.shape[-1]          # time steps * batch
    macs = steps * (w_ih.numel() + w_hh.numel())
    hidden = w_hh.shape[1]
    # per hidden unit and step, as the decomposed cell (a meta run) computes it: add the input and hidden gate
    # pre-activations (4), 4 gate activations, c' = f*c + i*g (2 mul, 1 add), h = o * tanh(c') (1 tanh, 1 mul)
    return Cost(macs, 2 * macs + steps * hidden * 13)


# --- normalization, pooling, softmax, interpolation -----------------------------------------------------
@_formula(aten.native_batch_norm, aten._native_batch_norm_legit, aten._native_batch_norm_legit_no_training,
          aten._native_batch_norm_legit_functional)
def _batch_norm(*, input: torch.Tensor, training: Any = False, **_: Any) -> Cost:
    training = training if isinstance(training, bool) else False
    return Cost(0, (5 if training else 2) * _numel(input))  # eval: scale and shift; training: + mean, variance


@_formula(aten.native_layer_norm, aten.native_group_norm, aten._fused_rms_norm)
def _stat_norm(*, input: torch.Tensor, **_: Any) -> Cost:
    return Cost(0, 5 * _numel(input))  # mean, variance, normalize, scale, shift per element


@_formula(aten._softmax, aten._log_softmax, aten.softmax, aten.log_softmax, aten._safe_softmax)
def _softmax(*, input: torch.Tensor, **_: Any) -> Cost:
    return Cost(0, 3 * _numel(input))  # exp, sum, divide per element


@_formula(aten.max_pool1d, aten.max_pool2d_with_indices, aten.max_pool3d_with_indices, aten.avg_pool1d,
          aten.avg_pool2d, aten.avg_pool3d, aten.max_pool2d, aten.max_pool3d)
def _pool(*, kernel_size: Any, out: Any, **_: Any) -> Cost:
    result = _first(out)
    dims = result.dim() - 2 if isinstance(result, torch.Tensor) else 2
    kernel = list(kernel_size) if isinstance(kernel_size, (list, tuple)) else [kernel_size]
    if len(kernel) == 1:
        kernel = kernel * max(dims, 1)
    return Cost(0, _numel(result) * math.prod(kernel))  # one compare/add per window element


@_formula(aten._adaptive_avg_pool2d, aten._adaptive_avg_pool3d, aten.adaptive_max_pool2d,
          aten.adaptive_max_pool3d, aten.adaptive_avg_pool1d, aten.adaptive_max_pool1d)
def _adaptive_pool(*, input: torch.Tensor, **_: Any) -> Cost:
    return Cost(0, _numel(input))  # every input element is added/compared once


_INTERP_POINTS = {"upsample_nearest1d": 0, "upsample_nearest2d": 0, "upsample_nearest3d": 0,
                  "_upsample_nearest_exact1d": 0, "_upsample_nearest_exact2d": 0,
                  "_upsample_nearest_exact3d": 0, "upsample_linear1d": 2, "upsample_bilinear2d": 4,
                  "_upsample_bilinear2d_aa": 4, "upsample_trilinear3d": 8, "upsample_bicubic2d": 16,
                  "_upsample_bicubic2d_aa": 16}


def _interp(points: int) -> NamedFormula:
    def interpolation(*, out: Any, **_: Any) -> Cost:
        return Cost(0, 2 * points * _numel(_first(out)))  # weighted blend per output
    return interpolation


for _name, _points in _INTERP_POINTS.items():
    if hasattr(aten, _name):
        BUILTIN[getattr(aten, _name)] = _interp(_points)


def _reduction(*, input: Any = None, **_: Any) -> Cost:
    return Cost(0, _numel(input))  # one FLOP per input element


_REDUCTIONS = ("sum", "mean", "amax", "amin", "max", "min", "var", "std", "var_mean", "std_mean", "norm",
               "linalg_vector_norm", "prod", "cumsum", "cumprod", "logsumexp", "argmax", "argmin", "nansum",
               "aminmax")
for _name in _REDUCTIONS:
    if hasattr(aten, _name):
        BUILTIN[getattr(aten, _name)] = _reduction


def pointwise_cost(*, out: Any, **_: Any) -> Cost:
    """Elementwise ops (ATen's ``pointwise`` tag): one FLOP per output element."""
    return Cost(0, _numel(_first(out)))


@_formula(*(getattr(aten, n) for n in ("index_add", "index_add_", "scatter_add", "scatter_add_", "scatter_reduce",
                                       "scatter_reduce_", "index_reduce", "index_reduce_") if hasattr(aten, n)))
def _accumulate(*, source: Any = None, src: Any = None, **_: Any) -> Cost:
    """Scatter-accumulates (``index_add_``: the mixture-of-experts combine): one add per source element."""
    return Cost(0, _numel(source if source is not None else src))


@_formula(aten.floor_divide)
def _floor_divide(*, out: Any, **_: Any) -> Cost:
    """One FLOP per element on floating-point tensors; integer index arithmetic (expert ids) is free."""
    result = _first(out)
    return Cost(0, _numel(result) if isinstance(result, torch.Tensor) and result.is_floating_point() else 0)


# --- ops that move or allocate data and do no arithmetic ------------------------------------------------
ZERO_COST_NAMES = (
    "clone", "copy_", "copy", "_to_copy", "cat", "stack", "empty", "empty_like", "empty_strided", "zeros",
    "zeros_like", "ones", "ones_like", "full", "full_like", "fill_", "fill", "zero_", "new_empty",
    "new_zeros", "new_ones", "new_full", "new_empty_strided", "rand", "randn", "randint", "rand_like",
    "randn_like", "uniform_", "normal_", "bernoulli_", "lift_fresh", "lift_fresh_copy", "detach", "detach_",
    "contiguous", "index", "index_select", "gather", "scatter", "scatter_", "embedding", "constant_pad_nd",
    "reflection_pad1d", "reflection_pad2d", "replication_pad2d", "repeat", "expand_copy", "flip", "roll",
    "arange", "scalar_tensor", "resize_", "set_", "_unsafe_view", "unsafe_split", "split_with_sizes_copy",
    "masked_select", "nonzero", "index_put_", "index_put", "_index_put_impl_", "slice_scatter",
    "select_scatter", "alias", "_local_scalar_dense", "item", "repeat_interleave", "tril", "triu",
    "native_dropout", "dropout", "sort", "topk", "one_hot", "tensor_split", "linspace", "masked_scatter",
    "_assert_async", "_assert_tensor_metadata", "sym_size", "sym_numel", "sym_stride", "pixel_shuffle",
    "pixel_unshuffle", "channel_shuffle", "im2col", "col2im", "_pad_packed_sequence", "_pack_padded_sequence",
    "to", "_has_compatible_shallow_copy_type", "is_same_size", "equal", "argsort", "bincount",
    "_fused_sdp_choice", "unfold", "as_strided_scatter", "diagonal_scatter", "as_strided_",
    # indexing and routing bookkeeping (mixture-of-experts token sorting, masks' checks): counts, comparisons
    # and lookups on indices or booleans, no floating-point arithmetic
    "histc", "all", "any", "searchsorted", "bucketize", "_unique2", "unique_dim", "unique_consecutive",
    "unique_dim_consecutive", "kthvalue", "msort", "index_fill", "index_fill_", "index_copy", "index_copy_",
    "take", "take_along_dim", "nonzero_static", "count_nonzero", "triu_indices", "tril_indices", "isin",
)
ZERO_COST_OPS = tuple(getattr(aten, n) for n in ZERO_COST_NAMES if hasattr(aten, n))
# bookkeeping outside aten that does no arithmetic: profiler ranges (``record_function``, which
# nn.DataParallel and many libraries open around their forward), stream and assertion bookkeeping
_OTHER_ZERO_COST = {"profiler": ("_record_function_enter", "_record_function_enter_new", "_record_function_exit"),
                    "aten": ("record_stream", "_assert_scalar", "sym_constrain_range", "sym_constrain_range_for_size",
                             "_functional_assert_async", "_functional_assert_scalar", "_print")}
ZERO_COST_OPS += tuple(getattr(getattr(torch.ops, ns), n) for ns, names in _OTHER_ZERO_COST.items() for n in names
                       if hasattr(getattr(torch.ops, ns), n))


def is_view(func: Any) -> bool:
    """True for ops whose first output aliases an input (views do no arithmetic)."""
    returns = func._schema.returns
    return bool(returns) and returns[0].alias_info is not None and not returns[0].alias_info.is_write


# activations ATen does not tag as pointwise; each counts one FLOP per output element too
_UNTAGGED_POINTWISE = {"hardswish", "hardsigmoid", "hardtanh", "silu", "mish", "elu", "selu", "celu", "gelu",
                       "leaky_relu", "softplus", "softshrink", "hardshrink", "relu6", "rrelu_with_noise",
                       "prelu", "_prelu_kernel", "glu", "log_sigmoid_forward", "threshold", "clamp"}


def is_pointwise(func: Any) -> bool:
    """Elementwise ops, in-place variants (``relu_``, ``hardswish_``) judged by their out-of-place op."""
    name = func.overloadpacket.__name__
    if torch.Tag.pointwise in func.tags or name.rstrip("_") in _UNTAGGED_POINTWISE:
        return True
    if name.endswith("_") and hasattr(aten, name[:-1]):
        base = getattr(aten, name[:-1])
        return any(torch.Tag.pointwise in getattr(base, o).tags for o in base.overloads())
    return False
