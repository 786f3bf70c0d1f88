"""Results that look fine but would be wrong (issue 17): a functional-only model, per-position agreement for
segmentation and sequence outputs, empty outputs, one-shot calibration iterators, and bit widths."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nbopt
from nbopt.errors import InputError, NboptError
from nbopt.quantization.calibration import first_input
from nbopt.quantization.metrics import fidelity
from nbopt.quantization.observers import fake_quant
from nbopt.quantization.options import QuantOptions
from nbopt.quantization.simulate import weight_qparams
from tests.conftest import Untouched


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 3)).eval()


X = torch.randn(8, 1, 6, 6)


# ---------------------------------------------------------------- 1. a functional-only model
class Functional(nn.Module):
    """No nn.Conv/Linear: the weights are parameters used through F.conv2d / F.linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w = nn.Parameter(torch.randn(4, 1, 3, 3))
        self.fc = nn.Parameter(torch.randn(3, 4 * 4 * 4))

    def forward(self, x):
        return F.linear(F.relu(F.conv2d(x, self.w)).flatten(1), self.fc)


def test_simulate_refuses_a_model_with_no_conv_or_linear():
    m = Functional().eval()
    snap = Untouched(m)
    with pytest.raises(InputError, match=r"^mode='simulate' has nothing to quantize: the model \(Functional\) has "
                                         r"no nn\.Conv1d/Conv2d/Conv3d, nn\.Linear or linear-like \(transformers' Conv1D\) module.*F\.conv2d.*"
                                         r"Use mode='dynamic' or mode='int8'"):
        nbopt.quantize(m, X, progress=False)
    with pytest.raises(InputError, match="nothing to quantize"):
        nbopt.quantize(m, act_bits=None, progress=False)  # weights only, no calibration: same refusal
    snap.assert_unchanged()


def test_sensitivity_refuses_a_model_with_no_conv_or_linear():
    m = Functional().eval()
    snap = Untouched(m)
    with pytest.raises(InputError, match=r"^sensitivity has no layer to measure: the model \(Functional\) has no "
                                         r"nn\.Conv1d/Conv2d/Conv3d, nn\.Linear or linear-like \(transformers' Conv1D\) module.*mode='dynamic'"):
        nbopt.sensitivity(m, X, progress=False)
    snap.assert_unchanged()


# ---------------------------------------------------------------- 2. agreement per sample / position / token
def test_classifier_agreement_is_per_sample_and_unchanged():
    ref = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 2.0, 0.0]])
    q = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.2, 0.9], [0.0, 0.0, 1.0], [1.0, 2.1, 0.0]])  # sample 1 flips
    f = fidelity([ref[:2], ref[2:]], [q[:2], q[2:]])
    assert f["top1_agreement"] == 0.75
    expected_cos = F.cosine_similarity(ref, q, dim=1).mean()
    assert f["cosine"] == pytest.approx(float(expected_cos), abs=1e-7)
    assert f["max_abs_diff"] == pytest.approx(0.9)
    noise = float((ref - q).pow(2).sum())
    assert f["sqnr_db"] == pytest.approx(10 * math.log10(float(ref.pow(2).sum()) / noise), rel=1e-6)
    assert "note" not in f


def test_segmentation_agreement_is_per_pixel_over_dim_1():
    # (N=1, C=3, H=2, W=2): classes per pixel [0, 1, 2, 0]; the quantized map flips pixel (0, 1) to class 2
    ref = torch.zeros(1, 3, 2, 2)
    ref[0, 0, 0, 0] = ref[0, 1, 0, 1] = ref[0, 2, 1, 0] = ref[0, 0, 1, 1] = 5.0
    q = ref.clone()
    q[0, 2, 0, 1] = 6.0
    f = fidelity([ref], [q])
    assert f["top1_agreement"] == 0.75  # 3 of 4 pixels
    # one argmax over the flattened map (the old behaviour) would have said 0 (index 5 vs 9)
    assert ref.flatten(1).argmax(1) != q.flatten(1).argmax(1)
    # two images, different maps: 3/4 and 4/4 agree -> 7/8
    f2 = fidelity([torch.cat([ref, ref])], [torch.cat([q, ref])])
    assert f2["top1_agreement"] == 0.875


def test_sequence_agreement_is_per_token_over_the_last_dim():
    # (N=1, T=2, V=3): tokens predict [2, 0]; the quantized logits flip token 1 to class 1
    ref = torch.tensor([[[0.0, 1.0, 3.0], [4.0, 1.0, 0.0]]])
    q = torch.tensor([[[0.0, 1.0, 2.9], [1.0, 4.0, 0.0]]])
    assert fidelity([ref], [q])["top1_agreement"] == 0.5
    # (N=2, T=3, V=2): 5 of 6 tokens agree
    ref2 = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]])
    q2 = ref2.clone()
    q2[1, 2] = torch.tensor([0.0, 1.0])
    assert fidelity([ref2], [q2])["top1_agreement"] == pytest.approx(5 / 6)


@pytest.mark.parametrize("shape", [(4,), (4, 1), (4, 1, 3, 3), (2, 5, 1), ()])
def test_no_class_dimension_gives_no_agreement(shape):
    ref = torch.randn(shape)
    f = fidelity([ref], [ref + 0.01])
    assert "top1_agreement" not in f
    assert f["max_abs_diff"] == pytest.approx(0.01, abs=1e-6)


class Seg(nn.Module):
    """A 1x1-conv "segmenter": (N, 8, H, W) -> (N, 6, H, W) class logits per pixel."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Conv2d(8, 6, 1)

    def forward(self, x):
        return self.head(x)


@pytest.mark.parametrize("method", ["cached", "naive"])
def test_sensitivity_drop_is_per_pixel_for_segmentation(method):
    m = Seg().eval()
    x = torch.randn(2, 8, 5, 5)
    df = nbopt.sensitivity(m, x, bits=(2,), method=method, progress=False)
    w = m.head.weight.detach()
    wq = fake_quant(w, weight_qparams(w, 2, QuantOptions(act_bits=None)))
    with torch.no_grad():
        ref, out = m(x), F.conv2d(x, wq, m.head.bias)
    per_pixel = (ref.argmax(1) == out.argmax(1)).float().mean()  # over N*H*W = 50 pixels
    assert float(per_pixel) == pytest.approx(0.74)  # 37 of 50 pixels: a real, partial disagreement
    assert df.loc["head", "drop_2bit"] == pytest.approx(1 - float(per_pixel), abs=1e-6)
    assert df.attrs["metric"] == "1 - top-1 agreement with fp32"


def test_sensitivity_without_class_dim_says_it_uses_cosine():
    m = nn.Sequential(nn.Linear(4, 1)).eval()
    df = nbopt.sensitivity(m, torch.randn(6, 4), bits=(4,), progress=False)
    assert df.attrs["metric"] == "1 - cosine similarity with fp32"


def test_demo_classifier_numbers_unchanged(demo_model):
    """(N, 10) outputs: agreement per sample, exactly as a hand argmax computes it."""
    from nbopt.demo.data import calibration_data
    x = torch.cat(calibration_data(n=128))
    r = nbopt.quantize(demo_model, x, weight_bits=4, act_bits=None, progress=False, repeat=1)
    with torch.no_grad():
        ref, q = demo_model(x), r.model(x)
    assert ref.shape[1] == 10
    assert r.fidelity["top1_agreement"] == pytest.approx(float((ref.argmax(1) == q.argmax(1)).float().mean()))


# ---------------------------------------------------------------- 3. empty outputs
class Empty(nn.Module):
    """Like a detector that found nothing: a conv, then an empty (0, 4) 'boxes' tensor."""

    def __init__(self, keep_first: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.keep_first = keep_first

    def forward(self, x):
        y = self.conv(x).mean((2, 3))
        return y if (self.keep_first and x.shape[0] == 3) else y[:0]


def test_fidelity_of_empty_outputs_is_nan_with_a_note():
    f = fidelity([torch.empty(0, 4), {"boxes": torch.empty(0, 4)}], [torch.empty(0, 4), {"boxes": torch.empty(0, 4)}])
    assert all(math.isnan(f[k]) for k in ("cosine", "sqnr_db", "max_abs_diff", "top1_agreement"))
    assert f["note"].startswith("fidelity not measured: no batch had comparable outputs (2 with an empty output")


def test_fidelity_skips_empty_batches_and_says_so():
    ref = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    f = fidelity([torch.empty(0, 2), ref], [torch.empty(0, 2), torch.tensor([[1.0, 0.0], [1.0, 0.0]])])
    assert f["top1_agreement"] == 0.5
    assert f["note"] == "fidelity measured on 1 of 2 batches; left out: 1 with an empty output (0 elements)."


def test_quantize_a_model_with_empty_outputs_does_not_crash():
    m = Empty().eval()
    r = nbopt.quantize(m, X, act_bits=None, progress=False, repeat=1)
    assert math.isnan(r.fidelity["cosine"]) and "note" not in r.fidelity
    assert any(n.startswith("fidelity not measured") for n in r.notes)
    repr(r)
    r2 = nbopt.quantize(Empty(keep_first=True).eval(), [X[:3], X[3:]], act_bits=None, progress=False, repeat=1)
    assert r2.fidelity["cosine"] > 0.99
    assert any("measured on 1 of 2 batches" in n for n in r2.notes)


# ---------------------------------------------------------------- 4. one-shot calibration iterators
def test_generator_calibration_works_like_a_list():
    m = small_cnn()
    batches = [X[:4], X[4:]]
    snap = Untouched(m)
    from_list = nbopt.quantize(m, batches, weight_bits=4, act_bits=6, progress=False, repeat=1)
    from_gen = nbopt.quantize(m, (x for x in batches), weight_bits=4, act_bits=6, progress=False, repeat=1)
    assert from_gen.fidelity == from_list.fidelity
    assert from_gen.fidelity["sqnr_db"] < 60  # really quantized, really measured on both batches
    s_list = nbopt.sensitivity(m, batches, bits=(4,), progress=False)
    s_gen = nbopt.sensitivity(m, (x for x in batches), bits=(4,), progress=False)
    assert s_gen.equals(s_list)
    snap.assert_unchanged()


def test_first_input_refuses_a_one_shot_iterator():
    with pytest.raises(NboptError, match=r"one-shot iterator \(generator\).*pass a list of batches or a DataLoader"):
        first_input(x for x in [X])


# ---------------------------------------------------------------- 5. bit widths
@pytest.mark.parametrize("eight", [np.int64(8), np.int32(8), torch.tensor(8)])
def test_any_integral_bit_width_is_accepted(eight):
    m = small_cnn()
    plain = nbopt.quantize(m, X, weight_bits=8, act_bits=8, progress=False, repeat=1)
    other = nbopt.quantize(m, X, weight_bits=eight, act_bits=eight, layer_bits={"0": eight}, progress=False, repeat=1)
    assert other.fidelity == plain.fidelity
    assert type(other.options["weight_bits"]) is int and type(other.options["layer_bits"]["0"]) is int
    df = nbopt.sensitivity(m, X, bits=(eight, 4), progress=False)
    assert list(df.columns[df.columns.str.startswith("drop")]) == ["drop_8bit", "drop_4bit"]
    assert df.attrs["bits"] == [8, 4] and all(type(b) is int for b in df.attrs["bits"])
    assert nbopt.sensitivity(m, X, bits=eight, progress=False).attrs["bits"] == [8]
