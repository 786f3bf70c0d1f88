"""The ATen dispatch-level counter: every op the model runs, counted and attributed to a module.

Counting happens in a ``TorchDispatchMode`` that is entered for one call and exited in ``finally``, so it
never outlives the call. Composite ops that reach the mode undecomposed (as under ``inference_mode``) are
decomposed first, so grad, no_grad and inference_mode give the same numbers.
"""
from __future__ import annotations

import collections
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .attribution import ModuleTracker
from .formulas import FORMULAS, ZERO_COST, Cost, is_pointwise, is_view, pointwise_cost

_COMPOSITE = "CompositeImplicitAutograd"


def _has_composite(func: Any) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), _COMPOSITE)


class OpCounter(TorchDispatchMode):
    """Counts MACs/FLOPs of every ATen op and hands them to ``tracker`` for attribution."""

    def __init__(self, tracker: ModuleTracker) -> None:
        super().__init__()
        self.tracker = tracker
        self.uncounted: collections.Counter[str] = collections.Counter()
        self.counted_calls = 0
        self.op_costs: collections.Counter[str] = collections.Counter()  # MACs by op, for the curious

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        packet = func.overloadpacket
        formula = FORMULAS.get(packet)
        if formula is None and packet not in ZERO_COST and _has_composite(func) and not is_view(func):
            with self:  # count the parts of a composite op (inference_mode hands them to us whole)
                result = func.decompose(*args, **kwargs)
            if result is not NotImplemented:
                return result
        out = func(*args, **kwargs)
        if formula is not None:
            cost = formula(args, kwargs, out)
        elif packet in ZERO_COST or is_view(func):
            return out
        elif is_pointwise(func):
            cost = pointwise_cost(args, kwargs, out)
        else:
            self.uncounted[str(packet)] += 1
            return out
        self.counted_calls += 1
        if not self.tracker.suppressed:
            self.op_costs[str(packet)] += cost.macs
        self.tracker.add(cost.macs, cost.flops)
        return out

    @property
    def coverage(self) -> float:
        """Share of arithmetic op calls that had a formula (1.0 = nothing escaped)."""
        total = self.counted_calls + sum(self.uncounted.values())
        return self.counted_calls / total if total else 1.0


def count_cost(fn: Any, *args: Any, **kwargs: Any) -> Cost:
    """Total cost of calling ``fn(*args, **kwargs)`` (no module attribution) — handy in tests."""
    from .attribution import ModuleNames
    tracker = ModuleTracker(ModuleNames())
    counter = OpCounter(tracker)
    with counter:
        fn(*args, **kwargs)
    st = tracker.stats.values()
    return Cost(sum(s.macs for s in st), sum(s.flops for s in st))
