"""``engine="thop"``: thop's own numbers through thop itself, for comparison with published thop figures.

thop runs on a private copy of the model (it attaches counters to the modules it profiles), so the user's
model is never touched. ``custom_ops`` and ``clever_format`` keep thop's conventions.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from thop import clever_format  # re-exported for users who know thop (a core dependency)
from torch import nn

from ..model_state import working_copy


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
    inclusive: dict[str, float] = {"(root)": float(total)}

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
        if name == "(root)":
            continue
        parent = name.rsplit(".", 1)[0] if "." in name else "(root)"
        if parent in own:
            own[parent] -= value
    return own
