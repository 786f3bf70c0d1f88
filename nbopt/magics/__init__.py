"""IPython front-end: ``%load_ext nbopt`` registers these Magics classes (each file parses -> core -> display)."""
from __future__ import annotations

import importlib
from typing import Any

# (module, class) of every Magics subclass; each capability adds its own line
MAGICS: list[tuple[str, str]] = [
    (".profile", "ProfileMagics"),
    (".export", "ExportMagics"),
    (".prune", "PruneMagics"),
    (".quantize", "QuantizeMagics"),
]


def _classes() -> list[type]:
    return [getattr(importlib.import_module(mod, __name__), cls) for mod, cls in MAGICS]


def load_ipython_extension(ipython: Any) -> None:
    """Register every nbopt magic with the shell."""
    for cls in _classes():
        ipython.register_magics(cls)


def unload_ipython_extension(ipython: Any) -> None:
    """Remove nbopt's magics from the shell (``%unload_ext nbopt``)."""
    names = {cls.__name__ for cls in _classes()}
    mm = ipython.magics_manager
    for kind in ("line", "cell"):
        for magic_name, fn in list(mm.magics[kind].items()):
            owner = getattr(getattr(fn, "__self__", None), "__class__", None)
            if owner is not None and owner.__name__ in names:
                del mm.magics[kind][magic_name]
    for name in names:
        mm.registry.pop(name, None)
