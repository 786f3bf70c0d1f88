"""Latency of a whole forward and of every module in it, through the one timing helper (:mod:`nbopt.timing`).

The whole forward is timed without hooks (the number a user's loop sees); every module is timed in separate
calls with global module hooks, interleaved with those (one plain call, one hooked call, per round), which measure each module's inclusive time and its own (self) time directly:
an invocation's time minus that of the named modules it called, in the same call. Own times are therefore
never negative, and in each call they add up to the outermost module's inclusive time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from .. import timing
from .attribution import ModuleNames


@dataclass
class Latency:
    """One latency measurement: the whole forward (``whole``), each module (``modules``), the machine's load."""

    whole: timing.Timing
    modules: timing.ModuleTimings
    load: timing.MachineLoad

    @property
    def median_ms(self) -> float:
        return self.whole.median_ms


def measure_latency(fn: Callable[[], Any], names: ModuleNames, warmup: int, repeat: int | None,
                    device: torch.device) -> Latency:
    """Time ``fn()`` whole and per named module, after ``warmup`` untimed calls.

    ``repeat=None`` picks a count that fits about a second.
    """
    for _ in range(max(0, warmup)):
        with torch.no_grad():
            fn()
    n = repeat if repeat is not None else timing.auto_repeat(fn, device=device)
    whole = timing.Timing()
    rounds = []
    for _ in range(n):  # interleaved, one plain and one hooked call per round, so drifting load hits both
        whole.samples_ms += timing.measure(fn, warmup=0, repeat=1, device=device).samples_ms
        rounds.append(timing.module_timings(fn, names.names, repeat=1, device=device))
    return Latency(whole, _merge(rounds), timing.machine_load())


def _merge(rounds: list[timing.ModuleTimings]) -> timing.ModuleTimings:
    """One :class:`~nbopt.timing.ModuleTimings` of several one-call ones (0 ms where a module did not run)."""
    keys = set().union(*(r.inclusive for r in rounds))

    def samples(which: str, k: str) -> timing.Timing:
        return timing.Timing([getattr(r, which)[k].samples_ms[0] if k in getattr(r, which) else 0.0
                              for r in rounds])
    return timing.ModuleTimings(inclusive={k: samples("inclusive", k) for k in keys},
                                own={k: samples("own", k) for k in keys}, calls=len(rounds))
