"""One IPython shell for magic tests (IPython's own test app), with nbopt loaded."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ip():
    from IPython.testing.globalipapp import get_ipython
    shell = get_ipython()
    shell.run_line_magic("load_ext", "nbopt")
    return shell


def run(ip, cell: str):
    """Run a cell; return (result, error) like a notebook user sees them."""
    res = ip.run_cell(cell)
    return res.result, res.error_in_exec or res.error_before_exec
