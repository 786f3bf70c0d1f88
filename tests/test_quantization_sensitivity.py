"""Sensitivity's cached, batched trials give the naive full re-evaluation's numbers on awkward graphs."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import nbopt
from tests.conftest import Untouched


class Block(nn.Module):
    """A residual block with a strided 1x1 downsample, BN and an in-place ReLU (like torchvision's ResNet)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.down = nn.Conv2d(cin, cout, 1, 2)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.down(x))


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(Block(8, 16), Block(16, 16))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.blocks(self.stem(x)).mean((2, 3))
        return self.fc(x.view(x.size(0), -1))  # a batch-size value read from the graph


class BatchMixing(nn.Module):
    """Subtracts the batch mean: samples are not independent, so trials must not be batched together."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 4)

    def forward(self, x):
        h = self.a(x)
        return self.b(h - h.mean(0, keepdim=True))


class SeqFirst(nn.Module):
    """Attention with the sequence on dim 0 inside (batch_first=False) and a Linear reused twice."""

    def __init__(self):
        super().__init__()
        self.inp, self.mix = nn.Linear(6, 8), nn.Linear(8, 8)
        self.attn = nn.MultiheadAttention(8, 2)
        self.out = nn.Linear(8, 3)

    def forward(self, x):  # x: (batch, seq, 6)
        h = self.inp(x).transpose(0, 1)
        h = self.mix(torch.relu(self.mix(h)))
        h, _ = self.attn(h, h, h, need_weights=False)
        return self.out(h.transpose(0, 1).flatten(1)[:, :8])


CASES = {
    "resnet-like": (TinyResNet, lambda: [torch.randn(3, 3, 16, 16), torch.randn(2, 3, 16, 16)], True),
    "batch-mixing": (BatchMixing, lambda: [torch.randn(5, 6), torch.randn(5, 6)], False),
    "seq-first": (SeqFirst, lambda: torch.randn(6, 5, 6), True),  # per layer: only dim-0 values are batched
}


def _table(df):
    return torch.tensor(df[[c for c in df.columns if c.startswith(("drop_", "sqnr_"))]].values.astype(float))


@pytest.mark.parametrize("case", list(CASES))
def test_cached_equals_naive(case):
    cls, data, batched = CASES[case]
    model = cls().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics, so folding matters
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    calib = data()
    before = Untouched(model)
    fast = nbopt.sensitivity(model, calib, bits=(8, 4, 2), progress=False)
    slow = nbopt.sensitivity(model, calib, bits=(8, 4, 2), method="naive", progress=False)
    before.assert_unchanged()
    assert fast.attrs["method"] == "cached" and fast.attrs["batched"] is batched
    assert list(fast.index) == list(slow.index)
    assert torch.allclose(_table(fast), _table(slow), rtol=1e-4, atol=1e-4)
    assert not fast.attrs["partial"] and fast.attrs["layers_total"] == len(fast)


def test_the_cache_is_left_unchanged_between_trials():
    """No trial writes into the cached activations or leaves its weight behind; each variant is exact."""
    model = TinyResNet().eval()
    calib = [torch.randn(4, 3, 16, 16)]
    first = nbopt.sensitivity(model, calib, bits=(4, 2), progress=False)
    from nbopt.quantization.activation_cache import ActivationCache, trace
    from nbopt.layers import eval_folded
    folded = eval_folded(TinyResNet().eval())
    cache = ActivationCache(trace(folded, calib[0]), calib, ["blocks.0.down"], variants=2)
    snapshot = {n: v.clone() for n, v in cache.envs[0].items() if isinstance(v, torch.Tensor)}
    w = folded.blocks[0].down.weight.detach().clone()
    zero, double = cache.trial("blocks.0.down", [w * 0, w * 2])
    assert all(torch.equal(cache.envs[0][n], v) for n, v in snapshot.items())
    assert torch.equal(folded.blocks[0].down.weight, w)
    with torch.no_grad():  # each variant's output is what the model gives with that weight
        folded.blocks[0].down.weight.mul_(2)
        assert torch.allclose(double[0], folded(calib[0]), atol=1e-5)
        folded.blocks[0].down.weight.zero_()
        assert torch.allclose(zero[0], folded(calib[0]), atol=1e-5)
    assert len(first) == 8 and second_run_equal(model, calib, first)


def second_run_equal(model, calib, first) -> bool:
    again = nbopt.sensitivity(model, calib, bits=(4, 2), progress=False)
    return bool(torch.equal(_table(first), _table(again)))


def test_plot_has_a_row_per_layer_and_a_column_per_bit_width():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nbopt.display.figures import plot_sensitivity, sensitivity_matrix

    df = nbopt.sensitivity(TinyResNet().eval(), torch.randn(4, 3, 16, 16), bits=(8, 4, 2), progress=False)
    for value in ("drop", "sqnr"):
        fig = plot_sensitivity(df, value)
        ax = fig.axes[0]
        assert [t.get_text() for t in ax.get_yticklabels()] == list(df.index)
        assert [t.get_text() for t in ax.get_xticklabels()] == ["8-bit", "4-bit", "2-bit"]
        assert ax.images[0].get_array().shape == (8, 3)
        assert len(ax.texts) == 8 * 3  # every cell annotated
        plt.close(fig)
    assert sensitivity_matrix(df, "sqnr").iloc[0].tolist() == df.loc["stem", ["sqnr_8bit", "sqnr_4bit", "sqnr_2bit"]].tolist()



def test_image_models_run_their_trials_channels_last_with_the_same_values():
    """Channels-last is only a faster layout: each trial's outputs equal a contiguous cache's."""
    from nbopt.quantization.activation_cache import ActivationCache, trace
    from nbopt.layers import eval_folded

    import copy

    calib, folded = [torch.randn(4, 3, 16, 16), torch.randn(2, 3, 16, 16)], eval_folded(TinyResNet().eval())
    caches = {layout: ActivationCache(trace(copy.deepcopy(folded), calib[0]), calib,
                                      ["stem", "blocks.1.conv2"], variants=2, layout=layout)
              for layout in ("channels_last", "contiguous")}
    w = {name: torch.randn_like(folded.get_submodule(name).weight) for name in ["stem", "blocks.1.conv2"]}
    for name in w:
        fast, plain = (caches[k].trial(name, [w[name], -w[name]]) for k in ("channels_last", "contiguous"))
        for a, b in zip(fast, plain):
            assert all(torch.allclose(x, y, rtol=1e-5, atol=1e-5) for x, y in zip(a, b))
    stem = caches["channels_last"].gm.get_submodule("stem").weight
    assert stem.is_contiguous(memory_format=torch.channels_last)
    df = nbopt.sensitivity(TinyResNet().eval(), calib, bits=(4,), progress=False)
    assert df.attrs["layout"] == "channels_last"
    assert nbopt.sensitivity(BatchMixing().eval(), torch.randn(5, 6), bits=(4,), progress=False).attrs["layout"] \
        == "contiguous"
