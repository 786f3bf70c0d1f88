"""The formula registry: which function counts which op, and which ops are known to do no arithmetic.

Two calling conventions, fixed per :class:`Formula`:

* **named** (the built-in formulas): ``fn(*, out, **arguments) -> Cost``; the op's arguments are bound to the
  names of its schema once per call (``self`` is passed as ``input``), so a formula reads ``weight`` or
  ``transposed`` by name, as ``torch.utils.flop_counter`` formulas read named shapes.
* **user** (:func:`register_formula`, ``profile(formulas=...)``): ``fn(*args, out=<output>, **kwargs)``
  with the op's arguments as dispatched; returns FLOPs as an int or ``(macs, flops)``.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import torch

from ...errors import InputError, InputTypeError

Counting = Callable[[tuple, dict, Any], "Cost"]   # (args, kwargs, output) -> Cost, bound to one overload


@dataclass(frozen=True)
class Cost:
    """Work done by one op call."""

    macs: int = 0
    flops: int = 0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.macs + other.macs, self.flops + other.flops)


def as_cost(value: Any) -> Cost:
    """A user formula's result (FLOPs as an int, or ``(macs, flops)``) as a :class:`Cost`."""
    if isinstance(value, Cost):
        return value
    if isinstance(value, tuple):
        return Cost(int(value[0]), int(value[1]))
    return Cost(0, int(value))


def schema_binder(func: Any) -> Callable[[tuple, dict], dict[str, Any]]:
    """``(args, kwargs) -> {argument name: value}`` for one op overload, schema defaults filled in."""
    schema_args = func._schema.arguments
    names = tuple("input" if a.name == "self" else a.name for a in schema_args)
    defaults = {n: a.default_value for n, a in zip(names, schema_args) if a.has_default_value()}

    def bind(args: tuple, kwargs: dict) -> dict[str, Any]:
        bound = dict(defaults)
        bound.update(zip(names, args))
        bound.update(kwargs)
        return bound

    return bind


@dataclass(frozen=True)
class Formula:
    """How to count one op: ``fn`` and its calling convention (``named`` or ``user``, see the module doc)."""

    fn: Callable[..., Any]
    convention: str = "user"
    builtin: bool = False

    @classmethod
    def named(cls, fn: Callable[..., Cost], *, builtin: bool = False) -> "Formula":
        """A formula taking the op's arguments by schema name: ``fn(*, out, **arguments) -> Cost``."""
        return cls(fn, "named", builtin)

    def bind(self, func: Any) -> Counting:
        """The ``(args, kwargs, out) -> Cost`` counting function for the op overload ``func``."""
        fn = self.fn
        if self.convention == "named":
            bind = schema_binder(func)

            def count_named(args: tuple, kwargs: dict, out: Any) -> Cost:
                bound = bind(args, kwargs)
                bound["out"] = out  # the output (replaces an out= argument, which is the same tensor)
                return fn(**bound)
            return count_named
        return lambda args, kwargs, out: as_cost(fn(*args, out=out, **kwargs))


def resolve_op(op: Any) -> Any:
    """The ``OpOverloadPacket`` that ``op`` names: a packet, an overload, or ``"ns::name[.overload]"``.

    A string without a namespace means ``aten``. An unknown op raises :class:`InputError`.
    """
    if isinstance(op, torch._ops.OpOverloadPacket):
        return op
    if isinstance(op, torch._ops.OpOverload):
        return op.overloadpacket
    if not isinstance(op, str):
        raise InputTypeError(f"an op must be a torch.ops.* op, one of its overloads or a name like 'aten::mm' "
                             f"or 'mylib::my_op', got {type(op).__name__}")
    ns, _, rest = op.rpartition("::")
    ns, name = ns or "aten", rest.split(".")[0]
    try:
        return getattr(getattr(torch.ops, ns), name)
    except (AttributeError, RuntimeError):
        hint = "" if "::" in op else "; name a custom op with its namespace, e.g. 'mylib::my_op'"
        raise InputError(f"unknown op {op!r}: torch.ops.{ns}.{name} does not exist{hint}") from None


class FormulaRegistry:
    """``op -> Formula`` plus the set of ops known to do no arithmetic (``ZERO_COST``).

    ``overlay(formulas)`` makes a child registry for one call: its formulas win, lookups fall through to
    this one, and nothing is written here. ``version`` changes on every change (of the parent too), so a
    cache keyed on it never outlives one.
    """

    def __init__(self, parent: "FormulaRegistry | None" = None) -> None:
        self.parent = parent
        self._formulas: dict[Any, Formula] = {}
        self._zero_cost: set[Any] = set()
        self._changes = 0

    @property
    def version(self) -> int:
        return self._changes + (self.parent.version if self.parent is not None else 0)

    def register(self, op: Any, fn: Formula | Callable[..., Any], *, override: bool = False) -> Formula:
        """Count ``op`` with ``fn`` (a :class:`Formula`, or a plain callable taking the user convention).

        An op that already has a formula raises :class:`InputError` unless ``override=True``.
        """
        packet = resolve_op(op)
        formula = fn if isinstance(fn, Formula) else Formula(fn)
        if not callable(formula.fn):
            raise InputTypeError(f"a formula must be callable, got {type(formula.fn).__name__}")
        existing = self.get(packet)
        if existing is not None and not override:
            kind = "a built-in" if existing.builtin else "a registered"
            raise InputError(f"{packet} already has {kind} formula; pass override=True to replace it, e.g. "
                             f"register_formula({str(packet).replace('.', '::', 1)!r}, fn, override=True)")
        self._formulas[packet] = formula
        self._changes += 1
        return formula

    def remove(self, op: Any) -> None:
        """Forget this registry's own formula for ``op`` (a parent's formula, if any, shows again)."""
        if self._formulas.pop(resolve_op(op), None) is not None:
            self._changes += 1

    def add_zero_cost(self, *ops: Any) -> None:
        """Mark ``ops`` as doing no arithmetic (data movement, allocation)."""
        self._zero_cost.update(resolve_op(op) for op in ops)
        self._changes += 1

    def get(self, packet: Any) -> Formula | None:
        """The formula for ``packet`` (an ``OpOverloadPacket``), or ``None``."""
        found = self._formulas.get(packet)
        if found is None and self.parent is not None:
            return self.parent.get(packet)
        return found

    def is_zero_cost(self, packet: Any) -> bool:
        return packet in self._zero_cost or (self.parent is not None and self.parent.is_zero_cost(packet))

    def __contains__(self, packet: Any) -> bool:
        return self.get(packet) is not None

    def __iter__(self) -> Iterator[Any]:
        parent = iter(self.parent) if self.parent is not None else iter(())
        return iter(dict.fromkeys(itertools.chain(self._formulas, parent)))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def overlay(self, formulas: Mapping[Any, Formula | Callable[..., Any]] | None) -> "FormulaRegistry":
        """A child registry whose ``formulas`` (user convention unless :class:`Formula`) win over these."""
        if formulas is None:
            return self
        if not isinstance(formulas, Mapping):
            raise InputTypeError(f"formulas must be a dict {{op: fn}}, e.g. {{torch.ops.aten._fft_r2c: fn}}, "
                                 f"got {type(formulas).__name__}")
        child = FormulaRegistry(parent=self)
        for op, fn in formulas.items():
            child.register(op, fn, override=True)
        return child

    def copy(self) -> "FormulaRegistry":
        """An independent, flattened copy (changes to either leave the other alone)."""
        flat = FormulaRegistry()
        for packet in self:
            flat._formulas[packet] = self.get(packet)
        node: FormulaRegistry | None = self
        while node is not None:
            flat._zero_cost |= node._zero_cost
            node = node.parent
        return flat
