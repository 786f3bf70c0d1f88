"""The ATen dispatch-level counter: every op the model runs, counted and attributed to a module.

Counting happens in a ``TorchDispatchMode`` that is entered for one call and exited in ``finally``, so it
never outlives the call. Composite ops that reach the mode undecomposed (as under ``inference_mode``) are
decomposed first, so grad, no_grad and inference_mode give the same numbers. How each op overload is
handled is worked out once per counter and registry version (:class:`_Plan`), not on every call.
"""
from __future__ import annotations

import collections
from typing import Any, Callable, NamedTuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .attribution import ModuleNames, ModuleTracker
from .fast_meta import fast_meta
from .formulas import ATTENTION_KEY_SEQ_DIM, FORMULAS, POINTWISE, Cost, FormulaRegistry, is_pointwise, is_view
from .formulas.registry import Counting

_COMPOSITE = "CompositeImplicitAutograd"
aten = torch.ops.aten

# Meta kernels skip some dtype checks that the CPU/CUDA kernels make; a meta run checks them itself so that
# it rejects what a real run would. Ops whose tensor arguments must share one dtype:
_SAME_DTYPE = {aten.convolution, aten._convolution, aten.mm, aten.addmm, aten.bmm, aten.baddbmm, aten.mv,
               aten.addmv}
# ... and ops whose input must be floating point:
_FLOAT_INPUT = {aten.native_batch_norm, aten._native_batch_norm_legit, aten._native_batch_norm_legit_no_training,
                aten.native_layer_norm, aten.native_group_norm}

FREE, FORMULA, DECOMPOSE, UNCOUNTED = "free", "formula", "decompose", "uncounted"

# Bias adds are not counted (as in torch.utils.flop_counter and torchvision): addmm and convolution leave the
# bias out, and so does a linear layer that ATen runs as a matrix product followed by an ``add`` of its bias
# (``F.linear`` on a non-contiguous or >3-D input, the in-projections of attention, ``x @ w.T + b``). Products
# whose output is tracked, and the adds that are a bias add when they add a vector along its last dimension:
_PRODUCTS = {aten.mm, aten.bmm, aten.addmm, aten.baddbmm, aten.mv, aten.addmv, aten.dot}
_ADDS = {aten.add, aten.add_}


class _Plan(NamedTuple):
    """What to do with one op overload: ``kind``; for DECOMPOSE, ``fallback`` when it will not decompose."""

    kind: str
    count: Counting | None
    name: str
    fallback: "_Plan | None" = None
    dtype_rule: str | None = None
    fast: Callable[[tuple, dict], Any] | None = None  # quick output on meta tensors
    role: str | None = None  # "product" (output tracked), "add" (maybe a bias add) or "view" (follows outputs)
    key_seq_dim: int | None = None  # attention ops: the keys' sequence dimension (their KV bytes are recorded)


def _has_composite(func: Any) -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), _COMPOSITE)
    except RuntimeError:  # an op outside the dispatcher's tables (``prim::device`` under fake tensors)
        return False


def _run_plan(func: Any, formulas: FormulaRegistry) -> _Plan:
    """How to count ``func`` once it runs as itself."""
    packet = func.overloadpacket
    rule = "same" if packet in _SAME_DTYPE else "float" if packet in _FLOAT_INPUT else None
    formula = formulas.get(packet)
    if formula is not None:
        return _Plan(FORMULA, formula.bind(func), str(packet), dtype_rule=rule, fast=fast_meta(packet),
                     key_seq_dim=ATTENTION_KEY_SEQ_DIM.get(packet))
    if formulas.is_zero_cost(packet) or is_view(func) or getattr(func, "namespace", "") == "prim":
        return _Plan(FREE, None, str(packet))
    if is_pointwise(func):
        return _Plan(FORMULA, POINTWISE.bind(func), str(packet), fast=fast_meta(packet))
    return _Plan(UNCOUNTED, None, str(packet))


def _role(func: Any, kind: str) -> str | None:
    packet = func.overloadpacket
    if packet in _PRODUCTS:
        return "product"
    if packet in _ADDS and func._overloadname == "Tensor":
        return "add"
    if kind == FREE:
        return "view"
    return None


def make_plan(func: Any, formulas: FormulaRegistry = FORMULAS) -> _Plan:
    """Composite ops without a formula are decomposed (their parts are counted); the rest run as themselves."""
    plan = _run_plan(func, formulas)
    if plan.kind != FREE and func.overloadpacket not in formulas and _has_composite(func):
        return _Plan(DECOMPOSE, None, plan.name, fallback=plan._replace(role=_role(func, plan.kind)))
    return plan._replace(role=_role(func, plan.kind))


def _is_bias_add(product: Any, args: tuple, kwargs: dict) -> bool:
    """``product + b`` (either order) with ``b`` a vector along the product's last dimension, alpha 1."""
    if len(args) < 2 or kwargs.get("alpha", 1) != 1:
        return False
    a, b = args[0], args[1]
    if b is product:
        a, b = b, a
    return (a is product and isinstance(b, torch.Tensor) and b.dim() == 1 and a.dim() >= 1
            and b.shape[0] == a.shape[-1])


def check_dtypes(plan: _Plan, args: tuple) -> None:
    """Raise the dtype errors a CPU kernel would raise, for ops whose meta kernel does not check them."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if plan.dtype_rule == "same" and len({t.dtype for t in tensors}) > 1:
        got = ", ".join(str(t.dtype).replace("torch.", "") for t in tensors)
        raise RuntimeError(f"{plan.name} expects its tensors to share one dtype, got {got}")
    if plan.dtype_rule == "float" and tensors and not tensors[0].is_floating_point():
        raise RuntimeError(f"{plan.name} is not implemented for {tensors[0].dtype} input")


class OpCounter(TorchDispatchMode):
    """Counts MACs/FLOPs of every ATen op with ``formulas`` and hands them to ``tracker`` for attribution.

    ``formulas`` is the registry to count with (the global one by default, or a per-call overlay); plans
    cached per op overload are dropped whenever its ``version`` changes. ``meta=True`` (a run on meta
    tensors) adds the dtype checks that meta kernels leave out and makes the outputs of ops with slow meta
    kernels directly (:mod:`.fast_meta`).
    """

    def __init__(self, tracker: ModuleTracker, *, meta: bool = False, formulas: FormulaRegistry | None = None
                 ) -> None:
        super().__init__()
        self.tracker = tracker
        self.meta = meta
        self.formulas = formulas if formulas is not None else FORMULAS
        self.uncounted: collections.Counter[str] = collections.Counter()
        self.counted_calls = 0
        self._plans: dict[Any, _Plan] = {}
        self._plans_version = self.formulas.version
        self._product: torch.Tensor | None = None  # the output of the last matrix product (or a view of it)

    def _plan(self, func: Any) -> _Plan:
        version = self.formulas.version
        if version != self._plans_version:  # a formula was registered mid-run: no stale plan survives
            self._plans.clear()
            self._plans_version = version
        plan = self._plans.get(func)
        if plan is None:
            plan = self._plans[func] = make_plan(func, self.formulas)
        return plan

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        plan = self._plan(func)
        if plan.kind == DECOMPOSE:
            with self:  # count the parts of a composite op (inference_mode hands them to us whole)
                result = func.decompose(*args, **kwargs)
            if result is not NotImplemented:
                return result
            plan = plan.fallback
        out = NotImplemented
        if self.meta:
            if plan.dtype_rule:
                check_dtypes(plan, args)
            if plan.fast is not None:
                out = plan.fast(args, kwargs)
        if out is NotImplemented:
            out = func(*args, **kwargs)
        if plan.kind == FREE:
            if plan.role == "view" and self._product is not None and args and args[0] is self._product:
                self._product = out  # a view or reshape of the product: a bias add may follow on it
            return out
        if plan.kind == UNCOUNTED:
            self.uncounted[plan.name] += 1
            return out
        if plan.role == "add" and self._product is not None and _is_bias_add(self._product, args, kwargs):
            self._product = None
            return out  # a linear layer's bias add: not counted (see _PRODUCTS)
        cost = plan.count(args, kwargs, out)
        self.counted_calls += 1
        self.tracker.add(cost.macs, cost.flops)
        if plan.key_seq_dim is not None:
            self._read_kv(plan.key_seq_dim, args, kwargs)
        if plan.role == "product":
            self._product = out
        return out

    def _read_kv(self, seq_dim: int, args: tuple, kwargs: dict) -> None:
        """Record the bytes of keys and values an attention kernel reads (the KV cache, on decode steps)."""
        k = args[1] if len(args) > 1 else kwargs.get("key")
        v = args[2] if len(args) > 2 else kwargs.get("value")
        if isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor) and k.dim() >= 3:
            nbytes = k.numel() * k.element_size() + v.numel() * v.element_size()
            self.tracker.add_kv(nbytes, int(k.shape[seq_dim]))

    @property
    def coverage(self) -> float:
        """Share of arithmetic op calls that had a formula (1.0 = nothing escaped)."""
        total = self.counted_calls + sum(self.uncounted.values())
        return self.counted_calls / total if total else 1.0


def count_cost(fn: Any, *args: Any, **kwargs: Any) -> Cost:
    """Total cost of calling ``fn(*args, **kwargs)`` with the global formulas (no module attribution)."""
    tracker = ModuleTracker(ModuleNames())
    with OpCounter(tracker):
        fn(*args, **kwargs)
    st = tracker.stats.values()
    return Cost(sum(s.macs for s in st), sum(s.flops for s in st))
