"""Errors nbopt raises for bad input: they name the problem and the way out."""
from __future__ import annotations


class NboptError(ValueError):
    """A ValueError whose message says what is wrong and how to fix it."""


class ForwardError(NboptError):
    """The model's own forward pass failed on the inputs it was given."""


class PartialResultWarning(UserWarning):
    """A long run was interrupted (Ctrl-C / stop button) and returned what it had finished."""


def check_on_interrupt(value: str) -> None:
    """``on_interrupt`` is 'return' (keep the work done, marked partial) or 'raise'."""
    if value not in ("return", "raise"):
        raise NboptError(f"on_interrupt must be 'return' (keep the work done, marked partial) or 'raise', "
                         f"got {value!r}")


def describe_exception(exc: BaseException) -> str:
    """First line of an exception's message, without torch's C++ stack dump."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return f"{type(exc).__name__}: {first}"
