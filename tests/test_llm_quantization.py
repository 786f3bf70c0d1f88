"""Weight-only int8/int4 kernels, group-wise fake quantization, GPTQ and LM metrics (issue 14)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nbopt.errors import InputError
from nbopt.quantization.gptq import gptq_quantize, hessian, rtn_quantize
from nbopt.quantization.metrics import fidelity, kl_divergence, lm_fidelity
from nbopt.quantization.observers import (dequantize_groupwise, fake_quant, groupwise_qparams,
                                          quantize_groupwise)
from nbopt.quantization.weight_only import (Int4WeightOnlyLinear, Int8WeightOnlyLinear, codes,
                                            quantize_weights)
from tests.conftest import Untouched


def test_groupwise_qparams_hand_computed():
    w = torch.tensor([[0.0, 1.0, -2.5, 4.0, 0.5, 0.25, -0.5, 1.5]])
    qp = groupwise_qparams(w, 4, 4, symmetric=True)  # groups [0, 1, -2.5, 4] and [.5, .25, -.5, 1.5]
    assert qp.granularity == "per_group" and qp.scale.shape == (1, 2)
    assert torch.allclose(qp.scale, torch.tensor([[4 / 7, 1.5 / 7]]))
    q = quantize_groupwise(w, qp)
    assert q.tolist() == [[0, 2, -4, 7, 2, 1, -2, 7]]  # round(w / scale)
    deq = dequantize_groupwise(q, qp)
    assert torch.allclose(fake_quant(w, qp), deq)
    assert float((deq - w).abs().max()) <= float(qp.scale.max()) / 2 + 1e-6
    asym = groupwise_qparams(w, 4, 4)  # [lo, hi] over 15 steps, zero exactly representable
    assert torch.allclose(asym.scale, torch.tensor([[6.5 / 15, 2 / 15]]))
    assert dequantize_groupwise(quantize_groupwise(torch.zeros(1, 8), asym), asym).abs().max() == 0
    with pytest.raises(InputError, match="group_size"):
        groupwise_qparams(w, 4, 3)


def _bf16_ref(x, w):
    return (x.bfloat16().float() @ w.T)


def test_int8_kernel_matches_dequantized_weights():
    torch.manual_seed(0)
    w, b, x = torch.randn(48, 64), torch.randn(48), torch.randn(3, 5, 64)
    layer = Int8WeightOnlyLinear.from_weight(w, b)
    assert layer.weight.dtype == torch.int8 and layer.weight.shape == (48, 64)
    deq = layer.weight.float() * layer.scales.float()[:, None]
    y = layer(x)
    assert y.shape == (3, 5, 48) and y.dtype == torch.float32
    ref = _bf16_ref(x, deq) + b
    assert float((y - ref).abs().max()) < 0.05 * float(ref.abs().max())


@pytest.mark.parametrize("group_size,symmetric,out", [(32, False, 48), (64, True, 24), (128, False, 16)])
def test_int4_kernel_matches_dequantized_weights(group_size, symmetric, out):
    torch.manual_seed(0)
    w, x = torch.randn(out, 128), torch.randn(4, 128)
    q, qp = codes(w, 4, group_size, symmetric=symmetric)
    layer = Int4WeightOnlyLinear(q, qp, None)  # out=24 is padded to 32 rows inside
    assert layer.weight.dtype == torch.uint8
    assert layer.weight.numel() == (out + (-out % 16)) * 128 // 2  # two 4-bit codes per byte
    ref = _bf16_ref(x, dequantize_groupwise(q, qp))
    y = layer(x)
    assert y.shape == (4, out)
    assert float((y - ref).abs().max()) < 0.02 * float(ref.abs().max())


@pytest.fixture(scope="module")
def tiny_llama():
    pytest.importorskip("transformers")
    from tests.hf_models import ids, llama
    model, cfg = llama()
    return model, ids(cfg, batch=2, seq=16)


@pytest.mark.parametrize("bits,group_size", [(8, None), (4, 32), (4, 64)])
def test_quantize_weights_on_llama(tiny_llama, bits, group_size):
    model, x = tiny_llama
    snap = Untouched(model)
    ref = model(x).logits
    r = quantize_weights(model, bits, group_size, progress=False)
    snap.assert_unchanged()
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert sorted(r.layers) == sorted(linears) and not r.skipped
    want = torch.int8 if bits == 8 else torch.uint8
    for name in linears:
        assert r.model.get_submodule(name).weight.dtype == want
    n_lin = sum(model.get_submodule(n).weight.numel() for n in linears)
    assert r.fp32_bytes - r.size_bytes > n_lin * (4 - bits / 8) * 0.9  # weight bytes really shrank
    y = r.model(x).logits
    agree = float((y.argmax(-1) == ref.argmax(-1)).float().mean())
    assert agree >= (0.9 if bits == 8 else 0.5)


def test_quantize_weights_errors(tiny_llama):
    model, _ = tiny_llama
    with pytest.raises(InputError, match="bits=3"):
        quantize_weights(model, 3)
    with pytest.raises(InputError, match="group_size=None"):
        quantize_weights(model, 8, 32)
    with pytest.raises(InputError, match="calib"):
        quantize_weights(model, 4, method="gptq")


def test_torchao_int8_weight_only(tiny_llama):
    pytest.importorskip("torchao")
    model, x = tiny_llama
    r = quantize_weights(model, 8, kernel="torchao", progress=False)
    assert r.layers and all(d == "Int8Tensor[int8]" for d in r.weight_dtypes.values())
    assert r.size_bytes < r.fp32_bytes / 2
    assert float((r.model(x).logits.argmax(-1) == model(x).logits.argmax(-1)).float().mean()) >= 0.9


def _naive_gptq(W, H, bits, damp=0.01):
    """The paper's update rule, one column at a time with the explicit inverse of the remaining Hessian."""
    W, H = W.double().clone(), H.double().clone()
    H += damp * torch.diag(H).mean() * torch.eye(H.shape[0], dtype=H.dtype)
    qp = groupwise_qparams(W.float(), bits, W.shape[1], symmetric=False)
    s, z = qp.scale.double()[:, 0], qp.zero_point.double()[:, 0]
    Q = torch.zeros_like(W)
    for i in range(W.shape[1]):
        Hinv = torch.linalg.inv(H[i:, i:])
        q = torch.clamp(torch.round(W[:, i] / s) + z, 0, 2 ** bits - 1)
        Q[:, i] = q
        err = (W[:, i] - (q - z) * s) / Hinv[0, 0]
        W[:, i:] -= err[:, None] * Hinv[0][None, :]
    return Q


def test_gptq_follows_the_update_rule_and_beats_rtn():
    torch.manual_seed(0)
    X = torch.randn(256, 32) @ torch.randn(32, 32)  # correlated inputs: where error compensation pays
    W = torch.randn(8, 32)
    H = hessian(X)
    q, qp = gptq_quantize(W, H, 4, None, block_size=8)  # lazy blocks of 8 columns
    assert torch.equal(q.double(), _naive_gptq(W, H, 4))
    deq_g = dequantize_groupwise(q, qp)
    qr, qpr = rtn_quantize(W, 4, None)
    err_g = float((X @ (W - deq_g).T).pow(2).sum())
    err_r = float((X @ (W - dequantize_groupwise(qr, qpr)).T).pow(2).sum())
    assert err_g < err_r
    qg, qpg = gptq_quantize(W, H, 4, 8)  # group-wise as well
    qrg, qprg = rtn_quantize(W, 4, 8)
    assert float((X @ (W - dequantize_groupwise(qg, qpg)).T).pow(2).sum()) < \
        float((X @ (W - dequantize_groupwise(qrg, qprg)).T).pow(2).sum())


def test_kl_divergence_hand_computed():
    p = torch.tensor([[[0.0, 1.0]]])  # (1, e) / (1 + e): argmax 1
    q = torch.tensor([[[math.log(3.0), 0.0]]])  # (3/4, 1/4): argmax 0
    p0, p1 = 1 / (1 + math.e), math.e / (1 + math.e)
    want = p0 * math.log(p0 / 0.75) + p1 * math.log(p1 / 0.25)
    assert kl_divergence([p], [q]) == pytest.approx(want, rel=1e-5)
    assert kl_divergence([q], [q]) == pytest.approx(0.0, abs=1e-7)
    f = fidelity([p], [q])
    assert f["kl_div"] == pytest.approx(want, rel=1e-5) and f["top1_agreement"] == 0.0


def test_lm_fidelity_on_llama(tiny_llama):
    model, x = tiny_llama
    same = lm_fidelity(model, model, [x])
    assert same["token_top1"] == 1.0 and same["kl_div"] == pytest.approx(0.0, abs=1e-6)
    r = quantize_weights(model, 4, 32, progress=False)
    q = lm_fidelity(model, r.model, [x], perplexity=lambda m: 1.0)
    assert 0 < q["kl_div"] and 0.5 <= q["token_top1"] < 1.0 and q["perplexity"] == 1.0


def test_simulated_groupwise_quantize(tiny_llama):
    """quantize(mode='simulate', granularity='per_group32') rounds every linear weight group-wise."""
    import nbopt
    model, x = tiny_llama
    r = nbopt.quantize(model, [x], weight_bits=4, act_bits=None, granularity="per_group32", symmetric=False,
                       progress=False, repeat=3)
    name = "model.layers.0.mlp.down_proj"
    w, wq = model.get_submodule(name).weight, r.model.get_submodule(name).weight
    qp = groupwise_qparams(w, 4, 32)
    assert torch.allclose(wq, dequantize_groupwise(quantize_groupwise(w, qp), qp), atol=1e-6)
    per_channel = nbopt.quantize(model, [x], weight_bits=4, act_bits=None, symmetric=False, progress=False,
                                 repeat=3)
    err = lambda m: float((m.get_submodule(name).weight - w).detach().pow(2).sum())  # noqa: E731
    assert err(r.model) < err(per_channel.model)  # finer groups: smaller rounding error
    assert r.fidelity["kl_div"] <= per_channel.fidelity["kl_div"] * 1.5


def test_groupwise_transposed_layout():
    torch.manual_seed(0)
    w = torch.randn(64, 8)  # (in, out) like transformers' Conv1D
    qp = groupwise_qparams(w, 4, 32, axis=1)
    assert qp.scale.shape == (8, 2)
    assert torch.allclose(fake_quant(w, qp), fake_quant(w.t().contiguous(), groupwise_qparams(w.t(), 4, 32)).t())


@pytest.fixture(scope="module")
def demo_lm():
    pytest.importorskip("transformers")
    from nbopt.demo import lm
    return lm, lm.load(), lm.calibration_data(16, 128)


CHUNKS = 16  # 4k held-out tokens: seconds per perplexity


def test_demo_lm_int8_within_one_percent(demo_lm):
    lm, model, _ = demo_lm
    snap = Untouched(model)
    base = lm.perplexity(model, chunks=CHUNKS)
    r = quantize_weights(model, 8, progress=False)
    snap.assert_unchanged()
    assert all(d == "int8" for d in r.weight_dtypes.values()) and len(r.layers) == 29
    assert abs(lm.perplexity(r.model, chunks=CHUNKS) / base - 1) < 0.01


def test_demo_lm_gptq_beats_rtn_at_4_bits(demo_lm):
    """Measured with 64 windows (benchmarks/llm_quality.py): fp32 8.921, RTN g128 9.022, GPTQ g128 8.927."""
    lm, model, calib = demo_lm
    snap = Untouched(model)
    base = lm.perplexity(model, chunks=CHUNKS)
    rtn = quantize_weights(model, 4, 128, progress=False)
    gptq = quantize_weights(model, 4, 128, method="gptq", calib=calib, progress=False)
    snap.assert_unchanged()
    assert gptq.size_bytes == rtn.size_bytes < model_bytes(model) / 5
    p_rtn, p_gptq = lm.perplexity(rtn.model, chunks=CHUNKS), lm.perplexity(gptq.model, chunks=CHUNKS)
    assert p_gptq < p_rtn
    assert (p_rtn - base) > 2 * (p_gptq - base)  # GPTQ removes most of RTN's loss


def model_bytes(model):
    from nbopt.model_state import size_bytes
    return size_bytes(model)


# ---------------------------------------------------------------- onnxruntime MatMulNBits kernels (kernel="onnxruntime")

@pytest.mark.parametrize("bits,group_size,symmetric,k", [(8, None, True, 100), (4, 32, False, 128),
                                                          (4, 64, True, 128)])
def test_matmul_nbits_kernel_matches_dequantized_weights(bits, group_size, symmetric, k):
    pytest.importorskip("onnxruntime")
    from nbopt.quantization.weight_only import MatMulNBitsLinear
    torch.manual_seed(0)
    w, b, x = torch.randn(24, k), torch.randn(24), torch.randn(3, 5, k)
    q, qp = codes(w, bits, group_size, symmetric=symmetric)
    layer = MatMulNBitsLinear.from_codes(q, qp, b)
    assert layer.weight.dtype == torch.uint8
    if bits == 8:  # K=100: blocks of 32, the last one padded with the zero code 128
        assert layer.block_size == 32 and layer.weight.shape == (24, 4, 32)
        assert torch.equal(layer.weight.reshape(24, -1)[:, :k].int(), q + 128)
        assert (layer.weight.reshape(24, -1)[:, k:] == 128).all() and (layer.zero_points == 128).all()
        deq = q.float() * qp.scale
    else:  # two codes per byte, the even input in the low nibble
        assert layer.weight.numel() == 24 * k // 2
        u = q - qp.qmin if symmetric else q
        flat = layer.weight.reshape(24, -1).int()
        assert torch.equal(flat & 15, u[:, 0::2]) and torch.equal(flat >> 4, u[:, 1::2])
        deq = dequantize_groupwise(q, qp)
    ref = x @ deq.T + b
    y = layer(x)
    assert y.shape == (3, 5, 24) and y.dtype == torch.float32
    # accuracy_level=4 rounds each block of activations to int8: within 2% of the largest output
    assert float((y - ref).abs().max()) < 0.02 * float(ref.abs().max())


def _kernel_bytes(layer):
    return sum(t.numel() * t.element_size() for t in layer.buffers())


@pytest.mark.parametrize("bits,group_size", [(8, None), (4, 32)])
def test_quantize_weights_onnxruntime_matches_aten_program(tiny_llama, bits, group_size):
    pytest.importorskip("onnxruntime")
    import copy
    import pickle
    from nbopt.quantization.weight_only import MatMulNBitsLinear
    model, x = tiny_llama
    snap = Untouched(model)
    aten = quantize_weights(model, bits, group_size, progress=False)
    ort = quantize_weights(model, bits, group_size, kernel="onnxruntime", progress=False)
    snap.assert_unchanged()
    assert ort.kernel == "onnxruntime" and sorted(ort.layers) == sorted(aten.layers)
    expect = 0
    for name in ort.layers:
        layer, n, k = ort.model.get_submodule(name), *model.get_submodule(name).weight.shape
        assert isinstance(layer, MatMulNBitsLinear) and layer.weight.dtype == torch.uint8
        blocks = -(-k // layer.block_size)
        # codes (1 byte per int8 code, half for int4) + fp32 scales + zero points (1 or 1/2 byte) per block
        expect_layer = n * k * bits // 8 + n * blocks * 4 + n * (blocks if bits == 8 else -(-blocks // 2))
        assert _kernel_bytes(layer) == expect_layer
        expect += expect_layer
    float_rest = ort.fp32_bytes - sum(model.get_submodule(n).weight.numel() * 4 for n in ort.layers)  # no biases
    assert ort.size_bytes == expect + float_rest
    ya, yo = aten.model(x).logits.detach(), ort.model(x).logits.detach()
    scale = float(ya.abs().max())
    assert float((ya - yo).abs().max()) < 0.05 * scale  # bf16 activations (aten) vs int8 blocks (onnxruntime)
    assert float((ya.argmax(-1) == yo.argmax(-1)).float().mean()) >= 0.9
    twin = copy.deepcopy(ort.model)  # the sessions are not copied: rebuilt on first use
    assert torch.equal(twin(x).logits.detach(), yo)
    assert torch.equal(pickle.loads(pickle.dumps(ort.model))(x).logits.detach(), yo)


def test_quantize_weights_auto_times_both_kernels(tiny_llama):
    pytest.importorskip("onnxruntime")
    from nbopt.quantization.weight_only import Int4WeightOnlyLinear, MatMulNBitsLinear
    model, x = tiny_llama
    r = quantize_weights(model, 4, 32, kernel="auto", progress=False)
    assert r.kernel in ("aten", "onnxruntime")
    cls = MatMulNBitsLinear if r.kernel == "onnxruntime" else Int4WeightOnlyLinear
    assert all(isinstance(r.model.get_submodule(n), cls) for n in r.layers)
    assert r.notes[0].startswith(f"kernel='auto' picked {r.kernel}: ") and "ms per token" in r.notes[0]


def test_demo_lm_onnxruntime_int8_greedy_tokens(demo_lm):
    pytest.importorskip("onnxruntime")
    lm, model, _ = demo_lm
    ids = lm.example_input()[:1, :32]
    ort = quantize_weights(model, 8, kernel="onnxruntime", progress=False).model

    @torch.no_grad()
    def greedy(m, n=16):
        seq = ids
        for _ in range(n):
            seq = torch.cat([seq, m(seq).logits[:, -1:].argmax(-1)], 1)
        return seq[0, ids.shape[1]:].tolist()
    assert greedy(ort) == greedy(model)  # int8 weights and int8 activation blocks keep the greedy text
    assert abs(lm.perplexity(ort, chunks=CHUNKS) / lm.perplexity(model, chunks=CHUNKS) - 1) < 0.01
