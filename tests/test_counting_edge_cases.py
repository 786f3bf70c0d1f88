"""Counting edge cases that other projects' test suites catch (thop, PyTorch's test_flop_counter, DataParallel,
bias conventions, fused attention on meta vs real tensors). Every expected number is worked out by hand."""
from __future__ import annotations

import pytest
import thop
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import nbopt
from nbopt.inputs import check_finite
from nbopt.profiling import count_cost
from tests.test_counting import Fn


def counts(model: nn.Module, *inputs, **kw) -> tuple[int, int]:
    prof = nbopt.profile(model, inputs, latency=False, **kw)
    return prof.total_macs, prof.total_flops


def meta_and_real(model: nn.Module, *inputs, **kw) -> tuple[tuple[int, int], tuple[int, int]]:
    return counts(model, *inputs, execution="meta", **kw), counts(model, *inputs, execution="real", **kw)


class Wrap(Fn):
    """``Fn`` that also holds ``modules`` as children (so a meta run swaps their weights too)."""

    def __init__(self, fn, *modules: nn.Module) -> None:
        super().__init__(fn)
        self.modules_ = nn.ModuleList(modules)


class OpNames(TorchDispatchMode):
    """The ATen ops a call dispatches (to show which kernel a real run took)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


# --- 1. custom_ops: thop's semantics (a rule adds to its module's children; on a leaf it replaces) ----------
class CustomModule(nn.Module):
    """thop's tests/test_custom_ops.py: a third-party module with no rule of its own, wrapping one conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 64, kernel_size=3, padding=1)

    def forward(self, x):
        return self.conv(x)


def count_with_int(module, x, y):
    """thop's rule: the wrapped convolution's MACs."""
    k_h, k_w = module.conv.kernel_size
    _, _, h, w = y.shape
    module.total_ops += k_h * k_w * module.conv.in_channels * module.conv.out_channels * h * w // module.conv.groups


def count_with_tensor(module, x, y):
    """thop's README recipe: the same count accumulated in a DoubleTensor."""
    _, _, h, w = y.shape
    module.total_ops += torch.DoubleTensor([3 * 3 * 3 * 64 * h * w])


CONV_MACS = 3 * 3 * 3 * 64 * 224 * 224   # k_h * k_w * C_in * C_out * H * W = 86,704,128


@pytest.mark.parametrize("rule", [count_with_int, count_with_tensor])
def test_custom_rule_on_a_container_adds_to_its_children_like_thop(rule):
    assert CONV_MACS == 86_704_128
    x = torch.randn(1, 3, 224, 224)
    expected = CONV_MACS + CONV_MACS            # the rule's count + the conv child's own count = 173,408,256
    assert expected == 173_408_256
    thop_macs, _ = thop.profile(CustomModule(), inputs=(x,), custom_ops={CustomModule: rule}, verbose=False)
    assert thop_macs == expected
    for engine in ("aten", "thop"):
        prof = nbopt.profile(CustomModule(), x, latency=False, engine=engine, custom_ops={CustomModule: rule})
        assert prof.total_macs == expected, engine
        assert prof.table.loc["(root)", "macs"] == CONV_MACS      # the rule, on the container's own row
        assert prof.table.loc["conv", "macs"] == CONV_MACS        # the child, counted as usual
    meta, real = meta_and_real(CustomModule(), x, custom_ops={CustomModule: rule})
    assert meta == real == (expected, 2 * expected)


def test_custom_rule_on_a_leaf_replaces_its_count_like_thop():
    x = torch.randn(1, 3, 8, 8)
    rule = lambda m, inp, out: setattr(m, "total_ops", m.total_ops + 1000)  # noqa: E731 - 1000 MACs a call
    thop_macs, _ = thop.profile(CustomModule(), inputs=(x,), custom_ops={nn.Conv2d: rule}, verbose=False)
    assert thop_macs == 1000   # not 3*3*3*64*8*8 = 110,592: the rule replaces the conv's own count
    assert counts(CustomModule(), x, custom_ops={nn.Conv2d: rule}) == (1000, 2000)


class OwnProduct(nn.Module):
    """A container that multiplies by its own weight (a functional matmul) before a Linear child."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 8))
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        return self.lin(x @ self.w)


def test_custom_rule_replaces_the_containers_own_ops_and_keeps_its_childrens():
    x = torch.randn(4, 8)
    rule = lambda m, inp, out: setattr(m, "total_ops", m.total_ops + 1000)  # noqa: E731
    own, child = 4 * 8 * 8, 4 * 8 * 8    # x @ w: 4x8 by 8x8 = 256 MACs; the Linear: 4 tokens * 8 * 8 = 256
    assert counts(OwnProduct(), x)[0] == own + child == 512
    thop_macs, _ = thop.profile(OwnProduct(), inputs=(x,), custom_ops={OwnProduct: rule}, verbose=False)
    assert thop_macs == 1000 + child == 1256
    prof = nbopt.profile(OwnProduct(), x, latency=False, custom_ops={OwnProduct: rule})
    assert prof.total_macs == 1000 + child and prof.table.loc["(root)", "macs"] == 1000
    assert prof.table.loc["lin", "macs"] == child


def test_custom_ops_scope_subtree_makes_the_rule_the_whole_count():
    x = torch.randn(4, 8)
    rule = lambda m, inp, out: setattr(m, "total_ops", m.total_ops + 1000)  # noqa: E731
    assert counts(OwnProduct(), x, custom_ops={OwnProduct: rule}, custom_ops_scope="subtree") == (1000, 2000)
    big = torch.randn(1, 3, 224, 224)
    assert counts(CustomModule(), big, custom_ops={CustomModule: count_with_int},
                  custom_ops_scope="subtree")[0] == CONV_MACS
    with pytest.raises(nbopt.NboptError, match="custom_ops_scope='subtree' needs engine='aten'"):
        nbopt.profile(OwnProduct(), x, latency=False, engine="thop", custom_ops={OwnProduct: rule},
                      custom_ops_scope="subtree")
    with pytest.raises(nbopt.NboptError, match="unknown custom_ops_scope 'all'"):
        nbopt.profile(OwnProduct(), x, latency=False, custom_ops_scope="all")


def test_custom_rule_applies_to_subclasses_and_ignore_ops_still_drop_everything_inside():
    class Sub(OwnProduct):
        pass

    x = torch.randn(4, 8)
    rule = lambda m, inp, out: setattr(m, "total_ops", m.total_ops + 1000)  # noqa: E731
    assert counts(Sub(), x, custom_ops={OwnProduct: rule})[0] == 1000 + 4 * 8 * 8   # found through the MRO
    thop_macs, _ = thop.profile(Sub(), inputs=(x,), custom_ops={OwnProduct: rule}, verbose=False)
    assert thop_macs == 1256
    assert counts(OwnProduct(), x, ignore_ops=[OwnProduct]) == (0, 0)             # unchanged: all dropped
    assert counts(nn.Sequential(OwnProduct()), x, ignore_ops=[nn.Linear])[0] == 4 * 8 * 8  # only x @ w left


# --- 2. float8 inputs and torch._scaled_mm ----------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_check_finite_accepts_float8_and_still_finds_nan(dtype):
    check_finite(torch.randn(4, 4).to(dtype))
    with pytest.raises(nbopt.NboptError, match="contain NaN or Inf"):
        check_finite(torch.tensor([1.0, float("nan")]).to(dtype))


def _scaled_mm(a, b, scale_a, scale_b):
    return torch._scaled_mm(a, b.t(), scale_a=scale_a, scale_b=scale_b, out_dtype=torch.bfloat16)


def test_scaled_mm_counts_like_mm_as_flop_counter_does():
    """PyTorch's test_flop_counter.py::test_scaled_mm: (3*16, 5*16) @ (5*16, 7*16) in float8 -> 860,160."""
    a = torch.randn(3 * 16, 5 * 16).to(torch.float8_e4m3fn)
    b = torch.randn(7 * 16, 5 * 16).to(torch.float8_e4m3fn)
    ones = torch.ones(())
    macs = 48 * 80 * 112                   # m * k * n = 430,080
    assert 2 * macs == 860_160
    on_meta = [t.to("meta") for t in (a, b, ones, ones)]
    with FlopCounterMode(display=False) as mode:
        _scaled_mm(*on_meta)
    assert mode.get_total_flops() == 2 * macs
    assert count_cost(_scaled_mm, *on_meta) == nbopt.profiling.formulas.Cost(macs, 2 * macs)
    model = Fn(_scaled_mm)
    try:
        real = counts(model, a, b, ones, ones, execution="real")
    except RuntimeError:  # a CPU build without float8 matmul: the meta count still holds
        real = (macs, 2 * macs)
    meta = counts(model, a, b, ones, ones, execution="meta")   # float8 inputs pass check_finite too
    assert meta == real == (macs, 2 * macs)
    assert nbopt.profile(model, (a, b, ones, ones), latency=False).coverage == 1.0


# --- 4. DataParallel and profiler ranges do no arithmetic ----------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="DataParallel runs the module directly only without GPUs")
def test_data_parallel_on_cpu_is_fully_covered():
    model = nn.DataParallel(nn.Sequential(nn.Linear(8, 4), nn.ReLU()))
    x = torch.randn(2, 8)
    macs = 2 * 8 * 4                        # 2 rows * 8 inputs * 4 outputs = 64 (bias not counted)
    flops = 2 * macs + 2 * 4                # + one FLOP per ReLU output = 136
    for execution in ("meta", "real"):
        prof = nbopt.profile(model, x, latency=False, execution=execution)
        assert (prof.total_macs, prof.total_flops) == (macs, flops)
        assert prof.coverage == 1.0 and prof.uncounted == {}


def test_record_function_ranges_are_free():
    def ranged(t):
        with torch.profiler.record_function("my range"):
            return t * 2
    prof = nbopt.profile(Fn(ranged), torch.randn(3, 5), latency=False, execution="real")
    assert (prof.total_flops, prof.coverage, prof.uncounted) == (15, 1.0, {})


# --- 5. bias adds are never counted, however ATen runs the linear layer ---------------------------------------
def test_linear_bias_is_not_counted_on_any_layout():
    lin = nn.Linear(32, 16)
    x = torch.randn(2, 10, 32)
    macs = 2 * 10 * 32 * 16                 # tokens * in * out = 10,240
    # contiguous 3-D: addmm; transposed (non-contiguous) 3-D: mm + add of the bias; 4-D: mm + add too
    assert counts(lin, x) == (macs, 2 * macs)
    assert meta_and_real(Wrap(lambda t: lin(t.transpose(0, 1)), lin), x) == ((macs, 2 * macs),) * 2
    assert counts(lin, torch.randn(2, 3, 5, 32)) == (2 * 3 * 5 * 32 * 16, 2 * 2 * 3 * 5 * 32 * 16)
    w, b = torch.randn(16, 32), torch.randn(16)
    assert counts(Fn(lambda t, w, b: t @ w.T + b), x, w, b) == (macs, 2 * macs)  # written by hand: the same


def test_adds_that_are_not_bias_adds_still_count():
    x, w, y = torch.randn(4, 8), torch.randn(8, 8), torch.randn(4, 8)
    macs = 4 * 8 * 8
    assert counts(Fn(lambda a, b, c: a @ b + c), x, w, y) == (macs, 2 * macs + 4 * 8)   # a residual add: 32
    v = torch.randn(8)
    assert counts(Fn(lambda a, b, c: (a @ b) * 2 + c), x, w, v) == (macs, 2 * macs + 32 + 32)  # not the product


B, L, E, H = 2, 10, 32, 4                   # batch, tokens, embedding, heads: head dim 8
TOKENS = B * L                              # 20
PROJ_MACS = 4 * TOKENS * E * E              # q, k, v and out projections: 4 * 20 * 32 * 32 = 81,920
ATTN_MACS = B * H * L * L * (8 + 8)         # Q @ K^T and P @ V: 2 * 4 * 10 * 10 * 16 = 12,800
SCORES = B * H * L * L                      # 800


def test_multihead_attention_flops_have_no_bias_adds_and_meta_equals_real():
    mha = nn.MultiheadAttention(E, H, batch_first=True).eval()
    x = torch.randn(B, L, E)
    macs = PROJ_MACS + ATTN_MACS            # 94,720
    # need_weights=True (the default): scale Q (20 * 32 = 640), softmax (3 * 800), average the weights over
    # heads (800); the bias adds (3 * 640 in, 640 out) are not counted
    with_weights = 2 * macs + TOKENS * E + 3 * SCORES + SCORES
    assert with_weights == 193_280
    # need_weights=False: scaled_dot_product_attention scales Q and K (2 * 640) and takes the softmax
    without = 2 * macs + 2 * TOKENS * E + 3 * SCORES
    assert without == 193_120
    for need, flops in ((True, with_weights), (False, without)):
        model = Wrap(lambda t: mha(t, t, t, need_weights=need)[0], mha)
        assert meta_and_real(model, x) == ((macs, flops),) * 2
        with torch.enable_grad():  # the decomposed path that runs when grad is needed
            slow = count_cost(lambda: mha(x, x, x, need_weights=need))
        assert (slow.macs, slow.flops) == (macs, flops)


def test_transformer_encoder_layer_flops_have_no_bias_adds_and_meta_equals_real():
    x = torch.randn(B, L, E)
    ffn_macs = 2 * TOKENS * E * 64           # two feed-forward layers, 32 <-> 64: 2 * 40,960
    macs = PROJ_MACS + ATTN_MACS + ffn_macs  # 176,640
    attention_extra = 2 * TOKENS * E + 3 * SCORES   # Q and K scaling (1,280) + softmax (2,400)
    residuals = 2 * TOKENS * E                      # two residual adds: 1,280
    norms = 2 * 5 * TOKENS * E                      # two layer norms, 5 per element: 6,400
    activation = TOKENS * 64                        # ReLU / GELU on the hidden layer: 1,280
    flops = 2 * macs + attention_extra + residuals + norms + activation
    assert flops == 365_920
    for norm_first in (False, True):
        layer = nn.TransformerEncoderLayer(E, H, 64, batch_first=True, norm_first=norm_first).eval()
        assert meta_and_real(layer, x) == ((macs, flops),) * 2
        with torch.enable_grad():
            slow = count_cost(layer, x)
        assert (slow.macs, slow.flops) == (macs, flops)


# --- 6. fused CPU attention: meta (decomposed) == real (fused kernel) -----------------------------------------
def test_real_cpu_sdpa_runs_the_fused_kernel():
    q = torch.randn(2, 4, 16, 8)
    with torch.no_grad(), OpNames() as ops:
        F.scaled_dot_product_attention(q, q, q, is_causal=True)
    assert ops.names == ["aten._scaled_dot_product_flash_attention_for_cpu"]


def test_plain_sdpa_meta_equals_real():
    q, k, v = torch.randn(2, 4, 16, 8), torch.randn(2, 4, 24, 8), torch.randn(2, 4, 24, 12)
    macs = 2 * 4 * 16 * 24 * (8 + 12)       # B * H * L * S * (E + Ev) = 61,440
    scores = 2 * 4 * 16 * 24                # 3,072
    flops = (2 * macs                       # 122,880
             + 2 * 4 * 16 * 8               # scale Q by sqrt(scale): 1,024
             + 2 * 4 * 24 * 8               # scale K by sqrt(scale): 1,536
             + 3 * scores)                  # softmax: 9,216
    assert flops == 134_656
    model = Fn(F.scaled_dot_product_attention)
    assert meta_and_real(model, q, k, v) == ((macs, flops),) * 2


def test_causal_sdpa_meta_equals_real():
    """The issue's case: causal attention on (2, 16, 128, 64) read 136,855,552 on meta, 136,314,880 real."""
    q = torch.randn(2, 16, 128, 64)
    macs = 2 * 16 * 128 * 128 * (64 + 64)   # 67,108,864
    scores = 2 * 16 * 128 * 128             # 524,288
    flops = (2 * macs                       # 134,217,728
             + 2 * (2 * 16 * 128 * 64)      # scale Q and K: 524,288
             + 128 * 128                    # the causal mask, one select per (L, S) position: 16,384
             + scores                       # add the mask to the scores: 524,288
             + 3 * scores)                  # softmax: 1,572,864
    assert flops == 136_855_552
    model = Fn(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=True))
    assert meta_and_real(model, q, q, q) == ((macs, flops),) * 2


def test_masked_and_grouped_query_sdpa_meta_equals_real():
    q, k = torch.randn(2, 4, 16, 8), torch.randn(2, 4, 24, 8)
    mask = torch.randn(16, 24)
    macs, scores = 2 * 4 * 16 * 24 * 16, 2 * 4 * 16 * 24       # 49,152 and 3,072
    flops = 2 * macs + 2 * 4 * 16 * 8 + 2 * 4 * 24 * 8 + scores + 3 * scores   # mask add: 1 per score
    model = Fn(lambda a, b, c, m: F.scaled_dot_product_attention(a, b, c, attn_mask=m))
    assert meta_and_real(model, q, k, k, mask) == ((macs, flops),) * 2
    kv = torch.randn(2, 2, 24, 8)           # 2 key/value heads shared by 4 query heads
    gqa = Fn(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, enable_gqa=True))
    # K is scaled after it is repeated to the 4 query heads: 2 * 4 * 24 * 8, as without GQA
    assert meta_and_real(gqa, q, kv, kv) == ((macs, 2 * macs + 1024 + 1536 + 3 * scores),) * 2


def test_lstm_meta_equals_real():
    """Real CPU runs call mkldnn_rnn_layer; meta runs decompose into cells. Both: 13 FLOPs per hidden unit
    and step besides the GEMMs (gate pre-activations added: 4; sigmoid x3 and tanh: 4; f*c + i*g: 3;
    o * tanh(c): 2)."""
    lstm = nn.LSTM(4, 4, batch_first=True)
    x = torch.randn(2, 3, 4)
    steps = 2 * 3                                        # batch * time
    macs = steps * (4 * 4 * 4 + 4 * 4 * 4)               # input and hidden GEMMs, 4 gates of 4 units: 768
    flops = 2 * macs + steps * 4 * 13                    # 1,536 + 312 = 1,848
    assert meta_and_real(Wrap(lambda t: lstm(t)[0], lstm), x) == ((macs, flops),) * 2


def test_attention_variants_meta_equals_real():
    """Cross-attention, key padding masks, weights not averaged, batch_first=False, a masked encoder layer."""
    mha = nn.MultiheadAttention(E, H, batch_first=True).eval()
    q, kv = torch.randn(B, L, E), torch.randn(B, 7, E)
    pad = torch.zeros(B, L, dtype=torch.bool)
    pad[:, -2:] = True
    causal = torch.ones(L, L, dtype=torch.bool).triu(1)
    enc = nn.TransformerEncoderLayer(E, H, 64, batch_first=True).eval()
    seq_first = nn.MultiheadAttention(E, H).eval()
    self_macs = PROJ_MACS + ATTN_MACS                                       # 94,720
    cross_macs = (2 * TOKENS + 2 * B * 7) * E * E + B * H * L * 7 * (8 + 8)  # 69,632 + 8,960 = 78,592
    enc_macs = self_macs + 2 * TOKENS * E * 64                              # + feed-forward: 176,640
    variants = [
        (Wrap(lambda a, b: mha(a, b, b)[0], mha), (q, kv), cross_macs),
        (Wrap(lambda a, b: mha(a, b, b, need_weights=False)[0], mha), (q, kv), cross_macs),
        (Wrap(lambda a, m: mha(a, a, a, key_padding_mask=m)[0], mha), (q, pad), self_macs),
        (Wrap(lambda a, m: mha(a, a, a, attn_mask=m, need_weights=False)[0], mha), (q, causal), self_macs),
        (Wrap(lambda a: mha(a, a, a, average_attn_weights=False)[0], mha), (q,), self_macs),
        (Wrap(lambda a: seq_first(a, a, a)[0], seq_first), (q.transpose(0, 1).contiguous(),), self_macs),
        (Wrap(lambda a, m: enc(a, src_key_padding_mask=m), enc), (q, pad), enc_macs),
    ]
    assert cross_macs == 78_592
    for model, inputs, macs in variants:
        meta, real = meta_and_real(model, *inputs)
        assert meta == real and meta[0] == macs


def test_float8_weights_pass_and_fail_the_finite_check_like_float32_ones():
    """The weight check (Pruner, quantize) uses the same float8-safe test as the input check."""
    from nbopt.errors import InputError
    from nbopt.inputs import check_finite_weights

    m = nn.Linear(4, 3)
    m.weight.data = m.weight.data.to(torch.float8_e4m3fn)
    check_finite_weights(m, "it breaks")  # finite float8 weights pass
    w = m.weight.data.to(torch.float32)
    w[0, 0] = float("nan")
    m.weight.data = w.to(torch.float8_e4m3fn)
    with pytest.raises(InputError, match=r"parameter 'weight' holds NaN values \(1 of 12\), so it breaks\."):
        check_finite_weights(m, "it breaks")
