"""Latency per intra-op thread count."""
from __future__ import annotations

from typing import Any, Iterable

import pandas as pd
import torch
from torch import nn

from ..errors import NboptError
from ..inputs import call, check_device, check_module, check_not_meta
from ..model_state import working_copy
from ..timing import CONTENDED_WAIT, compare_steady, is_noisy, noise_note, ratio


def _check_threads(threads: Iterable[int]) -> list[int]:
    values = list(threads)
    if not values or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 1 for t in values):
        raise NboptError(f"threads must be positive integers, e.g. threads=(1, 2, 4); got {values!r}.")
    return values


def threads_sweep(model: nn.Module, inputs: Any, threads: Iterable[int] = (1, 2), *, warmup: int = 3,
                  repeat: int = 20, progress: bool = False) -> pd.DataFrame:
    """Latency of ``model(inputs)`` with ``torch.set_num_threads(n)`` for each ``n``, all in ONE interleaved
    timing (blocks of 3 calls per thread count, each after untimed calls at that count), about ``repeat``
    timed calls per count.

    Columns: threads, latency_ms (median), latency_q1_ms, latency_q3_ms, latency_calls, speedup (over the first
    entry: exactly its latency_ms / this one's), speedup_q1, speedup_q3 (quartiles of the per-round ratios),
    efficiency (speedup / threads ratio), noisy. ``.attrs["noisy"]`` and ``.attrs["note"]`` say when the timing
    was noisy, the machine busy or its CPUs contended (then the speedups are not findings). The process's
    thread count is restored afterwards. ``progress`` is accepted for compatibility (one interleaved timing has
    no per-count steps to show). Plot with ``nbopt.display.figures.plot_threads``.
    """
    values = _check_threads(threads)
    check_module(model)
    check_not_meta(model, "thread timing")
    check_device(model, inputs)
    work = working_copy(model).eval()
    before = torch.get_num_threads()

    def at(n: int):
        def fn():
            if torch.get_num_threads() != n:
                torch.set_num_threads(n)
            return call(work, inputs)
        return fn

    try:
        t, load, wait = compare_steady({n: at(n) for n in dict.fromkeys(values)}, warmup=warmup, repeat=repeat)
    finally:
        torch.set_num_threads(before)
    first = t[values[0]]
    rows = []
    for n in values:
        r = ratio(first, t[n])
        rows.append({"threads": n, "latency_ms": t[n].median_ms, "latency_q1_ms": t[n].q1_ms,
                     "latency_q3_ms": t[n].q3_ms, "latency_calls": t[n].n, "speedup": r.value,
                     "speedup_q1": r.q1, "speedup_q3": r.q3,
                     "noisy": bool(t[n].noisy or (n != values[0] and r.noisy))})
    df = pd.DataFrame(rows)
    df["efficiency"] = df["speedup"] / (df["threads"] / df["threads"].iloc[0])
    contended = wait is not None and wait > CONTENDED_WAIT
    noisy = bool(is_noisy({f"{n} threads": t[n] for n in t}, load) or df["noisy"].any() or contended)
    note = noise_note({f"{n} threads": t[n] for n in t}, load, what="thread speedups") if noisy else ""
    if noisy and contended:
        note = (note + " " if note else "noisy thread speedups: ") + (
            f"The timed threads waited for a CPU {100 * wait:.0f}% of the time (other processes were running); "
            "more threads than free cores make each call wait for the slowest thread.")
    if noisy and not note:
        note = ("noisy thread speedups: the per-round ratios spread more than a quarter of the speedup. "
                "Differences smaller than the spread are not findings; re-run on a quiet machine.")
    df.attrs.update(noisy=noisy, note=note, load=load, cpu_wait=wait)
    return df
