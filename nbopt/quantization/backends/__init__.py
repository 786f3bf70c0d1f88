"""Real int8 backends behind one interface, in one registry.

A backend is a builder ``build(model, calib, example, *, dynamic, progress) -> Int8Program`` whose program's
``.model`` is an ``nn.Module`` called with torch tensors. Built in: ``"pt2e"`` (torchao PT2E + torch.compile,
:mod:`.pt2e`) and ``"onnxruntime"`` (ONNX + onnxruntime QDQ, :mod:`.onnxruntime`). ``quantize(mode="int8",
backend="auto")`` builds every registered backend and keeps the faster on the user's input.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from ...errors import InputError
from .base import Int8Program
from .onnxruntime import build_onnx
from .pt2e import build_pt2e

Builder = Callable[..., Int8Program]
_BUILDERS: dict[str, Builder] = {"pt2e": build_pt2e, "onnxruntime": build_onnx}


class _Registry(Mapping[str, Builder]):
    """Read-only view of the registered builders (add one with :func:`register_backend`)."""

    def __getitem__(self, name: str) -> Builder:
        return _BUILDERS[name]

    def __iter__(self) -> Any:
        return iter(_BUILDERS)

    def __len__(self) -> int:
        return len(_BUILDERS)

    def __repr__(self) -> str:
        return f"BUILDERS({', '.join(_BUILDERS)})"


BUILDERS: Mapping[str, Builder] = _Registry()


def register_backend(name: str, build: Builder, *, override: bool = False) -> None:
    """Add a real int8 backend under ``name`` (then ``quantize(mode="int8", backend=name)`` uses it)."""
    if name == "auto":
        raise InputError("'auto' is not a backend name: it means every registered backend, fastest kept.")
    if name in _BUILDERS and not override:
        raise InputError(f"int8 backend {name!r} is already registered; pass override=True to replace it.")
    _BUILDERS[name] = build


__all__ = ["BUILDERS", "Builder", "Int8Program", "build_onnx", "build_pt2e", "register_backend"]
