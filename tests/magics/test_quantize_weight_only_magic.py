"""%quantize --mode weight-only on a small Llama: flags, the stored result, UsageErrors that name the flags."""
from __future__ import annotations

import pytest
from IPython.core.error import UsageError

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def shell(ip):
    ip.run_cell("import torch, nbopt\nfrom tests.hf_models import ids, llama\nwm, wcfg = llama()\n"
                "wcal = [ids(wcfg, batch=2, seq=16)]")
    return ip


@pytest.fixture
def shown(monkeypatch):
    import nbopt.magics.quantize as magic
    out = []
    monkeypatch.setattr(magic, "display", out.append)
    return out


@pytest.mark.parametrize("line, bits, group, method", [
    ("wm --calib wcal --mode weight-only --bits 4 --group-size 32", 4, 32, "rtn"),
    ("wm --calib wcal --mode weight_only --weight-bits 8", 8, None, "rtn"),
    ("wm --calib wcal --mode weight-only --bits 4 --group-size 64 --method gptq", 4, 64, "gptq"),
])
def test_weight_only_flags_reach_the_core(shell, shown, line, bits, group, method):
    from tests.conftest import Untouched
    snap = Untouched(shell.user_ns["wm"])
    shell.run_line_magic("quantize", line + " --repeat 2 -o wq")
    snap.assert_unchanged()
    r = shell.user_ns["wq"]
    assert shown == [r] and r.mode == "weight_only" and r.real
    assert (r.options["weight_bits"], r.options["group_size"], r.options["method"]) == (bits, group, method)
    assert set(r.report.weight_bits) == {bits} and len(r.report) == 15
    assert "kl_div" in r.fidelity and 0 < r.fidelity["top1_agreement"] <= 1
    html = r._repr_html_()
    assert "nan" not in html.lower() and "per-layer report" in html


def test_group_size_none_and_symmetric_flags(shell, shown):
    from nbopt.magics.quantize import QuantizeMagics
    from IPython.core.magic_arguments import parse_argstring

    f = QuantizeMagics.quantize
    opts = parse_argstring(f, "m --mode weight-only --group-size none")
    assert opts.mode == "weight_only" and opts.group_size is None and opts.symmetric is None
    assert not hasattr(opts, "act_bits")  # not given: the core's default applies (and weight-only takes none)
    assert parse_argstring(f, "m --symmetric").symmetric is True
    assert parse_argstring(f, "m --asymmetric").symmetric is False
    shell.run_line_magic("quantize", "wm --calib wcal --mode weight-only --bits 4 --group-size 32 --symmetric --repeat 2 -o ws")
    assert shell.user_ns["ws"].options["symmetric"] is True and set(shell.user_ns["ws"].report.symmetric) == {True}


@pytest.mark.parametrize("line, says", [
    ("wm --calib wcal --mode weight-only --bits 6", "use --bits 8 or --bits 4"),
    ("wm --calib wcal --mode weight-only --act-bits 8", "--act-bits 8 cannot apply: pass --act-bits none"),
    ("wm --calib wcal --mode weight-only --bits 4 --group-size 128", "use --group-size 64"),
    ("wm --calib wcal --mode weight-only --bits 8 --group-size 32", "needs --bits 4"),
    ("wm --mode weight-only --bits 4 --method gptq", "pass --calib ..."),
    ("wm --calib wcal --act-bits none --method gptq", "use it with --mode weight_only"),
    ("wm --calib wcal --mode weight-only --backend pt2e", "--backend auto"),
    ("wm --calib wcal --mode weight-only --observer mse", "--observer minmax"),
])
def test_usage_errors_name_the_flags(shell, line, says):
    res = shell.run_cell(f"%quantize {line}")
    err = res.error_in_exec or res.error_before_exec
    assert type(err) is UsageError
    text = str(err)
    assert says in text, text
    for python_name in ("weight_bits=", "act_bits=", "group_size=", "method=", "calib=", "backend=", "mode="):
        assert python_name not in text, text


def test_bad_mode_and_method_are_parse_errors(shell):
    for line in ("wm --mode weightonly", "wm --method awq"):
        with pytest.raises(UsageError, match="invalid choice|could not parse"):
            shell.run_line_magic("quantize", line)
