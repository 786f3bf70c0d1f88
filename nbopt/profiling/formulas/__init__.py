"""How much work an op does: the global :class:`FormulaRegistry` (``FORMULAS``), seeded with the built-in
ATen formulas of :mod:`.aten`, and :func:`register_formula` to add your own."""
from __future__ import annotations

from typing import Any, Callable

from .aten import ATTENTION_KEY_SEQ_DIM, BUILTIN, ZERO_COST_OPS, is_pointwise, is_view, pointwise_cost
from .registry import Cost, Formula, FormulaRegistry, as_cost, resolve_op, schema_binder


def _builtin_registry() -> FormulaRegistry:
    registry = FormulaRegistry()
    for op, fn in BUILTIN.items():
        registry.register(op, Formula.named(fn, builtin=True))
    registry.add_zero_cost(*ZERO_COST_OPS)
    return registry


FORMULAS = _builtin_registry()          # the global registry every profile() call starts from
POINTWISE = Formula.named(pointwise_cost, builtin=True)


def register_formula(op: Any, fn: Callable[..., Any] | None = None, *, override: bool = False) -> Any:
    """Register how to count ``op`` globally; usable as a decorator (``@register_formula("mylib::op")``).

    ``op`` is a ``torch.ops.*`` op or overload, or its name: ``"mylib::my_op"`` (a string without a
    namespace means ``aten``). ``fn(*args, out=<output>, **kwargs)`` receives the op's real arguments
    (tensors have shapes) and returns FLOPs as an int, or ``(macs, flops)``. An op that already has a
    formula (built-in or registered) raises :class:`~nbopt.errors.InputError` unless ``override=True``.
    For one call only, pass ``profile(..., formulas={op: fn})`` instead.
    """
    packet = resolve_op(op)  # an unknown op fails here, also in the decorator form

    def wrap(user_fn: Callable[..., Any]) -> Callable[..., Any]:
        FORMULAS.register(packet, Formula(user_fn), override=override)
        return user_fn

    return wrap(fn) if fn is not None else wrap


__all__ = ["Cost", "Formula", "FormulaRegistry", "FORMULAS", "POINTWISE", "register_formula", "resolve_op",
           "as_cost", "schema_binder", "is_pointwise", "is_view", "pointwise_cost", "ATTENTION_KEY_SEQ_DIM"]
