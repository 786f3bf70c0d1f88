"""Helpers every magic shares: evaluate user expressions, turn core errors into UsageError, display."""
from __future__ import annotations

import contextlib
import re
from typing import Any, Iterator, Mapping

from IPython.core.error import UsageError
from IPython.core.magic_arguments import parse_argstring

from ..errors import NboptError, describe_exception


def parse(magic_func: Any, line: str) -> Any:
    """``parse_argstring`` that reports bad options as a UsageError with the magic's usage line."""
    try:
        return parse_argstring(magic_func, line)
    except UsageError as exc:  # argparse's own message ("unrecognized arguments: --x") plus the way out
        raise UsageError(f"{exc}; see `%{magic_func.__name__}?` for the options") from None
    except SystemExit:  # argparse exits on -h and on errors it cannot format
        raise UsageError(f"could not parse options {line!r}; see `%{magic_func.__name__}?` for help") from None
    except ValueError as exc:  # unbalanced quotes from shlex
        raise UsageError(f"could not parse options {line!r}: {exc}") from None


def evaluate(shell: Any, expr: str, what: str) -> Any:
    """Evaluate ``expr`` in the user namespace; failure is a UsageError naming ``what`` and the expression."""
    if not expr or not expr.strip():
        raise UsageError(f"no {what} given; see the magic's help (append `?`)")
    try:
        return eval(expr, shell.user_ns)  # noqa: S307 - evaluating the user's own expression is the point
    except Exception as exc:
        raise UsageError(f"could not evaluate {what} `{expr}`: {describe_exception(exc)}") from None


@contextlib.contextmanager
def usage_errors(flags: Mapping[str, str] | None = None) -> Iterator[None]:
    """Show nbopt's deliberate errors (:class:`~nbopt.errors.NboptError`: bad input, a missing extra) as one
    UsageError line; any other exception is a bug and keeps its traceback. ``flags`` maps the core's argument
    names to the magic's flags, so the message says ``--act-bits none``, not ``act_bits=None``."""
    try:
        yield
    except NboptError as exc:
        raise UsageError(as_flags(str(exc), flags or {})) from None


_ARG = re.compile(r"\b([a-z_]+)=(None|True|False|'[^']*'|\"[^\"]*\"|\.\.\.|[^\s,;)]+)")


def as_flags(message: str, flags: Mapping[str, str]) -> str:
    """``act_bits=None`` -> ``--act-bits none``, ``mode='int8'`` -> ``--mode int8`` for the names in ``flags``."""
    def one(m: re.Match) -> str:
        name, value = m.group(1), m.group(2)
        if name not in flags:
            return m.group(0)
        value = value.strip("'\"")
        if value in ("True", "False"):  # a switch: the flag itself, or its absence
            return flags[name] if value == "True" else f"without {flags[name]}"
        return f"{flags[name]} {'none' if value == 'None' else value}"
    return _ARG.sub(one, message)


def store(shell: Any, name: str | None, value: Any) -> None:
    """``-o NAME``: put ``value`` into the user namespace."""
    if name:
        if not name.isidentifier():
            raise UsageError(f"-o needs a Python identifier, got {name!r}")
        shell.user_ns[name] = value
