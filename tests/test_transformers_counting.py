"""Exact MACs on Hugging Face transformers: every attention layout, GQA, sliding windows, MoE experts
(``aten._grouped_mm``), KV caches, models on the meta device and ``generate()``.

Every count is compared with an analytic formula written here, per model family. One convention throughout
(the one of nbopt's formulas, ``torch.utils.flop_counter`` and PyTorch's CPU kernels): attention counts
``Q @ K^T`` plus ``P @ V`` over the **full** ``L x S`` score matrix, ``2 * B * Hq * L * S * D`` MACs, also for
causal attention and sliding windows (Mistral's window is a mask on the scores: the products are computed).
Grouped-query attention counts every query head (``Hq``), whatever the number of key/value heads. Bias adds
are not counted. Mixture of experts: the router ``T * h * E`` plus, with top-k routing, exactly
``T * k * 3 * h * i`` expert MACs (each token runs k gated MLPs).
"""
from __future__ import annotations

import functools
import resource

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nbopt
from nbopt.profiling.counter import count_cost

transformers = pytest.importorskip("transformers")

from tests import hf_models  # noqa: E402
from tests.magics.conftest import ip, run  # noqa: E402,F401 - the magics' shell fixture


# --- analytic MACs, one function per family --------------------------------------------------------------
def _attention(b: int, heads: int, sq: int, sk: int, d: int) -> int:
    """``Q @ K^T`` + ``P @ V`` over the full ``sq x sk`` scores (causal and windowed too)."""
    return 2 * b * heads * sq * sk * d


def _decoder_attention_block(cfg, t: int, b: int, s: int, ctx: int) -> int:
    """q/k/v/o projections of ``t`` tokens (GQA: k and v have ``kv`` heads) and attention to ``ctx`` keys."""
    h, heads = cfg.hidden_size, cfg.num_attention_heads
    d = getattr(cfg, "head_dim", None) or h // heads
    kv = cfg.num_key_value_heads
    return t * h * heads * d * 2 + t * h * kv * d * 2 + _attention(b, heads, s, ctx, d)


def llama_like_macs(cfg, b: int, s: int, ctx: int | None = None, last_logits: bool = False) -> int:
    """Llama, Qwen2 and Mistral: attention block + gated MLP (3 * h * i per token) per layer, and lm_head.
    ``ctx``: keys attended to (``s`` without a cache; cache length + ``s`` on a decode step). ``last_logits``:
    lm_head on the last token of each sequence only (``generate()``'s prefill passes ``logits_to_keep=1``)."""
    t, h = b * s, cfg.hidden_size
    layer = _decoder_attention_block(cfg, t, b, s, ctx or s) + 3 * t * h * cfg.intermediate_size
    return cfg.num_hidden_layers * layer + (b if last_logits else t) * h * cfg.vocab_size


def mixtral_macs(cfg, b: int, s: int) -> int:
    """Router (T * h * E) and top-k experts, each a gated MLP: T * k * 3 * h * i."""
    t, h = b * s, cfg.hidden_size
    moe = t * h * cfg.num_local_experts + t * cfg.num_experts_per_tok * 3 * h * cfg.intermediate_size
    return cfg.num_hidden_layers * (_decoder_attention_block(cfg, t, b, s, s) + moe) + t * h * cfg.vocab_size


def qwen2_moe_macs(cfg, b: int, s: int) -> int:
    """Router, top-k experts (moe_intermediate_size), the shared expert (gated MLP) and its 1-output gate."""
    t, h = b * s, cfg.hidden_size
    moe = (t * h * cfg.num_experts + t * cfg.num_experts_per_tok * 3 * h * cfg.moe_intermediate_size
           + 3 * t * h * cfg.shared_expert_intermediate_size + t * h)
    return cfg.num_hidden_layers * (_decoder_attention_block(cfg, t, b, s, s) + moe) + t * h * cfg.vocab_size


def bert_macs(cfg, b: int, s: int) -> int:
    """q/k/v/o (4 h^2 per token), the 2-layer MLP, attention; the pooler on the first token (h^2 per sequence)."""
    h, heads, t = cfg.hidden_size, cfg.num_attention_heads, b * s
    layer = 4 * t * h * h + 2 * t * h * cfg.intermediate_size + _attention(b, heads, s, s, h // heads)
    return cfg.num_hidden_layers * layer + b * h * h


def gpt2_macs(cfg, b: int, s: int) -> int:
    """c_attn (3 h^2) + c_proj (h^2) + the MLP (2 * h * 4h) per token (Conv1D layers), attention, lm_head."""
    h, heads, t = cfg.n_embd, cfg.n_head, b * s
    inner = cfg.n_inner or 4 * h
    layer = 4 * t * h * h + 2 * t * h * inner + _attention(b, heads, s, s, h // heads)
    return cfg.n_layer * layer + t * h * cfg.vocab_size


def t5_macs(cfg, b: int, s: int) -> int:
    """T5Model (no lm_head), decoder inputs as long as the encoder's: self-attention (and in the decoder
    cross-attention: q/o on decoder tokens, k/v on encoder tokens) with ``H * d_kv`` inner width, a 2-layer MLP."""
    d, heads, dk, t = cfg.d_model, cfg.num_heads, cfg.d_kv, b * s
    inner = heads * dk
    attention_block = 4 * t * d * inner + _attention(b, heads, s, s, dk)
    mlp = 2 * t * d * cfg.d_ff
    return cfg.num_layers * (attention_block + mlp) + cfg.num_decoder_layers * (2 * attention_block + mlp)


ANALYTIC = {"gpt2": gpt2_macs, "bert": bert_macs, "llama": llama_like_macs, "qwen2": llama_like_macs,
            "mistral": llama_like_macs, "t5": t5_macs, "mixtral": mixtral_macs, "qwen2_moe": qwen2_moe_macs}
SEQS = (128, 512)


@functools.lru_cache(maxsize=None)
def built(name: str):
    return hf_models.BUILDERS[name]()


def inputs_for(name: str, cfg, seq: int, batch: int = 1) -> dict:
    ids = hf_models.ids(cfg, batch, seq)
    if name == "t5":
        return {"input_ids": ids, "decoder_input_ids": ids}
    if name == "bert":
        return {"input_ids": ids}
    return {"input_ids": ids, "use_cache": False}


# --- 1. the goal: within 1% of the analytic MACs on meta, real and through the magic -----------------------
@pytest.mark.parametrize("execution", ["meta", "real"])
@pytest.mark.parametrize("seq", SEQS)
@pytest.mark.parametrize("name", list(ANALYTIC))
def test_matches_analytic_macs(name, seq, execution):
    model, cfg = built(name)
    prof = nbopt.profile(model, inputs_for(name, cfg, seq), latency=False,
                         execution="auto" if execution == "meta" else "real")
    assert prof.execution == execution  # MoE and cached decoders count on meta tensors too, no silent fallback
    want = ANALYTIC[name](cfg, 1, seq)
    assert abs(prof.total_macs / want - 1) < 0.01
    assert prof.total_macs == want  # in fact exact
    assert prof.uncounted == {} and prof.coverage == 1.0  # MoE routing ops (histc, floor_divide, ...) classified


@pytest.mark.parametrize("seq", SEQS)
@pytest.mark.parametrize("name", list(ANALYTIC))
def test_magic_matches_analytic_macs(ip, name, seq):  # noqa: F811 - the fixture
    model, cfg = built(name)
    ip.user_ns.update(hf=model, hf_inputs=inputs_for(name, cfg, seq))
    _, err = run(ip, "%%profile_flops --no-latency -o hf_prof\nhf(**hf_inputs)")
    assert err is None
    assert ip.user_ns["hf_prof"].total_macs == ANALYTIC[name](cfg, 1, seq)


def test_with_latency_counts_the_same():
    model, cfg = built("llama")
    prof = nbopt.profile(model, inputs_for("llama", cfg, 128), warmup=0, repeat=1)
    assert prof.execution == "real" and prof.total_macs == llama_like_macs(cfg, 1, 128)


# --- 2. attention formulas chosen by op, never by shape ---------------------------------------------------
def test_sdpa_enable_gqa_counts_every_query_head():
    q, kv = torch.randn(1, 8, 128, 64), torch.randn(1, 2, 128, 64)
    want = 2 * 1 * 8 * 128 * 128 * 64                    # 2 * B * Hq * L * S * D = 16,777,216
    assert want == 16_777_216
    assert count_cost(F.scaled_dot_product_attention, q, kv, kv, enable_gqa=True).macs == want
    with torch.inference_mode():                         # reaches the counter whole: its own formula
        assert count_cost(F.scaled_dot_product_attention, q, kv, kv, enable_gqa=True).macs == want
    meta = [t.to("meta") for t in (q, kv, kv)]
    assert count_cost(F.scaled_dot_product_attention, *meta, enable_gqa=True).macs == want


def test_agrees_with_torch_flop_counter_on_grouped_heads():
    from torch.utils.flop_counter import sdpa_flop_count
    q, kv = torch.randn(2, 8, 32, 16), torch.randn(2, 2, 32, 16)
    macs = count_cost(F.scaled_dot_product_attention, q, kv, kv, enable_gqa=True).macs
    assert 2 * macs == sdpa_flop_count(q.shape, kv.shape, kv.shape)   # FLOPs = 2 x MACs


@pytest.mark.parametrize("op", ["_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_attention_math"])
def test_bhsd_kernels_with_grouped_heads(op):
    """(B, H, S, D) with 4 query heads and 2 key/value heads, S == 2 * H: shapes alone are ambiguous."""
    q, kv = torch.randn(1, 4, 8, 16), torch.randn(1, 2, 8, 16)
    fn = getattr(torch.ops.aten, op)
    args = (q, kv.repeat_interleave(2, 1), kv.repeat_interleave(2, 1)) if "math" in op else (q, kv, kv)
    assert count_cost(fn, *args).macs == 2 * 1 * 4 * 8 * 8 * 16


def test_flash_attention_forward_layout_is_bshd():
    """PyTorch's test_flop_counter case: q/k/v (2, 128, 8, 64) in _flash_attention_forward's (B, S, H, D)."""
    q = torch.empty(2, 128, 8, 64, device="meta")
    macs = count_cost(torch.ops.aten._flash_attention_forward, q, q, q, None, None, 128, 128, 0.0, False,
                      False).macs
    assert macs == 2 * 2 * 8 * 128 * 128 * 64            # FLOPs 4 * B * H * S^2 * D, as flop_counter's test
    kv = torch.empty(2, 128, 2, 64, device="meta")       # GQA in (B, S, H, D): still every query head
    assert count_cost(torch.ops.aten._flash_attention_forward, q, kv, kv, None, None, 128, 128, 0.0, True,
                      False).macs == macs


def test_causal_and_windowed_attention_count_the_full_scores():
    q = torch.randn(1, 4, 64, 16)
    full = count_cost(F.scaled_dot_product_attention, q, q, q).macs
    assert full == 2 * 4 * 64 * 64 * 16
    assert count_cost(F.scaled_dot_product_attention, q, q, q, is_causal=True).macs == full
    window = torch.ones(64, 64, dtype=torch.bool).tril().triu(-8)     # a sliding window of 8 as a mask
    assert count_cost(F.scaled_dot_product_attention, q, q, q, attn_mask=window).macs == full


def test_attention_rows_keep_their_attribution_on_meta_and_real():
    model, cfg = built("mixtral")
    heads, d, s = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads, 128
    for execution in ("auto", "real"):
        prof = nbopt.profile(model, inputs_for("mixtral", cfg, s), latency=False, execution=execution)
        for layer in range(cfg.num_hidden_layers):   # the attention's own MACs land on the attention module
            assert prof.table.loc[f"model.layers.{layer}.self_attn", "macs"] == _attention(1, heads, s, s, d)


# --- 3. mixture of experts: aten._grouped_mm -------------------------------------------------------------
class GroupedMM(nn.Module):
    def forward(self, x, w, offs):
        return torch._grouped_mm(x, w, offs=offs)


def test_grouped_mm_reads_the_groups():
    x, w = torch.randn(10, 8), torch.randn(3, 8, 4)
    offs = torch.tensor([3, 7, 10], dtype=torch.int32)       # 3, 4 and 3 rows for the three experts
    assert count_cost(torch._grouped_mm, x, w, offs=offs).macs == (3 + 4 + 3) * 8 * 4
    ends_early = torch.tensor([2, 5, 6], dtype=torch.int32)  # rows past the last offset are skipped
    assert count_cost(torch._grouped_mm, x, w, offs=ends_early).macs == 6 * 8 * 4
    prof = nbopt.profile(GroupedMM(), (x, w, offs), latency=False, execution="meta")  # no values: all rows
    assert prof.execution == "meta" and prof.total_macs == 10 * 8 * 4


def test_moe_routing_ops_are_classified():
    model, cfg = built("qwen2_moe")
    prof = nbopt.profile(model, inputs_for("qwen2_moe", cfg, 16), latency=False, execution="real")
    assert prof.uncounted == {} and prof.coverage == 1.0
    ids = torch.tensor([3, 1, 2])
    assert count_cost(torch.floor_divide, ids, 2).flops == 0          # integer index arithmetic
    assert count_cost(torch.histc, ids.float(), 4, 0, 3).flops == 0
    acc = count_cost(lambda a: torch.zeros(4, 2).index_add_(0, ids, a), torch.randn(3, 2))
    assert acc.flops == 6                                              # one add per source element


def test_a_model_that_needs_data_says_why_it_ran_real():
    class Branchy(nn.Module):
        def forward(self, x):
            return x @ x.T if bool(x.sum() > -1e9) else x

    prof = nbopt.profile(Branchy(), torch.randn(4, 3), latency=False)
    assert prof.execution == "real" and prof.total_macs == 4 * 3 * 4
    assert any(n.startswith("counted on real tensors") for n in prof.notes)


# --- 4. KV caches and other non-tensor inputs are never changed -----------------------------------------------
def _decode_step(seq: int = 512):
    model, cfg = built("llama")
    ids = hf_models.ids(cfg, 1, seq)
    with torch.no_grad():
        cache = model(input_ids=ids, use_cache=True).past_key_values
    return model, cfg, cache, {"input_ids": ids[:, -1:], "past_key_values": cache, "use_cache": True}


@pytest.mark.parametrize("options", [dict(latency=False), dict(latency=False, execution="real"),
                                     dict(warmup=1, repeat=2)])
def test_profiling_a_decode_step_leaves_the_cache_alone(options):
    model, cfg, cache, step = _decode_step()
    assert cache.get_seq_length() == 512
    first = nbopt.profile(model, step, **options)
    second = nbopt.profile(model, step, **options)
    assert cache.get_seq_length() == 512                              # was 513, then 514
    want = llama_like_macs(cfg, 1, 1, ctx=513)                         # one token attending to 513 keys
    assert first.total_macs == second.total_macs == want
    assert any("fresh copy" in n for n in first.notes)


# --- 5. big models without memory -------------------------------------------------------------------------
def test_meta_model_counts_without_allocating():
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(hidden_size=4096, num_hidden_layers=2, num_attention_heads=32, num_key_value_heads=8,
                      intermediate_size=11008, vocab_size=32000)       # 7B-like layers: 2.5 GB of fp32 weights
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    prof = nbopt.profile(model, {"input_ids": torch.randint(0, 32000, (1, 128)), "use_cache": False},
                         latency=False)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024   # ru_maxrss is in KiB
    assert grown_mb < 500
    assert all(p.is_meta for p in model.parameters())                  # nothing was materialized
    assert prof.execution == "meta" and prof.latency_ms is None and prof.notes == []
    assert prof.total_macs == llama_like_macs(cfg, 1, 128)
    assert prof.total_params == sum(p.numel() for p in model.parameters())
    assert prof.table.loc["model.layers.1.mlp", "macs_total"] == 3 * 128 * 4096 * 11008   # per-layer rows
    with pytest.raises(nbopt.errors.NboptError, match="meta device"):     # no data to time
        nbopt.profile(model, {"input_ids": torch.randint(0, 32000, (1, 8))})
    with pytest.raises(nbopt.errors.InputError, match="latency=False"):
        nbopt.profile(model, {"input_ids": torch.randint(0, 32000, (1, 8), device="meta")})
    with pytest.raises(nbopt.errors.InputError, match="meta device"):
        nbopt.profile(model, {"input_ids": torch.randint(0, 32000, (1, 8))}, latency=False, execution="real")


# --- 6. generation: one row per forward call --------------------------------------------------------------
def _expected_calls(cfg, prompt: int, new: int) -> list[int]:
    return ([llama_like_macs(cfg, 1, prompt, last_logits=True)]
            + [llama_like_macs(cfg, 1, 1, ctx=prompt + i) for i in range(1, new)])


def test_profile_a_generate_callable_reports_each_forward():
    model, cfg = built("llama")
    ids = hf_models.ids(cfg, 1, 16)
    gen = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        plain = model.generate(ids, **gen)
    prof = nbopt.profile(lambda: model.generate(ids, **gen), latency=False)
    calls = prof.calls
    assert list(calls["macs"]) == _expected_calls(cfg, 16, 4)          # prefill, then 3 decode steps
    assert list(calls["input_tokens"]) == [16, 1, 1, 1]
    assert list(calls["context_tokens"]) == [16, 17, 18, 19]
    kv_heads, d = cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    per_token = cfg.num_hidden_layers * 2 * kv_heads * d * 4          # K and V, fp32, every layer
    assert list(calls["kv_bytes_read"]) == [per_token * n for n in (16, 17, 18, 19)]
    assert list(calls["macs_per_generated_token"]) == list(calls["macs"])  # batch 1: one token per call
    assert prof.total_macs == sum(calls["macs"]) and prof.uncounted == {}
    with torch.no_grad():
        assert torch.equal(model.generate(ids, **gen), plain)          # profiling changed nothing


def test_generate_in_the_magic_and_with_latency(ip):  # noqa: F811 - the fixture
    model, cfg = built("llama")
    ip.user_ns.update(hf=model, hf_ids=hf_models.ids(cfg, 2, 8))
    _, err = run(ip, "%%profile_flops --no-latency -o gen_prof\n"
                     "hf.generate(hf_ids, max_new_tokens=3, do_sample=False, pad_token_id=0)")
    assert err is None
    calls = ip.user_ns["gen_prof"].calls
    assert list(calls["input_tokens"]) == [16, 2, 2]                   # batch 2
    assert list(calls["macs"]) == [llama_like_macs(cfg, 2, 8, last_logits=True)] + [
        llama_like_macs(cfg, 2, 1, ctx=8 + i) for i in (1, 2)]
    assert list(calls["macs_per_generated_token"]) == [m / 2 for m in calls["macs"]]
    timed = nbopt.profile(lambda: model.generate(hf_models.ids(cfg, 1, 8), max_new_tokens=3, do_sample=False,
                                                 pad_token_id=0), warmup=0, repeat=1)
    assert timed.latency_ms > 0 and len(timed.calls) == 3              # replays saw the caches they were given


def test_single_forward_has_one_call_row():
    model, cfg = built("gpt2")
    prof = nbopt.profile(model, inputs_for("gpt2", cfg, 32), latency=False)
    assert len(prof.calls) == 1 and prof.calls["macs"].iloc[0] == prof.total_macs
