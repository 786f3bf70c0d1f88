"""Top-level forward calls: fresh copies of the inputs a forward may mutate, and one row per call.

A forward may change what it is given: a Hugging Face decoder appends to the ``DynamicCache`` passed as
``past_key_values`` (512 -> 513 tokens), and a static cache is written in place. Every forward nbopt runs itself
(the counted one, each latency repeat, each replayed call) gets :func:`fresh` inputs, so the caller's objects are
never changed and every repeat sees the same inputs. Tensors given directly are shared (a forward does not write
into its inputs); every other object (cache, ``ModelOutput``, dataclass) is deep-copied, tensors inside included
(one that cannot be copied, such as an open file, is passed as it is).

:class:`CallStats` is what one top-level forward did (its model, tokens in, MACs, FLOPs, the keys and values
its attention kernels read); :func:`calls_table` lays them out, one row per call (prefill, then each decode
step of ``generate()``).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch.utils._python_dispatch import _disable_current_modes

_PLAIN = (torch.Tensor, int, float, bool, str, bytes, complex, type(None), torch.dtype, torch.device,
          torch.memory_format, torch.layout, slice, type(Ellipsis))

CALL_COLUMNS = ["model", "input_tokens", "context_tokens", "macs", "flops", "macs_per_generated_token",
                "kv_bytes_read"]


def _mutable(obj: Any, depth: int = 0) -> bool:
    """True when ``obj`` holds an object other than tensors, numbers and strings in plain containers."""
    if isinstance(obj, _PLAIN):
        return False
    if type(obj) in (tuple, list) and depth < 8:
        return any(_mutable(v, depth + 1) for v in obj)
    if type(obj) is dict and depth < 8:
        return any(_mutable(v, depth + 1) for v in obj.values())
    return True


def needs_copy(*objs: Any) -> bool:
    """Whether :func:`fresh` would copy anything in ``objs`` (cheap check, to skip copying plain tensors)."""
    return any(_mutable(o) for o in objs)


def fresh(obj: Any) -> Any:
    """``obj`` with its plain containers rebuilt, tensors shared and every other object deep-copied.

    The copy runs outside any active dispatch mode (a counter or fake-tensor mode sees none of it).
    """
    if not needs_copy(obj):
        return obj
    with _disable_current_modes():
        return _fresh(obj, {})


def _fresh(obj: Any, memo: dict) -> Any:
    if isinstance(obj, _PLAIN):
        return obj
    if type(obj) in (tuple, list):
        return type(obj)(_fresh(v, memo) for v in obj)
    if type(obj) is dict:
        return {k: _fresh(v, memo) for k, v in obj.items()}
    try:
        return copy.deepcopy(obj, memo)
    except Exception:  # noqa: BLE001 - an object that cannot be copied (a handle, a lock) is passed as it is
        return obj


def _copied(obj: Any) -> list[Any]:
    """The objects :func:`fresh` deep-copies in ``obj``."""
    if not needs_copy(obj):
        return []
    if type(obj) in (tuple, list):
        return [o for v in obj for o in _copied(v)]
    if type(obj) is dict:
        return [o for v in obj.values() for o in _copied(v)]
    return [obj]


def copy_note(*objs: Any) -> str:
    """The profile's note saying which inputs were copied before every forward."""
    kinds = ", ".join(sorted({type(o).__name__ for obj in objs for o in _copied(obj)}))
    return (f"the inputs hold objects a forward may change ({kinds}): every forward nbopt ran got a fresh copy, "
            "so yours are unchanged and every repeat saw the same inputs")


@dataclass
class CallStats:
    """One top-level forward: which model, tokens in (``input_ids``), batch, and what it did."""

    model: str
    input_tokens: int | None = None
    batch: int | None = None
    macs: int = 0
    flops: int = 0
    kv_bytes: int | None = None
    context_tokens: int | None = None

    def add_kv(self, nbytes: int, context: int) -> None:
        """Keys and values read by one attention kernel call (``context`` keys per sequence)."""
        self.kv_bytes = (self.kv_bytes or 0) + nbytes
        self.context_tokens = max(self.context_tokens or 0, context)


def token_ids(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The token ids of a call: ``input_ids`` (or ``decoder_input_ids``), else a first integer tensor argument."""
    for key in ("input_ids", "decoder_input_ids"):
        t = kwargs.get(key)
        if isinstance(t, torch.Tensor):
            return t
    first = args[0] if args else None
    if isinstance(first, torch.Tensor) and not first.is_floating_point() and not first.is_complex():
        return first
    return None


def new_call(model: str, args: tuple, kwargs: dict) -> CallStats:
    ids = token_ids(args, kwargs)
    if ids is None:
        return CallStats(model)
    return CallStats(model, int(ids.numel()), int(ids.shape[0]) if ids.dim() > 1 else 1)


def calls_table(calls: list[CallStats]) -> pd.DataFrame:
    """One row per top-level forward (index ``call``, from 0): :data:`CALL_COLUMNS`.

    ``macs_per_generated_token`` is the call's MACs per sequence in the batch (each forward of ``generate()``
    yields one new token per sequence); ``context_tokens`` is the number of keys each query attended to (the
    KV-cache length after the call's own tokens were added); ``kv_bytes_read`` the bytes of keys and values the
    attention kernels read. Both are NaN where attention ran as plain matrix products (no attention kernel).
    """
    nan = math.nan
    rows = [{"model": c.model,
             "input_tokens": c.input_tokens if c.input_tokens is not None else nan,
             "context_tokens": c.context_tokens if c.context_tokens is not None else nan,
             "macs": c.macs, "flops": c.flops,
             "macs_per_generated_token": c.macs / c.batch if c.batch else nan,
             "kv_bytes_read": c.kv_bytes if c.kv_bytes is not None else nan} for c in calls]
    return pd.DataFrame(rows, columns=CALL_COLUMNS, index=pd.RangeIndex(len(rows), name="call"))
