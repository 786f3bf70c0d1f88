"""Hand-computed MACs/FLOPs for every op family the counter claims to cover."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nbopt
from nbopt.profiling import count_cost


def macs_of(model: nn.Module, *inputs: torch.Tensor, **kw) -> int:
    return nbopt.profile(model, inputs, latency=False, **kw).total_macs


class Fn(nn.Module):
    """Wrap a function so it runs inside a module."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


@pytest.mark.parametrize("conv, shape, expected", [
    (nn.Conv2d(3, 8, 3, padding=1), (1, 3, 10, 10), 8 * 10 * 10 * 3 * 9),             # plain
    (nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4), (1, 8, 8, 8), 8 * 4 * 4 * 2 * 9),  # grouped, strided
    (nn.Conv2d(2, 4, 3, dilation=2), (1, 2, 9, 9), 4 * 5 * 5 * 2 * 9),                 # dilated
    (nn.Conv2d(16, 16, 3, padding=1, groups=16), (2, 16, 6, 6), 2 * 16 * 36 * 9),      # depthwise, batch 2
    (nn.ConvTranspose2d(3, 4, 3, stride=2), (1, 3, 4, 4), 3 * 4 * 4 * 4 * 9),          # transposed
    (nn.Conv1d(4, 6, 5), (3, 4, 20), 3 * 6 * 16 * 4 * 5),
    (nn.Conv3d(2, 3, 3), (1, 2, 5, 5, 5), 3 * 27 * 2 * 27),
])
def test_convolutions(conv, shape, expected):
    prof = nbopt.profile(conv, torch.randn(shape), latency=False)
    assert prof.total_macs == expected
    assert prof.table.loc["(root)", "flops"] == 2 * expected  # bias add is not counted, as in torchvision


def test_linear_on_tokens_counts_every_token():
    # torchinfo counts a Linear on (B, T, C) once per batch; it runs once per token
    assert macs_of(nn.Linear(8, 4), torch.randn(2, 5, 8)) == 2 * 5 * 8 * 4


def test_functional_matmul_einsum_bmm():
    assert macs_of(Fn(lambda a, b: a @ b), torch.randn(3, 4, 5), torch.randn(5, 6)) == 3 * 4 * 6 * 5
    assert macs_of(Fn(lambda a, b: torch.einsum("bij,bjk->bik", a, b)),
                   torch.randn(2, 3, 4), torch.randn(2, 4, 5)) == 2 * 3 * 5 * 4
    assert macs_of(Fn(lambda a, b: torch.bmm(a, b)), torch.randn(2, 3, 4), torch.randn(2, 4, 5)) == 120
    assert macs_of(Fn(lambda x, w: F.linear(x, w)), torch.randn(7, 8), torch.randn(3, 8)) == 7 * 3 * 8


def test_scaled_dot_product_attention_cpu_kernel():
    q = torch.randn(2, 4, 16, 8)
    # Q @ K^T and P @ V: 2 * B * H * L * S * E
    assert macs_of(Fn(F.scaled_dot_product_attention), q, q, q) == 2 * 4 * 16 * 16 * (8 + 8)


def test_multihead_attention_fast_path_and_slow_path_agree():
    mha = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    x = torch.randn(2, 10, 32)
    projections = 4 * 2 * 10 * 32 * 32
    attention = 2 * 4 * 10 * 10 * (8 + 8)
    macs = projections + attention
    # no bias adds; scale Q (2 * 10 * 32), softmax (3 per score), average the weights over heads (1 per score)
    flops = 2 * macs + 2 * 10 * 32 + 3 * (2 * 4 * 10 * 10) + 2 * 4 * 10 * 10
    assert flops == 193_280
    fused = nbopt.profile(Fn(lambda t: mha(t, t, t)), x, latency=False, execution="real")  # no_grad: fused
    assert (fused.total_macs, fused.total_flops) == (macs, flops)
    with torch.enable_grad():  # the composite path that runs when grad is needed
        slow = count_cost(lambda: mha(x, x, x))
    assert (slow.macs, slow.flops) == (macs, flops)


def test_transformer_encoder_layer_fast_path():
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True).eval()
    x = torch.randn(2, 10, 32)
    expected = 4 * 2 * 10 * 32 * 32 + 2 * 4 * 10 * 10 * 16 + 2 * (2 * 10 * 32 * 64)
    assert macs_of(layer, x) == expected
    # no bias adds; scale Q and K (2 * 640), softmax (3 * 800), 2 residual adds (2 * 640), 2 layer norms
    # (2 * 5 * 640), ReLU on the 20 x 64 hidden layer
    flops = 2 * expected + 2 * 640 + 3 * 800 + 2 * 640 + 2 * 5 * 640 + 20 * 64
    assert flops == 365_920
    assert nbopt.profile(layer, x, latency=False, execution="real").total_flops == flops
    with torch.enable_grad():
        assert count_cost(layer, x) == nbopt.profiling.formulas.Cost(expected, flops)


def test_recurrent_layers():
    t, b, i, h = 5, 2, 8, 16
    assert macs_of(nn.LSTM(i, h, batch_first=True), torch.randn(b, t, i)) == t * b * (4 * h * i + 4 * h * h)
    assert macs_of(nn.GRU(i, h), torch.randn(t, b, i)) == t * b * (3 * h * i + 3 * h * h)
    two_layer = nn.LSTM(i, h, num_layers=2)
    assert macs_of(two_layer, torch.randn(t, b, i)) == t * b * (4 * h * i + 4 * h * h + 4 * h * h + 4 * h * h)


def test_interpolation_norm_pool_softmax_flops():
    x = torch.randn(1, 3, 8, 8)
    up = nbopt.profile(Fn(lambda t: F.interpolate(t, scale_factor=2, mode="bilinear")), x, latency=False)
    assert (up.total_macs, up.total_flops) == (0, 2 * 4 * 3 * 16 * 16)  # 4 neighbours blended per output
    near = nbopt.profile(Fn(lambda t: F.interpolate(t, scale_factor=2)), x, latency=False)
    assert near.total_flops == 0 and near.uncounted == {}  # nearest is a pure copy, known, not "uncounted"
    assert nbopt.profile(nn.BatchNorm2d(3).eval(), x, latency=False).total_flops == 2 * 3 * 64
    assert nbopt.profile(nn.LayerNorm(8), x, latency=False).total_flops == 5 * 3 * 64
    assert nbopt.profile(nn.MaxPool2d(2), x, latency=False).total_flops == 3 * 16 * 4
    assert nbopt.profile(nn.Softmax(-1), x, latency=False).total_flops == 3 * 3 * 64
    assert nbopt.profile(nn.ReLU(), x, latency=False).total_flops == 3 * 64


def test_unknown_ops_are_listed_and_user_formula_counts_them():
    model = Fn(lambda t: torch.fft.rfft(t).abs())
    prof = nbopt.profile(model, torch.randn(4, 16), latency=False)
    assert "aten._fft_r2c" in prof.uncounted and prof.coverage < 1.0
    from nbopt.profiling import FORMULAS
    packet = torch.ops.aten._fft_r2c
    try:
        nbopt.register_formula(packet, lambda x, *a, out, **k: (0, 5 * x.numel()))
        again = nbopt.profile(model, torch.randn(4, 16), latency=False)
        assert "aten._fft_r2c" not in again.uncounted
        assert again.total_flops == 5 * 64 + 4 * 9  # the FFT formula plus one FLOP per |z| output
    finally:
        FORMULAS.remove(packet)


def test_batch_size_scales_macs(demo_model):
    one = nbopt.profile(demo_model, torch.randn(1, 1, 8, 8), latency=False).total_macs
    assert nbopt.profile(demo_model, torch.randn(6, 1, 8, 8), latency=False).total_macs == 6 * one


def test_same_numbers_under_grad_no_grad_inference_mode():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 32), nn.Unflatten(1, (4, 8)),
                          nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), nn.LSTM(8, 8)).eval()
    x = torch.randn(2, 3, 8, 8)
    results = []
    for ctx in (torch.enable_grad, torch.no_grad, torch.inference_mode):
        with ctx():
            p = nbopt.profile(model, x, latency=False, execution="real")
        results.append((p.total_macs, p.total_flops, p.table["macs"].to_dict()))
    assert results[0] == results[1] == results[2]
    meta = nbopt.profile(model, x, latency=False, execution="meta")
    assert meta.total_macs == results[0][0]


def _activations_net() -> nn.Module:
    """Batch norm and every activation with a quick meta output, in-place and not."""
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Hardswish(inplace=True), nn.Hardsigmoid(),
                         nn.ReLU(), nn.ReLU6(inplace=True), nn.GELU(approximate="tanh"), nn.SiLU(inplace=True),
                         nn.Tanh(), nn.LeakyReLU(0.1), nn.ELU(), nn.Mish(), nn.Sigmoid(), nn.BatchNorm2d(8),
                         nn.Flatten(), nn.Linear(8 * 6 * 6, 4), nn.BatchNorm1d(4)).eval()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_meta_run_gives_the_real_runs_table(layout, dtype):
    """Meta execution (quick outputs for batch norm and activations) = a real run: counts, shapes, bytes."""
    torch.manual_seed(0)
    model = _activations_net().to(dtype)
    x = torch.randn(2, 3, 8, 8, dtype=dtype)
    if layout == "channels_last":
        model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    cols = ["macs", "flops", "in_shape", "out_shape", "out_bytes", "calls"]
    meta = nbopt.profile(model, x, latency=False, execution="meta")
    real = nbopt.profile(model, x, latency=False, execution="real")
    assert meta.execution == "meta" and real.execution == "real"
    assert meta.table[cols].equals(real.table[cols])
    assert meta.total_macs == 2 * (8 * 6 * 6 * 3 * 9 + 8 * 6 * 6 * 4)


def test_meta_batch_norm_with_wrong_channels_fails_like_a_real_run():
    model = nn.Sequential(nn.Flatten(0, 0), nn.BatchNorm2d(4)).eval()  # batch norm first: no conv checks before
    for execution in ("meta", "real"):
        with pytest.raises(nbopt.NboptError, match=r"^Sequential failed on inputs \(2, 3, 5, 5\) float32 at layer "
                                                   r"'1' \(BatchNorm2d, given \(2, 3, 5, 5\) float32\): RuntimeError: "
                                                   r"running_mean should contain 3 elements not 4\."):
            nbopt.profile(model, torch.randn(2, 3, 5, 5), latency=False, execution=execution)
