"""thop's conventions in one place: ``engine="thop"`` and thop-style ``custom_ops`` / ``ignore_ops`` rules.

``engine="thop"`` reports thop's own numbers through thop itself, for comparison with published thop
figures. thop runs on a private copy of the model (it attaches counters to the modules it profiles), so the
user's model is never touched. ``custom_ops`` rules (``rule(module, inputs, output)`` adding MACs to
``module.total_ops``) also work with the ATen engine through :class:`_ThopProxy`; ``clever_format`` is thop's.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from thop import clever_format  # re-exported for users who know thop (a core dependency)
from torch import nn
from torch.utils._python_dispatch import _disable_current_modes

from ..errors import InputTypeError, NboptError
from ..inputs import call
from ..layers import ROOT
from ..model_state import preserved, working_copy
from .attribution import ModuleNames, ModuleTracker

__all__ = ["clever_format", "check_op_types", "rule_tracker", "count_thop", "thop_layer_macs",
           "self_from_inclusive", "rule_for", "CUSTOM_OPS_SCOPES"]


class _ThopProxy:
    """Looks like the module to a thop-style counting rule, but collects ``total_ops`` on itself."""

    def __init__(self, module: nn.Module) -> None:
        self.__dict__.update(_module=module, total_ops=0, total_params=0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_module"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        self.__dict__[name] = value


CUSTOM_OPS_SCOPES = ("own", "subtree")


def rule_for(module: nn.Module, custom_ops: Mapping[type, Callable]) -> Callable | None:
    """The ``custom_ops`` rule of ``module``: its class's, else the nearest base class's (as thop resolves)."""
    for t in type(module).__mro__:
        if t in custom_ops:
            return custom_ops[t]
    return None


def _custom_rule_exit(custom_ops: Mapping[type, Callable], tracker_ref: list[ModuleTracker]) -> Callable:
    """A tracker ``on_exit`` hook that runs the module's thop rule and adds its MACs (and 2x FLOPs)."""
    def on_exit(module: nn.Module, st: Any, args: tuple, output: Any) -> None:
        rule = rule_for(module, custom_ops) if custom_ops else None
        if rule is None or tracker_ref[0].suppressed:
            return
        proxy = _ThopProxy(module)
        with _disable_current_modes():  # the rule's own tensor arithmetic is not the model's
            rule(proxy, args, output)
        macs = int(float(proxy.total_ops))
        st.macs += macs
        st.flops += 2 * macs
    return on_exit


def check_op_types(ops: Any, what: str) -> dict | tuple:
    """Validate ``custom_ops`` (a dict ``{ModuleType: rule}``) or ``ignore_ops`` (module types)."""
    if ops is None:
        return {} if what == "custom_ops" else ()
    items = ops.keys() if isinstance(ops, Mapping) else ops
    for t in items:
        if not (isinstance(t, type) and issubclass(t, nn.Module)):
            raise InputTypeError(f"{what} must hold nn.Module subclasses (e.g. nn.ReLU), got {t!r}")
    if what == "custom_ops" and not isinstance(ops, Mapping):
        raise InputTypeError("custom_ops must be a dict {ModuleType: rule(module, inputs, output)} as in thop")
    return dict(ops) if isinstance(ops, Mapping) else tuple(ops)


def rule_tracker(names: ModuleNames, custom_ops: dict, ignore_ops: tuple,
                 on_new_root: Callable[[nn.Module], str | None] | None = None,
                 custom_ops_scope: str = "own") -> ModuleTracker:
    """A :class:`ModuleTracker` whose ``custom_ops`` modules count by their rule and ``ignore_ops`` count 0.

    ``custom_ops_scope="own"`` (thop's semantics): a rule replaces the ops the module runs itself and its
    submodules are counted as usual, so a rule on a container adds to its children's counts (and a rule on a
    leaf such as ``nn.Conv2d`` replaces its count). ``"subtree"``: the rule is the count of the module and
    everything inside it. ``ignore_ops`` modules count 0 with everything inside them.
    """
    if custom_ops_scope not in CUSTOM_OPS_SCOPES:
        raise NboptError(f"unknown custom_ops_scope {custom_ops_scope!r}; use one of {CUSTOM_OPS_SCOPES}")
    ref: list[ModuleTracker] = []
    rules = tuple(custom_ops)
    own, whole = (rules, ()) if custom_ops_scope == "own" else ((), rules)
    tracker = ModuleTracker(names, on_new_root=on_new_root, suppress_types=whole + tuple(ignore_ops),
                            own_types=own, on_exit=_custom_rule_exit(custom_ops, ref) if custom_ops else None)
    ref.append(tracker)
    return tracker


def _ignore_rule(m: nn.Module, x: Any, y: Any) -> None:
    """A thop rule that counts nothing (used for ``ignore_ops``)."""


def thop_layer_macs(model: nn.Module, args: tuple, custom_ops: dict | None = None,
                    ignore_ops: tuple[type, ...] = ()) -> tuple[float, dict[str, float]]:
    """thop's total MACs and its *inclusive* MACs per qualified module name."""
    import thop

    rules: dict[type, Callable] = dict(custom_ops or {})
    rules.update({t: _ignore_rule for t in ignore_ops})
    copy = working_copy(model).eval()
    with torch.no_grad():
        total, _params, tree = thop.profile(copy, inputs=args, custom_ops=rules, verbose=False,
                                            ret_layer_info=True)
    inclusive: dict[str, float] = {ROOT: float(total)}

    def walk(prefix: str, node: dict) -> None:
        for name, (ops, _p, children) in node.items():
            full = f"{prefix}.{name}" if prefix else name
            inclusive.setdefault(full, float(ops))
            walk(full, children)

    walk("", tree)
    return float(total), inclusive


def self_from_inclusive(inclusive: dict[str, float]) -> dict[str, float]:
    """Turn inclusive per-module numbers into each module's own share (children subtracted)."""
    own = dict(inclusive)
    for name, value in inclusive.items():
        if name == ROOT:
            continue
        parent = name.rsplit(".", 1)[0] if "." in name else ROOT
        if parent in own:
            own[parent] -= value
    return own


def count_thop(model: nn.Module, args: tuple, kwargs: dict, names: ModuleNames, custom_ops: dict,
               ignore_ops: tuple) -> tuple[ModuleTracker, dict[str, float], dict[str, float]]:
    """``engine="thop"``: a tracker with shapes and activation bytes (no counts) and thop's own MACs/FLOPs."""
    if kwargs:
        raise NboptError("engine='thop' takes positional inputs only (thop has no keyword inputs); "
                         "use engine='aten' for dict inputs")
    with preserved(model, eval_mode=True), torch.no_grad():
        call(model, args)  # a clear ForwardError before thop sees bad inputs
        _total, inclusive = thop_layer_macs(model, args, custom_ops, ignore_ops)
    own = self_from_inclusive(inclusive)
    tracker = rule_tracker(names, {}, ())
    with preserved(model, eval_mode=True), torch.no_grad(), tracker.active():
        call(model, args)  # shapes and activation bytes
    for st in tracker.stats.values():
        st.macs = st.flops = 0
    return tracker, own, {k: 2 * v for k, v in own.items()}
