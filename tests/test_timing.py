"""The shared timing helpers: spread, noise flags and notes, ratios, per-module own time (no wall-clock asserts)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nbopt import timing
from nbopt.timing import MachineLoad, Timing

QUIET = MachineLoad(load_1min=0.1, cores=4)
BUSY = MachineLoad(load_1min=9.0, cores=4)


def test_spread_and_noisy_flag_on_hand_made_samples():
    steady = Timing([10.0, 10.1, 9.9, 10.0, 10.05, 9.95])
    assert steady.q1_ms <= steady.median_ms <= steady.q3_ms
    assert steady.spread < timing.NOISY_SPREAD and not steady.noisy
    jumpy = Timing([1.9, 57.8, 2.0, 40.0, 2.1, 30.0])
    assert jumpy.noisy and jumpy.spread > timing.NOISY_SPREAD
    assert jumpy.summary()["n"] == 6 and jumpy.summary()["min_ms"] == 1.9
    assert math.isnan(Timing().median_ms) and not Timing().noisy


def test_is_noisy_and_noise_note():
    steady, jumpy = Timing([5.0] * 8), Timing([1.0, 9.0, 1.0, 9.0, 1.0, 9.0])
    assert not timing.is_noisy(steady, QUIET) and timing.noise_note(steady, QUIET) == ""
    assert timing.is_noisy(steady, BUSY)
    assert "machine busy (load 9.0 on 4 cores)" in timing.noise_note(steady, BUSY)
    assert timing.is_noisy({"a": steady, "b": jumpy})
    note = timing.noise_note({"a": steady, "b": jumpy}, QUIET)
    assert note.startswith("noisy latency:") and "for b" in note and "for a" not in note
    assert "only 2 timed calls" in timing.noise_note([Timing([1.0, 3.0])])
    assert timing.noise_note([steady, steady]) == ""


def test_ratio_comes_from_paired_rounds():
    base, fast = Timing([4.0, 8.0, 4.0, 4.0]), Timing([1.0, 2.0, 1.0, 2.0])
    r = timing.ratio(base, fast)
    assert r.value == base.median_ms / fast.median_ms and r.n == 4
    assert r.q1 <= r.q3 and {b / o for b, o in zip(base.samples_ms, fast.samples_ms)} == {4.0, 2.0}


class Leafy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 64)
        self.inner = nn.Sequential(nn.Linear(64, 64), nn.ReLU())
        self.b = nn.Linear(64, 64)

    def forward(self, x):
        return self.b(self.inner(self.a(x)) + self.a(x))  # self.a runs twice per call


def test_module_timings_own_time_adds_up_in_every_call():
    model = Leafy().eval()
    names = {id(m): n or "(root)" for n, m in model.named_modules()}
    x = torch.randn(8, 64)
    mt = timing.module_timings(lambda: model(x), names, repeat=5)
    assert mt.calls == 5 and set(mt.inclusive) == set(names.values())
    for i in range(5):
        own = sum(t.samples_ms[i] for t in mt.own.values())
        assert own == pytest.approx(mt.inclusive["(root)"].samples_ms[i], rel=1e-9, abs=1e-9)
    for name, t in mt.own.items():
        assert all(s >= 0 for s in t.samples_ms), name
        assert all(o <= i + 1e-12 for o, i in zip(t.samples_ms, mt.inclusive[name].samples_ms))
    # inclusive of a container >= the sum of its children's inclusive, call by call
    inner = mt.inclusive["inner"].samples_ms
    kids = [a + b for a, b in zip(mt.inclusive["inner.0"].samples_ms, mt.inclusive["inner.1"].samples_ms)]
    assert all(i >= k for i, k in zip(inner, kids))


def test_module_timings_unnamed_modules_are_transparent():
    model = Leafy().eval()
    names = {id(model): "(root)", id(model.inner[0]): "inner.0"}  # `inner` itself is not named
    mt = timing.module_timings(lambda: model(torch.randn(2, 64)), names, repeat=3)
    assert set(mt.own) == {"(root)", "inner.0"}
    for i in range(3):
        assert mt.own["(root)"].samples_ms[i] + mt.own["inner.0"].samples_ms[i] == pytest.approx(
            mt.inclusive["(root)"].samples_ms[i])


def test_machine_load_shape():
    load = timing.machine_load()
    assert load.cores >= 1 and isinstance(load.busy, bool)
    assert MachineLoad(float("nan"), 2).busy is False  # no load average: not called busy
