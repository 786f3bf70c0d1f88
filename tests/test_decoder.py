"""A causal LM exported as one onnxruntime program (``nbopt.export_decoder``): the same logits as transformers at
the prefill and at every decode step, the same greedy tokens as ``generate``, weight-only layers as MatMulNBits
nodes holding the very codes of the torch program, and clear errors for what it cannot export."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nbopt.errors import InputError
from tests.conftest import Untouched

pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from nbopt.deployment import export_decoder  # noqa: E402
from nbopt.quantization.weight_only import codes, quantize_weights, unpack_nbits  # noqa: E402
from tests.hf_models import ids, llama, qwen2  # noqa: E402


@pytest.fixture(scope="module")
def gqa():
    return llama()  # 2 layers, 4 query heads, 2 key/value heads


@pytest.fixture(scope="module")
def fp32_decoder(gqa):
    model, _ = gqa
    snap = Untouched(model)
    dec = export_decoder(model)
    snap.assert_unchanged()
    return dec


@torch.no_grad()
def _logits(model, tokens):
    return model(input_ids=tokens).logits.float().numpy()


def test_fp32_decoder_matches_transformers_step_by_step(gqa, fp32_decoder):
    model, cfg = gqa
    dec = fp32_decoder
    tokens = ids(cfg, batch=1, seq=10, seed=1)
    full = _logits(model, tokens)
    logits, cache = dec.prefill(tokens[:, :7])
    np.testing.assert_allclose(logits[0], full[0, 6], atol=1e-4)
    assert [c.shape for c in cache[:2]] == [(1, 2, 7, 16)] * 2   # (batch, kv heads, tokens, head dim)
    for i in range(7, 10):
        logits, cache = dec.step(tokens[:, i:i + 1], cache)
        np.testing.assert_allclose(logits[0], full[0, i], atol=1e-4)
    assert cache[0].shape[2] == 10 and len(cache) == 2 * cfg.num_hidden_layers
    assert dec.matmul_nbits == 0 and dec.max_abs_error < 1e-4


def test_decoder_generates_what_transformers_generates(gqa, fp32_decoder):
    model, cfg = gqa
    dec = fp32_decoder
    prompt = ids(cfg, batch=1, seq=6, seed=2)
    with torch.no_grad():
        ref = model.generate(prompt, max_new_tokens=8, do_sample=False, min_new_tokens=8)
    assert dec.generate(prompt, 8).tolist() == ref.tolist()
    two = ids(cfg, batch=2, seq=5, seed=3)   # batches of equal-length prompts: batch is symbolic too
    np.testing.assert_allclose(dec.prefill(two)[0], _logits(model, two)[:, -1], atol=1e-4)


@pytest.mark.parametrize("bits,group", [(4, 32), (8, None)])
def test_weight_only_decoder_runs_the_codes_of_the_torch_program(gqa, bits, group):
    model, cfg = gqa
    r = quantize_weights(model, bits, group, kernel="onnxruntime", progress=False)
    dec = r.decoder()
    assert dec.matmul_nbits == len(r.layers) == 2 * 7 + 1   # q k v o gate up down per layer, and lm_head
    tokens = ids(cfg, batch=1, seq=9, seed=4)
    program = _logits(r.model, tokens)                      # per-layer MatMulNBits sessions, the same kernels
    logits, cache = dec.prefill(tokens[:, :8])
    np.testing.assert_allclose(logits[0], program[0, 7], atol=1e-4)
    logits, _ = dec.step(tokens[:, 8:], cache)
    np.testing.assert_allclose(logits[0], program[0, 8], atol=1e-4)
    assert np.abs(logits[0] - _logits(model, tokens)[0, 8]).max() > 1e-3   # really quantized
    graph = onnx.load(str(dec.path), load_external_data=False).graph
    shapes = {i.name: tuple(i.dims) for i in graph.initializer}
    packed = [shapes[n.input[1]] for n in graph.node if n.op_type == "MatMulNBits"]
    q = r.model.get_submodule("model.layers.0.self_attn.q_proj")
    assert tuple(q.weight.shape) in packed          # uint8 (out, blocks, bytes per block): the layer's own codes
    per_byte = 2 if bits == 4 else 1
    assert q.weight.shape[-1] * q.weight.shape[-2] * per_byte == cfg.hidden_size


def test_qwen2_with_projection_bias_exports_and_decodes():
    model, cfg = qwen2()   # q/k/v projections carry a bias
    r = quantize_weights(model, 4, 32, kernel="onnxruntime", progress=False)
    dec = r.decoder()
    tokens = ids(cfg, batch=1, seq=6, seed=5)
    np.testing.assert_allclose(dec.prefill(tokens)[0][0], _logits(r.model, tokens)[0, -1], atol=1e-4)


def test_packed_layout_unpacks_to_the_codes():
    torch.manual_seed(0)
    w = torch.randn(24, 96)
    for bits, group in ((4, 32), (8, None)):
        layer = torch.nn.Sequential(torch.nn.Linear(96, 24, bias=False))
        layer[0].weight.data.copy_(w)
        q = quantize_weights(layer, bits, group, kernel="onnxruntime", progress=False).model[0]
        got = unpack_nbits(q.weight, q.scales, q.zero_points, 96, bits, q.block_size)
        c, qp = codes(w, bits, group)
        g = group or 96
        zero = qp.zero_point.reshape(24, -1) if bits == 4 else torch.zeros(24, 1)
        expected = ((c.reshape(24, -1, g).float() - zero.reshape(24, -1, 1).float())
                    * qp.scale.reshape(24, -1, 1)).reshape(24, 96)
        torch.testing.assert_close(got, expected)


def test_errors_name_the_problem_and_the_fix(gqa):
    model, cfg = gqa
    aten = quantize_weights(model, 8, kernel="aten", progress=False)
    with pytest.raises(InputError, match="kernel='onnxruntime'"):
        aten.decoder()
    with pytest.raises(InputError, match="kernel='onnxruntime'"):
        export_decoder(aten.model)
    with pytest.raises(InputError, match="causal language model"):
        export_decoder(torch.nn.Linear(4, 4))


def test_mixture_of_experts_exports_with_every_expert_computed():
    from tests.hf_models import mixtral
    model, cfg = mixtral()
    before = model.config._experts_implementation
    dec = export_decoder(model)
    assert model.config._experts_implementation == before   # set on the exported copy only
    prompt = ids(cfg, batch=1, seq=6, seed=6)
    with torch.no_grad():
        ref = model.generate(prompt, max_new_tokens=5, do_sample=False, min_new_tokens=5)
    assert dec.generate(prompt, 5).tolist() == ref.tolist()
