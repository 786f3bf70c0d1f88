"""Every error and warning nbopt raises on purpose, in one place.

Each message names the problem and the way out. The family:

* :class:`NboptError` — the base of every deliberate error (a ``ValueError``, so ``except ValueError`` keeps
  working). Front-ends show these as a one-line message (``UsageError`` in magics); anything that is *not*
  an ``NboptError`` is a bug and keeps its traceback.
* :class:`InputError` — the caller's arguments, data or model cannot be used as given;
  :class:`InputTypeError` when an argument is of the wrong kind (also a ``TypeError``);
  :class:`ForwardError` when the model's own forward fails on the inputs given.
* :class:`UnsupportedModelError` — the model is fine but this path cannot take it (a graph capture or an
  export fails); the message names the path that works.
* :class:`MissingDependencyError` — an optional package is not installed (also an ``ImportError``); raised by
  :func:`require`, whose message names the extra to install.
* :class:`PartialResultWarning` — a long run was interrupted and returned what it had finished;
  :class:`NoisyTimingWarning` — a ranking or ratio was read from a noisy timing.
"""
from __future__ import annotations

import importlib
from types import ModuleType


class NboptError(ValueError):
    """A deliberate error whose message says what is wrong and how to fix it."""


class InputError(NboptError):
    """An argument, the data or the model passed in cannot be used as given."""


class InputTypeError(InputError, TypeError):
    """An argument of the wrong kind (a state_dict for a model, a list for a dict ...)."""


class ForwardError(InputError):
    """The model's own forward pass failed on the inputs it was given."""


class UnsupportedModelError(NboptError):
    """The model runs, but this path (a graph capture, an export, a backend) cannot take it."""


class MissingDependencyError(NboptError, ImportError):
    """An optional dependency is not installed; the message names the ``pip install`` that brings it."""


class PartialResultWarning(UserWarning):
    """A long run was interrupted (Ctrl-C / stop button) and returned what it had finished."""


class SkippedLayerWarning(UserWarning):
    """A capability left out layers that hold a weight it cannot handle (listed in its result)."""


class NoisyTimingWarning(UserWarning):
    """A ranking or ratio was read from a noisy timing (large spread, or a busy machine)."""


def require(module: str, *, extra: str, purpose: str, package: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``purpose`` and the extra to install.

    ``package`` is the name to show when it differs from the import name (``Torch-Pruning`` for
    ``torch_pruning``).
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        name = package or module.split(".")[0]
        raise MissingDependencyError(f"{purpose} needs {name}; install it with `pip install \"nbopt[{extra}]\"`.") \
            from None


def check_on_interrupt(value: str) -> None:
    """``on_interrupt`` is 'return' (keep the work done, marked partial) or 'raise'."""
    if value not in ("return", "raise"):
        raise InputError(f"on_interrupt must be 'return' (keep the work done, marked partial) or 'raise', "
                         f"got {value!r}")


def describe_exception(exc: BaseException) -> str:
    """First line of an exception's message, without torch's C++ stack dump."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return f"{type(exc).__name__}: {first}"
