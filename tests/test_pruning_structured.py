"""Structured pruning: channels really removed, output shape kept, MACs match the profiler, errors clear."""
from __future__ import annotations

import os

import pytest
import torch
import torchvision
from torch import nn

import nbopt
from nbopt import demo
from nbopt.errors import NboptError
from tests.snapshot import same_state, state_fingerprint
from nbopt.profiling import profile
from nbopt.pruning import Pruner
from nbopt.pruning.heads import PrunedMultiheadAttention

SLOW = pytest.mark.skipif(not os.environ.get("NBOPT_SLOW"), reason="big torchvision models: set NBOPT_SLOW=1")


def check_structured(model: nn.Module, x: torch.Tensor, amount: float = 0.5) -> tuple[nn.Module, Pruner]:
    """Prune, export and check: runs, same output shape, preview == export, MACs match the profiler."""
    model.eval()
    fp = state_fingerprint(model)
    p = Pruner(model, x, progress=False).set(amount=amount, structured=True, scope="layer")
    small = p.export().eval()
    with torch.no_grad():
        ref, out, preview = model(x), small(x), p.model.eval()(x)
    assert out.shape == ref.shape
    assert sum(q.numel() for q in small.parameters()) < sum(q.numel() for q in model.parameters())
    prof_small = profile(small, x, latency=False)
    assert prof_small.total_macs < profile(model, x, latency=False).total_macs
    rep = p.report
    table = prof_small.table
    # the report's effective MACs are exactly what the profiler counts on the smaller model
    assert rep["effective_macs"].tolist() == pytest.approx(table.loc[rep.index, "macs"].astype(float).tolist())
    assert torch.allclose(out, preview, atol=1e-4, rtol=1e-4)
    assert same_state(model, fp)
    return small, p


def test_demo_structured_half(demo_model):
    small, p = check_structured(demo_model, demo.example_input(8))
    rep = p.report
    assert (rep["channels_kept"].drop(index="fc") % 8 == 0).all()  # rounded to kernel-friendly multiples
    assert rep.loc["fc", "channels_kept"] == 10  # the output layer is never cut
    assert small.block1.conv1[0].out_channels == rep.loc["block1.conv1.0", "channels_kept"] == 16
    # residual add: stem, block1.conv2 and block2.depthwise share one channel set
    assert small.stem[0].out_channels == small.block1.conv2[0].out_channels == small.block2.depthwise[0].in_channels


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0"])
def test_torchvision_cnns(name):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10)
    check_structured(model, torch.randn(1, 3, 32, 32), amount=0.3)


def test_small_vision_transformer_mlp_widths():
    from torchvision.models.vision_transformer import VisionTransformer
    model = VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                              num_classes=10)  # torchvision zero-initialises the head: reports must not count zeros
    small, p = check_structured(model, torch.randn(2, 3, 32, 32))
    assert small.encoder.layers[0].mlp[0].out_features == 32 and small.encoder.layers[0].mlp[3].in_features == 32
    assert p.report.loc["heads.head", "channels_kept"] == 10
    assert any("LayerNorm" in b.reason for b in p.blocked)  # the residual stream is left whole, and says why


@SLOW
@pytest.mark.parametrize("name, size", [("resnet50", 64), ("densenet121", 64), ("mobilenet_v3_large", 64),
                                        ("vit_b_16", 224)])
def test_big_torchvision_models(name, size):
    model = getattr(torchvision.models, name)()
    small, p = check_structured(model, torch.randn(1, 3, size, size), amount=0.3)
    if name == "vit_b_16":
        assert small.encoder.layers[0].mlp[0].out_features < 3072  # MLP widths shrink
        assert any("LayerNorm" in b.reason for b in p.blocked)  # residual stream left whole, and said so
        attn = small.encoder.layers[0].self_attention
        assert isinstance(attn, PrunedMultiheadAttention) and attn.num_heads == 12 - round(0.3 * 12)


def test_global_structured_and_threshold(demo_model):
    x = demo.example_input(2)
    p = Pruner(demo_model, x, progress=False).set(amount=0.5, structured=True)
    assert p.report["channels_kept"].iloc[:-1].lt(p.report["channels"].iloc[:-1]).any()
    p.set(threshold=0.9, structured=True)
    assert p.export()(x).shape == (2, 10)
    with pytest.raises(NboptError, match="removes every channel of layer"):
        p.set(threshold=50.0, structured=True)


def test_structured_layers_and_overrides(demo_model):
    x = demo.example_input(2)
    p = Pruner(demo_model, x, progress=False).set(amount=0.0, structured=True, overrides={"block3.conv1.0": 0.5})
    rep = p.report
    assert rep.loc["block3.conv1.0", "channels_kept"] == 32
    assert (rep.drop(index="block3.conv1.0")["channels_kept"] == rep.drop(index="block3.conv1.0")["channels"]).all()
    with pytest.raises(NboptError, match="not the root of a prunable channel group"):
        p.set(amount=0.2, structured=True, overrides={"fc": 0.5})


class WithLayerNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.norm = nn.LayerNorm(32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(self.norm(self.fc1(x)))


def test_unfollowable_dependants_error_names_layer_and_way_out():
    model, x = WithLayerNorm(), torch.randn(2, 16)
    fp = state_fingerprint(model)
    p = Pruner(model, x, layers=["fc1"], progress=False)
    with pytest.raises(NboptError) as err:
        p.set(amount=0.5, structured=True)
    msg = str(err.value)
    assert "'fc1'" in msg and "LayerNorm" in msg and "exclude" in msg and "structured=False" in msg
    assert same_state(model, fp) and same_state(p.model, fp)
    p.set(amount=0.5)  # unstructured still works
    assert int((p.model.fc1.weight == 0).sum()) == 256


def test_prune_summary_shows_smaller_model(demo_model, untouched):
    guard = untouched(demo_model)
    r = nbopt.prune(demo_model, demo.example_input(8), amount=0.5, structured=True, progress=False)
    s = r.summary
    assert s.loc["params", "ratio"] > 2 and s.loc["macs", "ratio"] > 2 and s.loc["size_bytes", "ratio"] > 2
    assert s.loc["latency_ms", "before"] > 0 and s.loc["latency_ms", "after"] > 0
    guard.assert_unchanged()


def test_incremental_settings_equal_a_fresh_pruner(demo_model):
    """Any walk of settings (structured and not, layer and global) leaves the weights a fresh Pruner gives."""
    x = demo.example_input(2)
    walker = Pruner(demo_model, x, progress=False)
    original = state_fingerprint(walker.model)
    walk = [dict(amount=0.3, structured=True, scope="layer"), dict(amount=0.6, structured=True, scope="layer"),
            dict(amount=0.2, structured=True), dict(amount=0.7), dict(amount=0.4, structured=True),
            dict(amount=0.5, scope="layer"), dict(amount=0.1), dict(amount=0.55, structured=True),
            dict(amount=0.05, structured=True, scope="layer")]
    for setting in walk:
        walker.set(**setting)
        fresh = Pruner(demo_model, x, progress=False).set(**setting)
        assert same_state(walker.model, state_fingerprint(fresh.model)), setting
        assert walker.report.equals(fresh.report), setting
    walker.set(amount=0.0, structured=True)
    assert same_state(walker.model, original)
    walker.set(amount=0.6, structured=True).set(amount=0.0)
    assert same_state(walker.model, original)


def test_small_vision_transformer_heads():
    """Heads go whole (not rounded to 8), the preview equals the export, attention MACs fall with the heads."""
    from torchvision.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64,
                              num_classes=10)
    nn.init.normal_(model.heads.head.weight)  # a non-zero output, so preview == export says something
    small, p = check_structured(model, torch.randn(2, 3, 32, 32))
    attn = small.encoder.layers[1].self_attention
    assert isinstance(attn, PrunedMultiheadAttention) and (attn.num_heads, attn.head_dim) == (2, 8)
    assert attn.in_proj.out_features == 3 * 16 and attn.out_proj.in_features == 16
    assert p._kept["encoder.layers.encoder_layer_1.self_attention.out_proj"] == 2
    before = profile(model, torch.randn(2, 3, 32, 32), latency=False).table["macs"]
    after = profile(small, torch.randn(2, 3, 32, 32), latency=False).table["macs"]
    name = "encoder.layers.encoder_layer_1.self_attention"
    assert after[name] * 2 == before[name]  # projections and attention both scale with the heads kept


class TinyTextEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, batch_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(1))


def test_transformer_encoder_layers_lose_heads_and_mlp_width():
    torch.manual_seed(0)
    model = TinyTextEncoder().eval()
    x = torch.randn(3, 7, 32)
    small, p = check_structured(model, x)
    layer = small.encoder.layers[0]
    assert isinstance(layer.self_attn, PrunedMultiheadAttention) and layer.self_attn.num_heads == 2
    assert layer.linear1.out_features == 32 and layer.linear2.in_features == 32
    with torch.no_grad():
        p.set(amount=0.0, structured=True)
        assert torch.equal(p.model(x), model(x))  # sliding back restores the attention exactly


@pytest.mark.parametrize("batch_first", [False, True])
def test_pruned_attention_with_every_head_is_multihead_attention(batch_first):
    """All heads kept: same outputs and weights as nn.MultiheadAttention, with masks and cross-attention."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    pruned = PrunedMultiheadAttention(mha, torch.arange(4)).eval()
    q, kv = torch.randn(5, 3, 16), torch.randn(7, 3, 16)
    if batch_first:
        q, kv = q.transpose(0, 1), kv.transpose(0, 1)
    padding = torch.zeros(3, 7, dtype=torch.bool)
    padding[:, -2:] = True
    cases = [{}, {"need_weights": False}, {"key_padding_mask": padding}, {"average_attn_weights": False},
             {"attn_mask": torch.randn(4 * 3, 5, 7), "need_weights": False}]
    with torch.no_grad():
        for kw in cases:
            (o1, w1), (o2, w2) = mha(q, kv, kv, **kw), pruned(q, kv, kv, **kw)
            assert torch.allclose(o1, o2, atol=1e-6), kw
            assert (w1 is None) == (w2 is None) and (w1 is None or torch.allclose(w1, w2, atol=1e-6)), kw


@pytest.mark.parametrize("training", [True, False])
def test_swapped_attention_keeps_the_training_flag(training):
    """remove_heads' replacement runs dropout exactly when the attention it replaces did."""
    from nbopt.pruning.heads import head_groups, remove_heads

    model = TinyTextEncoder().train(training)
    root = "encoder.layers.0.self_attn.out_proj"
    remove_heads(model, head_groups(model, {root}), {root: 2})
    attn = model.encoder.layers[0].self_attn
    assert isinstance(attn, PrunedMultiheadAttention) and attn.num_heads == 2 and attn.training is training
