"""Hugging Face models through int8, export and compatibility (issue 13 items 4 and 6).

* KV caches: with the default ``use_cache=True`` the int8 paths, every export format and compatibility turn the
  cache off on their private copy (a ``DynamicCache`` cannot be a graph output) and say so in the notes; the
  user's ``config.use_cache`` stays True. int8 programs and exported runtimes return the model's ``ModelOutput``.
* ``transformers.pytorch_utils.Conv1D`` (GPT-2) is quantized as a linear, per output channel (weight dim 1).
"""
from __future__ import annotations

import os
import warnings

import pytest
import torch
from torch import nn

import nbopt
from nbopt.errors import SkippedLayerWarning
from nbopt.layers import is_linear_like, linear_weight_view, out_axis, weighted_layers
from tests import hf_models as hf

transformers = pytest.importorskip("transformers")
SLOW = pytest.mark.skipif(not os.environ.get("NBOPT_SLOW"), reason="set NBOPT_SLOW=1 (torch.compile of a decoder)")
NOTE = "use_cache was turned off"


def _top1(ref: torch.Tensor, out: torch.Tensor) -> float:
    """Per-token top-1 agreement of two (N, T, V) logits."""
    return float((ref.argmax(-1) == out.argmax(-1)).float().mean())


def _llama():
    m, cfg = hf.llama()
    assert m.config.use_cache is True  # the default this file is about
    return m, cfg, hf.ids(cfg, 1, 16), hf.ids(cfg, 1, 16, seed=1)


# ---------------------------------------------------------------- int8 with the cache on by default


def test_int8_onnxruntime_on_llama_turns_the_cache_off_on_its_copy(untouched):
    m, cfg = hf.llama()
    assert m.config.use_cache is True
    x = hf.ids(cfg, 2, 16)  # one calibration batch of 2 sequences: 32 token positions
    snap = untouched(m)
    with torch.no_grad():
        ref = m(x).logits
    r = nbopt.quantize(m, [x], mode="int8", backend="onnxruntime", progress=False, repeat=1)
    assert any(NOTE in n for n in r.notes)
    assert m.config.use_cache is True and m.model.config.use_cache is True
    snap.assert_unchanged()
    out = r.model(x)
    assert isinstance(out, transformers.modeling_outputs.CausalLMOutputWithPast)  # what the model returns
    assert out.logits.shape == (2, 16, cfg.vocab_size)
    agree = _top1(ref, out.logits)
    # the reported agreement is per token (N*T positions), the same number computed here by hand
    assert r.fidelity["top1_agreement"] == pytest.approx(agree)
    assert agree >= 0.8 and r.fidelity["cosine"] > 0.99
    print(f"llama int8 onnxruntime: per-token top-1 {agree:.3f}, cosine {r.fidelity['cosine']:.4f}")


def test_int8_onnxruntime_on_bert_returns_its_model_output(untouched):
    m, cfg = hf.bert()
    x = hf.ids(cfg, 2, 16)
    snap = untouched(m)
    with torch.no_grad():
        ref = m(x)
    r = nbopt.quantize(m, [x], mode="int8", backend="onnxruntime", progress=False, repeat=3)
    out = r.model(x)
    assert type(out) is type(ref) and list(out.keys()) == ["last_hidden_state", "pooler_output"]
    cos = nn.functional.cosine_similarity(ref.last_hidden_state.flatten(1), out.last_hidden_state.flatten(1))
    assert float(cos.min()) > 0.98 and r.fidelity["cosine"] == pytest.approx(float(cos.mean()), abs=1e-5)
    snap.assert_unchanged()


@SLOW
def test_int8_pt2e_on_llama_turns_the_cache_off_on_its_copy():
    m, cfg, x, x2 = _llama()
    with torch.no_grad():
        ref = m(x).logits
    r = nbopt.quantize(m, [x, x2], mode="int8", backend="pt2e", progress=False, repeat=3)
    assert any(NOTE in n for n in r.notes) and m.config.use_cache is True
    out = r.model(x)
    assert isinstance(out, transformers.modeling_outputs.CausalLMOutputWithPast)
    assert _top1(ref, out.logits) >= 0.8


# ---------------------------------------------------------------- export and compatibility


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_llama_with_the_cache_on_by_default(fmt, untouched):
    from nbopt.deployment.runtime import RuntimeModule
    m, cfg, x, _ = _llama()
    snap = untouched(m)
    res = nbopt.export(m, x, fmt, latency=False)
    assert any(NOTE in n for n in res.notes) and m.config.use_cache is True
    assert res.max_abs_diff < 1e-4  # verified in the target runtime against eager fp32
    runtime = RuntimeModule.from_export(res, x)
    out = runtime(x)
    assert isinstance(out, transformers.modeling_outputs.CausalLMOutputWithPast) and list(out.keys()) == ["logits"]
    with torch.no_grad():
        assert torch.allclose(out.logits, m(x).logits, atol=1e-4)
    snap.assert_unchanged()


def test_export_onnx_bert_verifies_both_outputs():
    from nbopt.deployment.runtime import RuntimeModule
    m, cfg = hf.bert()
    x = hf.ids(cfg, 1, 16)
    res = nbopt.export(m, x, "onnx", latency=False)
    assert res.max_abs_diff < 1e-4
    out = RuntimeModule.from_export(res, x)(x)
    with torch.no_grad():
        ref = m(x)
    assert torch.allclose(out.pooler_output, ref.pooler_output, atol=1e-4)


def test_compatibility_on_llama_with_the_cache_on():
    m, cfg, x, _ = _llama()
    df = nbopt.compatibility(m, x, targets=("onnx",))
    assert len(df) and (df["module"] == "model.embed_tokens").any()
    assert any(NOTE in n for n in df.attrs["notes"]) and m.config.use_cache is True


def test_a_cache_passed_in_is_refused_clearly():
    from nbopt.errors import UnsupportedModelError
    m, cfg, x, _ = _llama()
    with torch.no_grad():
        cache = m(x).past_key_values
    with pytest.raises(UnsupportedModelError, match="KV cache .*past_key_values"):
        nbopt.compatibility(m, {"input_ids": x[:, -1:], "past_key_values": cache})


def test_a_non_tensor_output_names_the_object_not_control_flow():
    from nbopt.errors import UnsupportedModelError

    class Box:
        pass

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x), Box()

    with pytest.raises(UnsupportedModelError, match="returns Box") as err:
        nbopt.export(Odd(), torch.randn(2, 4), "onnx", latency=False)
    assert "data-dependent" not in str(err.value) and "\x1b[" not in str(err.value)


# ---------------------------------------------------------------- Conv1D as a linear


def test_conv1d_is_linear_like_with_its_output_on_weight_dim_1():
    from transformers.pytorch_utils import Conv1D
    c = Conv1D(12, 5)  # nf=12 outputs, nx=5 inputs: weight (5, 12)
    assert is_linear_like(c) and out_axis(c) == 1 and linear_weight_view(c).shape == (12, 5)
    assert is_linear_like(nn.Linear(5, 12)) and not is_linear_like(nn.Conv1d(5, 12, 1))


def test_conv1d_quantizes_exactly_like_the_equivalent_linear():
    """Per output channel: a Conv1D and an nn.Linear holding the transposed weight round to the same values."""
    from transformers.pytorch_utils import Conv1D
    torch.manual_seed(0)
    c = Conv1D(12, 5)
    nn.init.normal_(c.weight)
    lin = nn.Linear(5, 12)
    with torch.no_grad():
        lin.weight.copy_(c.weight.t())
        lin.bias.copy_(c.bias)
    x = torch.randn(3, 5)
    qc = nbopt.quantize(c, x, weight_bits=4, act_bits=None, progress=False, repeat=1)
    ql = nbopt.quantize(lin, x, weight_bits=4, act_bits=None, progress=False, repeat=1)
    assert torch.equal(qc.model.weight.t(), ql.model.weight)
    assert qc.report[["scale_min", "scale_max"]].values.tolist() == ql.report[["scale_min", "scale_max"]].values.tolist()


def test_gpt2_4bit_weights_quantize_every_conv1d_and_lm_head():
    m, cfg = hf.gpt2()
    x = hf.ids(cfg, 2, 16)
    layers = weighted_layers(m)
    # hand count: 2 blocks x (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj) + lm_head
    assert len(layers) == 2 * 4 + 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = nbopt.quantize(m, [x], weight_bits=4, act_bits=None, progress=False, repeat=1)
    assert list(r.report.index) == list(layers) and (r.report["weight_bits"] == 4).all()
    assert (r.report["type"] == "Conv1D").sum() == 8
    # every quantized weight is on a 4-bit grid of its output channels: at most 16 distinct values per column
    for name, layer in weighted_layers(r.model).items():
        w = linear_weight_view(layer)
        assert max(len(torch.unique(row)) for row in w) <= 16, name
    # the skipped weight (position embedding; wte is tied to lm_head and quantized with it) is listed and warned
    skipped = [w for w in caught if issubclass(w.category, SkippedLayerWarning)]
    assert len(skipped) == 1 and "transformer.wpe" in str(skipped[0].message)
    assert any("transformer.wpe" in n for n in r.notes)
    with torch.no_grad():
        ref, out = m(x).logits, r.model(x).logits
    cos = float(nn.functional.cosine_similarity(ref.flatten(1), out.flatten(1)).mean())
    assert r.fidelity["cosine"] == pytest.approx(cos, abs=1e-5) and cos > 0.9
    print(f"gpt2 4-bit weights: {len(layers)} layers, output cosine vs fp32 {cos:.4f}")


def test_gpt2_sensitivity_and_mixed_precision_cover_conv1d():
    m, cfg = hf.gpt2()
    x = hf.ids(cfg, 2, 16)
    with pytest.warns(SkippedLayerWarning, match="wpe"):
        df = nbopt.sensitivity(m, [x], bits=(8, 4), progress=False)
    assert len(df) == 9 and (df["type"] == "Conv1D").sum() == 8
    assert df.loc["transformer.h.0.attn.c_attn", "params"] == 64 * 192
    assert df.attrs["skipped"] == {"transformer.wpe": "Embedding: weight"}
    bits = nbopt.mixed_precision(df, avg_bits=6)
    assert set(bits) == set(df.index) and set(bits.values()) <= {4, 8}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedLayerWarning)
        r = nbopt.quantize(m, [x], layer_bits=bits, act_bits=None, progress=False, repeat=1)
    assert r.report["weight_bits"].to_dict() == bits


# ---------------------------------------------------------------- int8 programs: inputs they were not built for


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


@pytest.mark.parametrize("backend", ["onnxruntime", pytest.param("pt2e", marks=SLOW)])
def test_an_int8_program_at_another_resolution_is_a_clear_error(backend):
    from nbopt.errors import InputError
    x = torch.randn(2, 3, 8, 8)
    r = nbopt.quantize(_cnn(), [x], mode="int8", backend=backend, progress=False, repeat=1)
    assert r.model(torch.randn(5, 3, 8, 8)).shape == (5, 4)  # any batch size
    with pytest.raises(InputError, match=r"shape \(2, 3, 16, 16\) .* built for \(N, 3, 8, 8\)"):
        r.model(torch.randn(2, 3, 16, 16))
    with pytest.raises(InputError, match="float64 but .* built for float32"):
        r.model(x.double())


def test_an_int8_program_built_from_a_bfloat16_model_takes_bfloat16():
    m, x = _cnn().to(torch.bfloat16), torch.randn(2, 3, 8, 8, dtype=torch.bfloat16)
    r = nbopt.quantize(m, [x], mode="int8", backend="onnxruntime", progress=False, repeat=1)
    assert r.model(x).dtype == torch.bfloat16 and any("converted to float32" in n for n in r.notes)
    assert r.fidelity["cosine"] > 0.99


def test_bfloat16_onnx_export_is_a_clear_refusal_and_torchscript_runs_it():
    from nbopt.errors import UnsupportedModelError
    m, x = _cnn().to(torch.bfloat16), torch.randn(2, 3, 8, 8, dtype=torch.bfloat16)
    with pytest.raises(UnsupportedModelError, match="bfloat16.*model.float\\(\\)"):
        nbopt.export(m, x, "onnx", latency=False)
    assert nbopt.export(m, x, "torchscript", latency=False).max_abs_diff == 0.0


def test_compatibility_of_an_uncapturable_model_prints_nothing(capfd):
    from nbopt.errors import UnsupportedModelError
    from tests.test_deploy_honest import Branchy  # data-dependent: torch.export dumps its graph on failure

    with pytest.raises(UnsupportedModelError, match="data-dependent"):
        nbopt.compatibility(Branchy(), torch.randn(2, 4), targets=("onnx",))
    out, err = capfd.readouterr()
    assert len((out + err).splitlines()) <= 2, out + err
