"""Latency per intra-op thread count."""
from __future__ import annotations

from typing import Any, Iterable

import pandas as pd
import torch
from torch import nn

from ..errors import NboptError
from ..inputs import call, check_device, check_module
from ..model_state import working_copy
from ..timing import measure


def _check_threads(threads: Iterable[int]) -> list[int]:
    values = list(threads)
    if not values or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 1 for t in values):
        raise NboptError(f"threads must be positive integers, e.g. threads=(1, 2, 4); got {values!r}.")
    return values


def threads_sweep(model: nn.Module, inputs: Any, threads: Iterable[int] = (1, 2), *, warmup: int = 3,
                  repeat: int = 20, progress: bool = False) -> pd.DataFrame:
    """Median latency of ``model(inputs)`` with ``torch.set_num_threads(n)`` for each ``n``.

    Columns: threads, latency_ms, speedup (over the first entry), efficiency (speedup / threads ratio).
    The process's thread count is restored afterwards. Plot with ``nbopt.display.figures.plot_threads``.
    """
    values = _check_threads(threads)
    check_module(model)
    check_device(model, inputs)
    work = working_copy(model).eval()
    before = torch.get_num_threads()
    rows = []
    from tqdm.auto import tqdm

    try:
        for n in tqdm(values, desc="threads", disable=not progress):
            torch.set_num_threads(n)
            t = measure(lambda: call(work, inputs), warmup=warmup, repeat=repeat)
            rows.append({"threads": n, "latency_ms": t.median_ms})
    finally:
        torch.set_num_threads(before)
    df = pd.DataFrame(rows)
    df["speedup"] = df["latency_ms"].iloc[0] / df["latency_ms"]
    df["efficiency"] = df["speedup"] / (df["threads"] / df["threads"].iloc[0])
    return df
