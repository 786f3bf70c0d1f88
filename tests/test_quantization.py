"""Simulated quantization, sensitivity, mixed precision, QAT: honest values on the demo model."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import nbopt
from nbopt.layers import eval_folded, weighted_layers
from nbopt import demo
from nbopt.errors import NboptError
from nbopt.quantization.observers import compute_qparams, fake_quant, qrange
from nbopt.quantization.options import QuantOptions
from tests.conftest import Untouched


@pytest.fixture(scope="module")
def calib():
    return demo.calibration_data(256)


@pytest.fixture(scope="module")
def fp32_acc(demo_model):
    return demo.evaluate(demo_model)


@pytest.mark.parametrize("bits", [2, 3, 4, 8, 16])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("axis", [0, None])
def test_round_trip_error_at_most_half_a_step(bits, symmetric, axis):
    w = torch.randn(16, 8, 3, 3) * torch.rand(16, 1, 1, 1) * 3
    qp = compute_qparams(w, bits, symmetric=symmetric, axis=axis)
    err = (fake_quant(w, qp) - w).abs()
    step = qp.scale.reshape(-1, 1, 1, 1) if axis == 0 else qp.scale
    assert (err <= step / 2 + 1e-6).all()
    q = torch.round(fake_quant(w, qp) / step) + (qp.zero_point.reshape(-1, 1, 1, 1) if axis == 0 else qp.zero_point)
    lo, hi = qrange(bits, symmetric)
    assert q.min() >= lo and q.max() <= hi  # values really sit on a bits-wide grid
    assert q.unique().numel() <= 2 ** bits


def test_clipping_observers_reduce_error_on_outliers():
    w = torch.randn(1, 4096)
    w[0, 0] = 40.0  # one outlier stretches the min/max range
    errs = {obs: (fake_quant(w, qp := compute_qparams(w, 4, observer=obs)) - w)[0, 1:].pow(2).mean()
            for obs in ("minmax", "percentile", "mse")}
    assert errs["mse"] < errs["minmax"] and errs["percentile"] < errs["minmax"]


def test_16_bit_simulation_matches_fp32(demo_model, calib):
    r = nbopt.quantize(demo_model, calib, weight_bits=16, act_bits=16, progress=False, repeat=1)
    x = calib[0]
    assert torch.allclose(r.model(x), demo_model(x), atol=2e-3)
    assert r.fidelity["sqnr_db"] > 70 and r.fidelity["top1_agreement"] == 1.0


def test_8_bit_within_half_a_point(demo_model, calib, fp32_acc):
    before = Untouched(demo_model)
    r = nbopt.quantize(demo_model, calib, weight_bits=8, act_bits=8, evaluate=demo.evaluate, progress=False,
                       repeat=1)
    before.assert_unchanged()
    assert r.accuracy["fp32"] == pytest.approx(fp32_acc)
    assert fp32_acc - r.accuracy["quantized"] <= 0.005
    assert not r.real and "not faster" in r.notes[0]
    rep = r.report
    assert set(rep.index) == set(weighted_layers(
        eval_folded(demo.load_model())))
    assert (rep.weight_bits == 8).all() and (rep.granularity == "per_channel").all()
    assert (rep.weight_sqnr_db > 35).all() and (rep.output_sqnr_db > 25).all()
    assert (rep.scale_min <= rep.scale_max).all()
    s = r.size_bytes
    assert s["quantized"]["dense"] >= s["fp32"]["dense"] * 0.95  # simulated: not smaller in memory
    assert s["quantized"]["deployable"] < s["fp32"]["deployable"] / 3.5
    assert list(r.summary().columns)[1].startswith("simulated")


def test_4_bit_per_channel_within_two_points(demo_model, calib, fp32_acc):
    r = nbopt.quantize(demo_model, calib, weight_bits=4, act_bits=8, observer="mse", evaluate=demo.evaluate,
                       progress=False, repeat=1)
    assert fp32_acc - r.accuracy["quantized"] <= 0.02
    assert (r.report.weight_bits == 4).all()


def test_layer_bits_and_per_tensor_asymmetric(demo_model, calib):
    r = nbopt.quantize(demo_model, calib, weight_bits=8, act_bits=None, granularity="per_tensor",
                       symmetric=False, layer_bits={"fc": 3, "stem.0": 6}, progress=False, repeat=1)
    rep = r.report
    assert rep.loc["fc", "weight_bits"] == 3 and rep.loc["stem.0", "weight_bits"] == 6
    assert rep.loc["block1.conv1.0", "weight_bits"] == 8
    assert (rep.granularity == "per_tensor").all() and not rep.symmetric.any()
    assert rep.loc["fc", "weight_sqnr_db"] < rep.loc["block1.conv1.0", "weight_sqnr_db"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(weight_bits=1), "from 2 to 16"), (dict(weight_bits=17), "from 2 to 16"),
    (dict(act_bits=32), "from 2 to 16"), (dict(weight_bits=4.5), "from 2 to 16"),
    (dict(observer="max"), "observer"), (dict(granularity="per_row"), "granularity"),
    (dict(layer_bits={"stem.O": 4}), "stem.0"), (dict(mode="int8", weight_bits=4), "simulate"),
    (dict(mode="int4"), "mode"),
])
def test_bad_options_are_clear_errors(demo_model, calib, kwargs, message):
    before = Untouched(demo_model)
    with pytest.raises(NboptError, match=message):
        nbopt.quantize(demo_model, calib, progress=False, **kwargs)
    before.assert_unchanged()


def test_int8_without_calibration_and_wrong_shapes(demo_model, calib):
    with pytest.raises(NboptError, match="calib=.*mode='dynamic'"):
        nbopt.quantize(demo_model, mode="int8")
    with pytest.raises(NboptError, match="act_bits=None"):
        nbopt.quantize(demo_model, act_bits=8)
    with pytest.raises(NboptError, match="batch 1 has shape"):
        nbopt.quantize(demo_model, [calib[0], torch.randn(4, 1, 9, 9)], progress=False)
    with pytest.raises(NboptError, match="calibration batch 0"):
        nbopt.quantize(demo_model, torch.randn(4, 3, 8, 8), progress=False)


def test_keyboard_interrupt_during_calibration_leaves_model_intact(demo_model, calib):
    def interrupted():
        yield calib[0]
        raise KeyboardInterrupt
    before = Untouched(demo_model)
    with pytest.raises(KeyboardInterrupt):
        nbopt.quantize(demo_model, interrupted(), progress=False)
    before.assert_unchanged()


def test_sensitivity_cached_equals_naive_and_feeds_mixed_precision(demo_model, calib):
    before = Untouched(demo_model)
    fast = nbopt.sensitivity(demo_model, calib[0][:32], bits=(8, 4, 2), progress=False)
    slow = nbopt.sensitivity(demo_model, calib[0][:32], bits=(8, 4, 2), method="naive", progress=False)
    before.assert_unchanged()
    assert fast.attrs["method"] == "cached" and slow.attrs["method"] == "naive"
    cols = [c for c in fast.columns if c.startswith(("drop_", "sqnr_"))]
    assert torch.allclose(torch.tensor(fast[cols].values), torch.tensor(slow[cols].values), rtol=1e-4, atol=1e-4)
    assert (fast["sqnr_8bit"] > fast["sqnr_4bit"]).all() and (fast["sqnr_4bit"] > fast["sqnr_2bit"]).all()
    bits = nbopt.mixed_precision(fast, avg_bits=5)
    params = fast["params"]
    assert sum(params[n] * b for n, b in bits.items()) <= params.sum() * 5
    assert set(bits.values()) <= {8, 4, 2} and len(set(bits.values())) > 1
    r = nbopt.quantize(demo_model, calib, act_bits=None, layer_bits=bits, progress=False, repeat=1)
    assert r.report.weight_bits.to_dict() == bits
    with pytest.raises(NboptError, match="budget"):
        nbopt.mixed_precision(fast, budget_bytes=10)


def test_sensitivity_with_evaluate_is_accuracy_drop(demo_model, calib, fp32_acc):
    df = nbopt.sensitivity(demo_model, calib[:1], evaluate=demo.evaluate, bits=(2,), progress=False)
    assert df["drop_2bit"].max() > 0.01  # some layer really is fragile at 2 bits
    assert df["drop_2bit"].min() >= -0.01


def test_qat_recovers_low_bit_accuracy(demo_model, calib, fp32_acc):
    before = Untouched(demo_model)
    torch.manual_seed(0)
    r = nbopt.qat(demo_model, demo.train_loader(), nn.functional.cross_entropy, epochs=2, lr=5e-4, calib=calib[:2],
                  weight_bits=4, act_bits=8, granularity="per_tensor", evaluate=demo.evaluate, progress=False)
    before.assert_unchanged()
    acc = r.accuracy
    assert acc["quantized"] >= acc["post_training_quantized"]
    assert fp32_acc - acc["quantized"] <= 0.02
    assert r.mode == "qat" and not r.real
    x = calib[0]
    assert r.model(x).shape == demo_model(x).shape


@pytest.mark.parametrize("make, kwargs", [
    (lambda: QuantOptions(weight_bits=1), dict(weight_bits=1)),
    (lambda: QuantOptions().with_(weight_bits=17), dict(weight_bits=17)),
    (lambda: QuantOptions(act_bits=8).with_(act_bits=0), dict(act_bits=0)),
    (lambda: QuantOptions().with_(percentile=40.0), dict(percentile=40.0)),
])
def test_quant_options_are_checked_when_built(demo_model, calib, make, kwargs):
    """Direct construction and with_ (dataclasses.replace) raise exactly what quantize raises."""
    with pytest.raises(NboptError) as built:
        make()
    with pytest.raises(NboptError) as called:
        nbopt.quantize(demo_model, calib, progress=False, **kwargs)
    assert str(built.value) == str(called.value)


def test_quant_options_keep_valid_int8_report_settings():
    opts = QuantOptions(layer_bits=None)
    assert opts.layer_bits == {}
    w8 = opts.with_(weight_bits=8, granularity="per_channel", symmetric=True, observer="minmax", layer_bits={})
    assert w8.with_(act_bits=None).act_bits is None and w8.with_(act_bits=8).act_bits == 8


def test_qat_result_measures_the_qat_model(monkeypatch):
    """Sizes, latency, fidelity and accuracy belong to the QAT model; post-training accuracy to a PTQ copy."""
    from nbopt.model_state import disk_bytes, size_bytes
    from nbopt.quantization import api
    from nbopt.quantization.calibration import run_batches
    from nbopt.quantization.metrics import fidelity

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    xs = [torch.randn(4, 1, 8, 8) for _ in range(3)]
    data = list(zip(xs, [torch.randint(0, 3, (4,)) for _ in xs]))
    evaluated = []

    def evaluate(m):
        evaluated.append(m)
        with torch.no_grad():
            return float(sum((m(x).argmax(1) == y).float().mean() for x, y in data))
    timed = []
    real_call = api.call
    monkeypatch.setattr(api, "call", lambda m, x: (timed.append(m), real_call(m, x))[1])
    r = nbopt.qat(model, data, nn.functional.cross_entropy, epochs=1, lr=1e-2, weight_bits=4, act_bits=8,
                  evaluate=evaluate, progress=False)
    assert r.mode == "qat" and not r.real and r.backend == "simulate"
    assert set(r.latency_ms) == {"fp32", "quantized"} and r.model in timed
    assert {id(m) for m in timed} == {id(timed[0]), id(r.model)}  # only fp32 and the QAT model were timed
    q = r.size_bytes["quantized"]
    assert (q["dense"], q["disk"]) == (size_bytes(r.model), disk_bytes(r.model))
    ref = run_batches(model.eval(), xs, progress=False)
    assert r.fidelity == fidelity(ref, run_batches(r.model, xs, progress=False))
    assert r.accuracy["quantized"] == evaluate(r.model)
    ptq = nbopt.quantize(model, xs, weight_bits=4, act_bits=8, evaluate=evaluate, progress=False, repeat=1)
    assert list(r.accuracy) == ["fp32", "quantized", "post_training_quantized"]
    assert r.accuracy["post_training_quantized"] == ptq.accuracy["quantized"]
    assert r.accuracy["fp32"] == ptq.accuracy["fp32"]
    assert q["deployable"] == ptq.size_bytes["quantized"]["deployable"]


# ---------------------------------------------------------------- timing a user can trust (issue 18, section 2)

def _timed_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    return model.eval(), [torch.randn(4, 1, 8, 8) for _ in range(2)]


def test_quant_speedup_is_the_ratio_of_its_own_latencies_with_spread():
    model, xs = _timed_model()
    r = nbopt.quantize(model, xs, weight_bits=4, act_bits=8, progress=False, repeat=9)
    assert r.speedup == r.latency_ms["fp32"] / r.latency_ms["quantized"] == r.speedup_spread.value
    assert set(r.latency) == {"fp32", "quantized"}
    for side, s in r.latency.items():
        assert s["median_ms"] == r.latency_ms[side] and s["n"] == 9
        assert s["min_ms"] <= s["q1_ms"] <= s["median_ms"] <= s["q3_ms"] <= s["max_ms"]
    assert r.speedup_spread.n == 9 and r.speedup_spread.q1 <= r.speedup_spread.q3
    table = r.summary()
    assert table.loc["latency (ms, median)", "ratio"] == r.speedup
    assert table.loc["latency calls", "fp32"] == table.loc["latency calls", table.columns[1]] == 9
    assert table.loc["speedup q1 (x)", "ratio"] == r.speedup_spread.q1
    assert isinstance(r.noisy, bool) and ("IQR" in repr(r))
    assert (r.latency_note in r.notes and r.latency_note in repr(r)) if r.noisy else r.latency_note == ""
    assert "not faster" in r.notes[0]  # the simulated caveat stays first; a noise note is appended after


def test_quant_busy_machine_marks_the_speedup_noisy(monkeypatch):
    from nbopt import timing
    monkeypatch.setattr(timing, "machine_load", lambda: timing.MachineLoad(50.0, 2))
    model, xs = _timed_model()
    r = nbopt.quantize(model, xs, weight_bits=8, act_bits=8, progress=False, repeat=3)
    assert r.noisy and "machine busy (load 50.0 on 2 cores)" in r.latency_note
    assert r.notes[-1] == r.latency_note and "NOISY" in repr(r) and r.summary().attrs["note"] == r.latency_note
    assert r.latency_note.startswith("noisy speedup over fp32 ")


def test_quant_without_calibration_has_no_latency():
    model, _ = _timed_model()
    r = nbopt.quantize(model, None, weight_bits=4, act_bits=None, progress=False)
    assert r.latency_ms == {} and r.latency == {} and r.speedup_spread is None and not r.noisy
    assert math.isnan(r.speedup) and "speedup not measured" in repr(r)
    assert "latency q1 (ms)" not in r.summary().index


def test_qat_latency_has_quartiles():
    model, xs = _timed_model()
    data = [(x, torch.randint(0, 3, (4,))) for x in xs]
    r = nbopt.qat(model, data, nn.functional.cross_entropy, epochs=1, weight_bits=4, act_bits=8, progress=False)
    assert r.latency["fp32"]["n"] == r.latency["quantized"]["n"] == 9
    assert r.speedup == r.speedup_spread.value
