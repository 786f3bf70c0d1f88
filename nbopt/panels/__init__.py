"""Interactive ipywidgets panels (front-ends only: widgets -> nbopt core -> nbopt.display).

``ProfilePanel(profile)``, ``PruningPanel(model, inputs, evaluate=None)``,
``QuantizationPanel(model, calib, evaluate=None)``. Importing this package imports ipywidgets;
the core (``nbopt.profile``, ``nbopt.pruning``, ``nbopt.quantization``) never does.
Each is a :class:`~nbopt.panels.common.Panel` (shared debounce, error guard, display; ``update()`` re-draws).

They run in JupyterLab 4, Notebook 7 and Voila (tests/browser drives each with the keyboard). Notebook 7
(7.6) gives its command-mode shortcuts the first look at every key, so arrow keys on a focused slider move
the notebook cursor there; PageUp/PageDown/Home/End and the mouse move the slider.
"""
from __future__ import annotations

from ..errors import require

require("ipywidgets", extra="notebook", purpose="nbopt's panels")  # a clear error on a core-only install

from .profile import ProfilePanel  # noqa: E402

__all__ = ["ProfilePanel", "PruningPanel", "QuantizationPanel"]


def __getattr__(name: str):
    if name == "PruningPanel":
        from .pruning import PruningPanel

        return PruningPanel
    if name == "QuantizationPanel":
        from .quantization import QuantizationPanel

        return QuantizationPanel
    raise AttributeError(f"module 'nbopt.panels' has no attribute {name!r}")
