"""One way to time things: warmup, repeats, median, interleaved comparisons (for ratios), CUDA sync."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch


@dataclass
class Timing:
    """Repeated wall-clock samples of one callable, in milliseconds."""

    samples_ms: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms) if self.samples_ms else float("nan")

    @property
    def min_ms(self) -> float:
        return min(self.samples_ms) if self.samples_ms else float("nan")

    def __repr__(self) -> str:
        return f"Timing(median={self.median_ms:.3f} ms, n={len(self.samples_ms)})"


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for queued GPU work, so a timer measures the kernels and not their launch."""
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()


def measure(fn: Callable[[], object], *, warmup: int = 3, repeat: int = 10,
            device: torch.device | str | None = None) -> Timing:
    """Median-able timings of ``fn()`` after ``warmup`` untimed calls."""
    with torch.no_grad():
        for _ in range(max(0, warmup)):
            fn()
        synchronize(device)
        timing = Timing()
        for _ in range(max(1, repeat)):
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            timing.samples_ms.append((time.perf_counter() - t0) * 1e3)
    return timing


def compare(fns: Mapping[str, Callable[[], object]], *, warmup: int = 3, repeat: int = 10, block: int = 1,
            settle_ms: float = 0.0, device: torch.device | str | None = None) -> dict[str, Timing]:
    """Time several callables interleaved (A, B, A, B, ...) so drifting machine load hits all alike.

    ``block > 1`` interleaves blocks instead of single calls: each block starts with untimed calls (one, or
    as many as fill ``settle_ms``), then times ``block`` calls in a row (``repeat`` blocks per callable).
    That measures each program in steady state, as a user's loop runs it: runtimes whose idle threads keep
    spinning after a call (torch's OpenMP pool for up to ~200 ms, onnxruntime) otherwise slow whichever
    program runs right after them.
    """
    timings = {name: Timing() for name in fns}
    with torch.no_grad():
        for _ in range(max(0, warmup)):
            for fn in fns.values():
                fn()
        synchronize(device)
        for _ in range(max(1, repeat)):
            for name, fn in fns.items():
                if block > 1:
                    _settle(fn, settle_ms, device)
                for _ in range(max(1, block)):
                    t0 = time.perf_counter()
                    fn()
                    synchronize(device)
                    timings[name].samples_ms.append((time.perf_counter() - t0) * 1e3)
    return timings


def _settle(fn: Callable[[], object], settle_ms: float, device: torch.device | str | None) -> None:
    """Call ``fn`` untimed at least once and until ``settle_ms`` have passed."""
    t0 = time.perf_counter()
    while True:
        fn()
        synchronize(device)
        if (time.perf_counter() - t0) * 1e3 >= settle_ms:
            return


def auto_repeat(fn: Callable[[], object], *, budget_s: float = 1.0, lo: int = 3, hi: int = 20,
                device: torch.device | str | None = None) -> int:
    """How many repeats of ``fn`` fit in about ``budget_s`` seconds (one call is timed to find out)."""
    with torch.no_grad():
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        once = time.perf_counter() - t0
    return int(min(hi, max(lo, budget_s / max(once, 1e-6))))


def module_latencies(fn: Callable[[], object], names: Mapping[int, str], *, repeat: int = 10,
                     device: torch.device | str | None = None) -> dict[str, float]:
    """Median inclusive wall time (ms) each named module spends per call of ``fn``.

    Uses PyTorch's global module hooks for the duration of the call only; they are always removed.
    """
    from torch.nn.modules import module as _module

    runs: list[dict[str, float]] = []
    stack: list[tuple[int, float]] = []

    def pre(module: torch.nn.Module, args: tuple) -> None:
        synchronize(device)
        stack.append((id(module), time.perf_counter()))

    def post(module: torch.nn.Module, args: tuple, output: object) -> None:
        if not stack or stack[-1][0] != id(module):
            return
        synchronize(device)
        _, t0 = stack.pop()
        name = names.get(id(module))
        if name is not None:
            runs[-1][name] = runs[-1].get(name, 0.0) + (time.perf_counter() - t0) * 1e3

    handles = [_module.register_module_forward_pre_hook(pre),
               _module.register_module_forward_hook(post, always_call=True)]
    try:
        with torch.no_grad():
            for _ in range(max(1, repeat)):
                runs.append({})
                stack.clear()
                fn()
    finally:
        for h in handles:
            h.remove()
    keys = set().union(*runs) if runs else set()
    return {k: statistics.median(r.get(k, 0.0) for r in runs) for k in keys}
