"""Which module ran an op: a stack of modules kept by PyTorch's global module hooks.

The hooks are registered for the duration of one ``with`` block and removed in ``finally`` (no patching of
torch or of the model). Modules are named by their qualified name in the model (``layer1.0.conv1``).
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.nn.modules import module as _module

from ..inputs import describe_shapes, tensor_list
from ..layers import ROOT
from .calls import CallStats, fresh, new_call

OUTSIDE = "(outside modules)"


@dataclass
class ModuleStats:
    """What one module did during the counted run (its own ops only, not its children's)."""

    name: str
    type: str
    depth: int
    calls: int = 0
    macs: int = 0
    flops: int = 0
    in_shapes: list = field(default_factory=list)
    out_shapes: list = field(default_factory=list)
    in_bytes: int = 0
    out_bytes: int = 0


def _shapes(tensors: list[torch.Tensor]) -> list:
    return [tuple(t.shape) for t in tensors]


def _bytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _call_kwargs() -> dict:
    """Keyword arguments of the module call in progress (global pre-hooks receive positional ones only)."""
    frame = sys._getframe(2)
    for _ in range(4):
        if frame is None:
            break
        if frame.f_code.co_name in ("_call_impl", "_wrapped_call_impl") and "kwargs" in frame.f_locals:
            return dict(frame.f_locals["kwargs"])
        frame = frame.f_back
    return {}


class ModuleNames:
    """Qualified names for the modules of one or more root models (shared modules keep their first name).

    One walk over each root also records every module's type and the parameters it holds directly
    (``types``, ``params``); a parameter shared by several modules counts once, for the first.
    """

    def __init__(self) -> None:
        self.names: dict[int, str] = {}
        self.roots: list[tuple[str, nn.Module]] = []
        self.types: dict[str, str] = {}
        self.params: dict[str, int] = {}
        self._seen_params: set[int] = set()

    def add_root(self, model: nn.Module, prefix: str = "") -> None:
        self.roots.append((prefix, model))
        seen = self._seen_params
        for name, m in model.named_modules():
            full = ".".join(p for p in (prefix, name) if p) or ROOT
            self.names.setdefault(id(m), full)
            self.types.setdefault(full, type(m).__name__)
            own = 0
            for p in m._parameters.values():
                if p is not None and id(p) not in seen:
                    seen.add(id(p))
                    own += p.numel()
            self.params[full] = self.params.get(full, 0) + own

    def name(self, module: nn.Module, parent: str | None) -> str:
        known = self.names.get(id(module))
        if known is not None:
            return known
        # a module created inside forward (or never registered as a child): name it under its caller
        base = f"{parent}." if parent and parent != OUTSIDE else ""
        full = f"{base}{type(module).__name__}"
        self.names[id(module)] = full
        return full


class ModuleTracker:
    """Keeps the stack of running modules and a :class:`ModuleStats` per module name.

    ``on_new_root(module) -> prefix | None`` is asked about modules that start running while no module is
    on the stack and that are not known yet (the cell magic discovers models that way); ``None`` means
    "don't track it".

    Ops that run inside a module of ``suppress_types`` (its children included) are not counted; ops that run in
    the forward of an ``own_types`` module itself, outside its children, are not counted (its children are).
    """

    def __init__(self, names: ModuleNames, *, on_new_root: Callable[[nn.Module], str | None] | None = None,
                 suppress_types: tuple[type, ...] = (), own_types: tuple[type, ...] = (),
                 on_exit: Callable[[nn.Module, "ModuleStats", tuple, Any], None] | None = None) -> None:
        self.names = names
        self.on_new_root = on_new_root
        self.suppress_types = suppress_types
        self.own_types = own_types
        self.on_exit = on_exit
        self.stack: list[tuple[nn.Module, str, bool]] = []
        self.stats: dict[str, ModuleStats] = {}
        self.suppressed = 0
        self._suppress_flags: list[bool] = []
        self.record_root_calls = False
        self.copy_root_calls = True
        self.root_calls: list[tuple[nn.Module, tuple, dict]] = []  # inputs copied before the call (see .calls)
        self.calls: list[CallStats] = []  # one per top-level forward of a tracked model
        self.failure: tuple[BaseException, str, str, str] | None = None  # (error, module, type, its inputs)

    @property
    def current(self) -> str:
        return self.stack[-1][1] if self.stack else OUTSIDE

    def stats_for(self, name: str, module: nn.Module | None = None) -> ModuleStats:
        st = self.stats.get(name)
        if st is None:
            depth = 0 if name in (OUTSIDE, ROOT) else name.count(".") + 1
            st = ModuleStats(name, type(module).__name__ if module is not None else "", depth)
            self.stats[name] = st
        return st

    def add(self, macs: int, flops: int) -> None:
        if self.suppressed:
            return
        if self.own_types and self.stack and self.stack[-1][2] and isinstance(self.stack[-1][0], self.own_types):
            return  # the module's own op: its custom_ops rule counts it
        st = self.stats_for(self.current)
        st.macs += macs
        st.flops += flops
        if self.stack and self.stack[0][2] and self.calls:
            self.calls[-1].macs += macs
            self.calls[-1].flops += flops

    def add_kv(self, nbytes: int, context: int) -> None:
        """Keys and values read by an attention kernel in the current top-level call."""
        if self.stack and self.stack[0][2] and self.calls and not self.suppressed:
            self.calls[-1].add_kv(nbytes, context)

    def _pre(self, module: nn.Module, args: tuple) -> None:
        if not self.stack and id(module) not in self.names.names:
            prefix = self.on_new_root(module) if self.on_new_root else None
            if prefix is None:
                self.stack.append((module, "", False))
                return
            self.names.add_root(module, prefix)
        if self.stack and not self.stack[-1][2]:
            self.stack.append((module, "", False))  # inside an untracked module
            return
        name = self.names.name(module, self.stack[-1][1] if self.stack else None)
        if not self.stack:
            kwargs = _call_kwargs()
            self.calls.append(new_call(name, args, kwargs))
            if self.record_root_calls:  # copied now: the forward may mutate them (a KV cache grows)
                copy = fresh if self.copy_root_calls else (lambda obj: obj)
                self.root_calls.append((module, copy(args), copy(kwargs)))
        st = self.stats_for(name, module)
        st.calls += 1
        tensors = tensor_list(args)
        if not st.in_shapes:
            st.in_shapes = _shapes(tensors)
        st.in_bytes += _bytes(tensors)
        suppress = isinstance(module, self.suppress_types) if self.suppress_types else False
        self.suppressed += suppress
        self.stack.append((module, name, True))
        self._suppress_flags.append(suppress)

    def _post(self, module: nn.Module, args: tuple, output: Any) -> None:
        if not self.stack or self.stack[-1][0] is not module:
            return
        _, name, tracked = self.stack.pop()
        if not tracked:
            return
        self.suppressed -= self._suppress_flags.pop()
        st = self.stats[name]
        if output is None:
            self._note_failure(module, name, args)
            return
        tensors = tensor_list(output)
        if not st.out_shapes:
            st.out_shapes = _shapes(tensors)
        st.out_bytes += _bytes(tensors)
        if self.on_exit is not None:
            self.on_exit(module, st, args, output)

    def _note_failure(self, module: nn.Module, name: str, args: tuple) -> None:
        """Remember the innermost module an exception is leaving (hooks run inner to outer as it unwinds)."""
        exc = sys.exc_info()[1]
        if exc is not None and (self.failure is None or self.failure[0] is not exc):
            self.failure = (exc, name, type(module).__name__, describe_shapes(args))

    def failed_at(self, exc: BaseException) -> str:
        """`` at layer 'name' (Type, given shapes)`` for the layer that raised ``exc``; "" for the root."""
        if self.failure is None or self.failure[0] is not exc or self.failure[1] == ROOT:
            return ""
        _, name, type_name, shapes = self.failure
        return f" at layer '{name}' ({type_name}, given {shapes})"

    @contextlib.contextmanager
    def active(self) -> Iterator["ModuleTracker"]:
        """Register the global module hooks for the duration of the block; always removed afterwards."""
        handles = []
        try:
            handles.append(_module.register_module_forward_pre_hook(self._pre))
            handles.append(_module.register_module_forward_hook(self._post, always_call=True))
            yield self
        finally:
            for h in handles:
                h.remove()
            self.stack.clear()
            self.suppressed = 0
            self._suppress_flags.clear()
