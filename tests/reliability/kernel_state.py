"""Reliability-suite helpers: the snapshot of model and kernel (:mod:`tests.snapshot`), clean user-facing
exceptions, and the test IPython shell."""
from __future__ import annotations

from tests.snapshot import Snapshot  # noqa: F401  (the reliability tests import it from here)


def clean_exception(exc: BaseException) -> None:
    """The exception a user sees carries no chained torch traceback and no C++ stack in its message."""
    assert exc.__cause__ is None, f"chained cause {exc.__cause__!r}"
    assert exc.__suppress_context__ or exc.__context__ is None, f"chained context {exc.__context__!r}"
    text = str(exc)
    for marker in ("Exception raised from", "frame #", "C++ CapturedTraceback", "Traceback (most recent"):
        assert marker not in text, f"torch internals in the message: {text[:300]}"


def ipython_shell():
    """The test IPython shell (``globalipapp.get_ipython`` is rebound after the first call; always look it up)."""
    from IPython.testing import globalipapp

    return globalipapp.get_ipython() or globalipapp.get_ipython()
