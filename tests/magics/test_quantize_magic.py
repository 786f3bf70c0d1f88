"""%quantize through IPython's test shell."""
from __future__ import annotations

import pytest
from IPython.core.error import UsageError

from tests.magics.conftest import run


@pytest.fixture(scope="module")
def shell(ip):
    ip.run_cell("import nbopt, torch\nfrom nbopt import demo\nqm = demo.load_model()\n"
                "qcal = demo.calibration_data(128)")
    return ip


def test_help_lists_every_option(shell):
    doc = " ".join(shell.find_line_magic("quantize").__doc__.split())  # argparse wraps the help
    for opt in ("--calib", "--bits", "--weight-bits", "--act-bits", "--group-size", "--method", "--per-tensor",
                "--asymmetric", "--symmetric", "--observer", "--mode", "weight-only", "--eval", "--sensitivity", "-o",
                "NOT faster", "one of rtn, gptq"):
        assert opt in doc


def test_quantize_stores_result(shell, monkeypatch):
    import nbopt.magics.quantize as magic
    shown = []
    monkeypatch.setattr(magic, "display", shown.append)
    shell.run_line_magic("quantize", "qm --calib qcal --bits 4 --act-bits none --observer mse "
                                      "--eval demo.evaluate --repeat 3 -o q4")
    r = shell.user_ns["q4"]
    assert not r.real and (r.report.weight_bits == 4).all() and r.report.act_bits.isna().all()
    assert r.accuracy["fp32"] - r.accuracy["quantized"] <= 0.02
    assert r.latency["fp32"]["n"] <= 6  # --repeat 3
    assert shown == [r]  # one display: the result, drawn by nbopt.display (summary, notes, report)
    html = r._repr_html_()
    assert "not faster" in html and "4-bit weights" in html and "[4]" not in html
    assert "nan" not in html.lower() and "1.000000" not in html


def test_the_simulated_note_names_the_widths_as_text(shell):
    r = nbopt_quantize(shell, layer_bits={"fc": 8}, weight_bits=4)
    note = next(n for n in r.notes if n.startswith("Simulated quantization"))
    assert "4/8-bit weights" in note and "[" not in note


def nbopt_quantize(shell, **kw):
    import nbopt
    return nbopt.quantize(shell.user_ns["qm"], shell.user_ns["qcal"][:1], act_bits=None, progress=False, repeat=1,
                          **kw)


@pytest.mark.parametrize("line, message", [
    ("qm --calib qcal --bits 20", "from 2 to 16"),
    ("nope --calib qcal", "could not evaluate model"),
    ("qm --mode int8", "--calib"),
    ("qm --calib qcal --eval 3", "not callable"),
    ("qm --calib qcal --observer best", "could not parse|invalid choice"),
])
def test_bad_input_is_a_usage_error(shell, line, message):
    with pytest.raises(UsageError, match=message):
        shell.run_line_magic("quantize", line)


def test_usage_error_is_shown_without_traceback(shell):
    _, err = run(shell, "%quantize qm --calib qcal --bits 1")
    assert type(err) is UsageError


def test_sensitivity_option_shows_table_and_heatmap(shell, monkeypatch):
    import nbopt.magics.quantize as magic
    shown = []
    monkeypatch.setattr(magic, "display", shown.append)
    shell.run_line_magic("quantize", "qm --calib qcal[0][:16] --sensitivity 8,4 -o sens")
    df = shell.user_ns["sens"]
    assert list(df.columns[-4:]) == ["drop_8bit", "sqnr_8bit", "drop_4bit", "sqnr_4bit"]
    assert shown[0] is df and type(shown[1]).__name__ == "Figure"
    assert len(shown[1].axes[0].get_yticklabels()) == len(df)
    with pytest.raises(UsageError, match="comma-separated bit widths"):
        shell.run_line_magic("quantize", "qm --calib qcal --sensitivity 8,x")


@pytest.mark.parametrize("line, says, not_said", [
    ("qm --mode int8", "pass --calib ...", "calib="),
    ("qm --calib qcal --mode int8 --act-bits none", "(--act-bits none given); use --mode dynamic", "act_bits="),
])
def test_usage_errors_name_the_flags_not_the_python_arguments(shell, line, says, not_said):
    res = shell.run_cell(f"%quantize {line}")
    err = str(res.error_in_exec or res.error_before_exec)
    assert says in err and not_said not in err and "mode=" not in err


def test_as_flags_rewrites_only_known_names():
    from nbopt.magics.common import as_flags

    flags = {"act_bits": "--act-bits", "structured": "--structured", "mode": "--mode"}
    assert as_flags("act_bits=None, mode='int8', structured=False, repeat=3", flags) == \
        "--act-bits none, --mode int8, without --structured, repeat=3"
