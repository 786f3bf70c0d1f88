"""timing.compare_pair / Pair: one interleaved measurement gives both latencies, their ratio and its spread, and a
noise check. Structural invariants only, never a wall-clock value."""
from __future__ import annotations

import math

from nbopt import timing
from nbopt.timing import MachineLoad, Pair, Timing, compare_pair

QUIET = MachineLoad(0.0, 2)


def test_pair_speedup_is_the_ratio_of_its_own_medians():
    p = Pair(("a", "b"), Timing([4.0, 4.2, 3.9, 4.1, 4.0]), Timing([1.0, 1.1, 0.95, 1.05, 1.0]), QUIET, 0.0)
    r = p.speedup
    assert r.value == p.baseline.median_ms / p.other.median_ms and r.n == 5
    assert r.q1 <= r.value <= r.q3
    assert not p.noisy and p.note() == ""
    assert set(p.summaries()) == {"a", "b"} and p.summaries()["a"]["n"] == 5


def test_pair_noise_check_names_each_reason():
    quiet_a, quiet_b = Timing([4.0, 4.1, 3.9, 4.0, 4.05]), Timing([1.0, 1.02, 0.98, 1.0, 1.01])
    busy = Pair(("a", "b"), quiet_a, quiet_b, MachineLoad(7.5, 2), 0.0)
    assert busy.noisy and "machine busy (load 7.5 on 2 cores)" in busy.note("speedup")
    assert busy.note("speedup").startswith("noisy speedup ") and "IQR" in busy.note("speedup")
    contended = Pair(("a", "b"), quiet_a, quiet_b, QUIET, 0.6)
    assert contended.contended and contended.noisy and "waited for a CPU 60%" in contended.note()
    spread = Pair(("a", "b"), Timing([1.0, 5.0, 1.2, 4.0, 2.0]), quiet_b, QUIET, None)
    assert spread.noisy and "for a" in spread.note() and not spread.contended


def test_compare_pair_times_both_sides_in_one_interleaved_call():
    calls = []
    p = compare_pair(lambda: calls.append("a"), lambda: calls.append("b"), names=("a", "b"), warmup=1,
                     repeat=6, steady=False)
    assert p.baseline.n == p.other.n == 6 and p.names == ("a", "b")
    assert calls[:4] == ["a", "b", "a", "b"]  # warm-up round, then alternating timed calls
    steady = compare_pair(lambda: None, lambda: None, repeat=9)
    assert steady.baseline.n == steady.other.n == 9  # 3 blocks of 3
    for t in (steady.baseline, steady.other):
        assert t.q1_ms <= t.median_ms <= t.q3_ms
    assert steady.cpu_wait is None or steady.cpu_wait >= 0
    assert isinstance(steady.noisy, bool)


def test_compare_pair_records_the_busier_load(monkeypatch):
    loads = iter([MachineLoad(0.5, 2), MachineLoad(9.0, 2)])
    monkeypatch.setattr(timing, "machine_load", lambda: next(loads))
    work = lambda: sum(range(200))  # noqa: E731
    p = compare_pair(work, work, repeat=3, steady=False)
    assert p.load.load_1min == 9.0 and p.noisy and "machine busy" in p.note()
    assert not math.isnan(p.speedup.value)
