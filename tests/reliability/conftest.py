"""Reliability suite fixtures (hypothesis settings live in strategies.RELIABLE, applied per test)."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # strategies.py / kernel_state.py


@pytest.fixture
def ipshell():
    """A fresh-enough IPython shell with nbopt's extension loaded (unloaded again afterwards)."""
    from kernel_state import ipython_shell

    ip = ipython_shell()
    ip.run_line_magic("load_ext", "nbopt")
    try:
        yield ip
    finally:
        ip.run_line_magic("unload_ext", "nbopt")
