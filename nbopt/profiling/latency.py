"""Latency of a whole forward and of every module in it, through the one timing helper (:mod:`nbopt.timing`)."""
from __future__ import annotations

from typing import Any, Callable

import torch

from .. import timing
from .attribution import ModuleNames


def measure_latency(fn: Callable[[], Any], names: ModuleNames, warmup: int, repeat: int | None,
                    device: torch.device) -> tuple[float, dict[str, float]]:
    """Median ms of ``fn()`` and inclusive median ms per named module, after ``warmup`` calls.

    ``repeat=None`` picks a count that fits about a second.
    """
    for _ in range(max(0, warmup)):
        with torch.no_grad():
            fn()
    n = repeat if repeat is not None else timing.auto_repeat(fn, device=device)
    total = timing.measure(fn, warmup=0, repeat=n, device=device).median_ms
    per_module = timing.module_latencies(fn, names.names, repeat=n, device=device)
    return total, per_module
