"""Only nbopt's deliberate errors (NboptError) become a one-line UsageError; a bug keeps its type and traceback."""
from __future__ import annotations

import pytest
from IPython.core.error import UsageError

import nbopt
from nbopt.magics.common import usage_errors

from .conftest import run


@pytest.fixture(scope="module")
def shell(ip):
    ip.run_cell("import torch\nfrom nbopt import demo\nbm = demo.load_model()\nbx = torch.randn(2, 1, 8, 8)")
    return ip


def test_usage_errors_converts_only_nbopt_errors():
    with pytest.raises(UsageError, match="fix it like this"):
        with usage_errors():
            raise nbopt.NboptError("fix it like this")
    with pytest.raises(KeyError):
        with usage_errors():
            raise KeyError("a bug")


def test_bug_inside_quantize_is_not_a_usage_error(shell, monkeypatch):
    import nbopt.magics.quantize as magic

    def broken(*args, **kwargs):
        raise RuntimeError("internal bug in quantize")

    monkeypatch.setattr(magic, "quantize", broken)
    with pytest.raises(RuntimeError, match="internal bug in quantize"):
        shell.run_line_magic("quantize", "bm --calib bx")
    _, err = run(shell, "%quantize bm --calib bx")
    assert type(err) is RuntimeError and not isinstance(err, UsageError)


def test_bug_inside_profile_flops_is_not_a_usage_error(shell, monkeypatch):
    import nbopt.magics.profile as magic

    def broken(*args, **kwargs):
        raise KeyError("internal bug in profile_code")

    monkeypatch.setattr(magic, "profile_code", broken)
    _, err = run(shell, "%%profile_flops --no-latency\nbm(bx)")
    assert type(err) is KeyError and "internal bug in profile_code" in str(err)
    monkeypatch.setattr(magic, "profile", broken)
    _, err = run(shell, "%profile_flops bm bx --no-latency")
    assert type(err) is KeyError


def test_nbopt_error_inside_the_core_is_still_a_usage_error(shell, monkeypatch):
    import nbopt.magics.quantize as magic

    def refuses(*args, **kwargs):
        raise nbopt.NboptError("weight_bits=1 is not supported; use 2 to 16")

    monkeypatch.setattr(magic, "quantize", refuses)
    _, err = run(shell, "%quantize bm --calib bx")
    assert type(err) is UsageError and "use 2 to 16" in str(err)
