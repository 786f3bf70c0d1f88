"""A compiled decode step of weight-only programs (``WeightOnlyResult.decode_step``) computes what the eager
program computes: same logits (closely) and the same greedy tokens, with a StaticCache. Compiling takes minutes
on 2 shared cores even for a tiny config, so these run with NBOPT_SLOW=1 only."""
from __future__ import annotations

import os

import pytest
import torch

from nbopt.quantization.weight_only import quantize_weights
from tests.conftest import Untouched

pytestmark = pytest.mark.skipif(os.environ.get("NBOPT_SLOW") != "1", reason="torch.compile: set NBOPT_SLOW=1")


@torch.no_grad()
def _greedy(model, step, ids, tokens, static):
    from transformers import DynamicCache, StaticCache
    n = ids.shape[1]
    cache = StaticCache(config=model.config, max_cache_len=n + tokens) if static else DynamicCache()
    out = model(input_ids=ids, past_key_values=cache, use_cache=True, cache_position=torch.arange(n))
    nxt, seen, logits = out.logits[:, -1:].argmax(-1), [], []
    for i in range(tokens):
        out = step(input_ids=nxt, past_key_values=cache, use_cache=True, cache_position=torch.tensor([n + i]))
        nxt = out.logits[:, -1:].argmax(-1)
        seen.append(int(nxt))
        logits.append(out.logits[0, -1])
    return seen, torch.stack(logits)


@pytest.mark.parametrize("bits,group_size,kernel", [(8, None, "aten"), (4, 32, "onnxruntime")])
def test_decode_step_matches_eager_program(bits, group_size, kernel):
    pytest.importorskip("transformers")
    if kernel == "onnxruntime":
        pytest.importorskip("onnxruntime")
    from tests.hf_models import ids, llama
    model, cfg = llama()
    prompt = ids(cfg, batch=1, seq=8)
    snap = Untouched(model)
    r = quantize_weights(model, bits, group_size, kernel=kernel, progress=False)
    eager_tokens, eager_logits = _greedy(r.model, r.model, prompt, 6, static=False)
    tokens, logits = _greedy(r.model, r.decode_step(), prompt, 6, static=True)
    snap.assert_unchanged()
    assert tokens == eager_tokens
    assert float((logits - eager_logits).abs().max()) < 1e-3 * max(1.0, float(eager_logits.abs().max()))
