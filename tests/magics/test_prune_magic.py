"""``%prune``: runs through IPython, stores the result, help is complete, bad input is a UsageError."""
from __future__ import annotations

import pytest
from IPython.core.error import UsageError

from nbopt import demo
from tests.snapshot import same_state, state_fingerprint


@pytest.fixture(autouse=True)
def _namespace(ip):
    """The shared shell (tests/magics/conftest.py) with a fresh demo model for every test."""
    ip.user_ns.update(model=demo.load_model(), x=demo.example_input(2), demo=demo)


def test_prune_stores_result_and_leaves_model(ip):
    fp = state_fingerprint(ip.user_ns["model"])
    ip.run_line_magic("prune", "model --amount 0.5 --structured --inputs x --no-latency --eval demo.evaluate -o r")
    r = ip.user_ns["r"]
    assert r.model(ip.user_ns["x"]).shape == (2, 10)
    assert r.summary.loc["macs", "ratio"] > 2
    assert 0 <= r.summary.loc["eval", "before"] <= 1 and "eval" in r.summary.index
    assert same_state(ip.user_ns["model"], fp)


def test_unstructured_threshold_with_exclude(ip):
    ip.run_line_magic("prune", "model --threshold 0.05 --scope layer --exclude fc,stem.0 --inputs x --no-latency -o r2")
    rep = ip.user_ns["r2"].report
    assert "fc" not in rep.index and rep["sparsity"].gt(0).all()


def test_quoted_inputs_expression_with_spaces(ip):
    ip.run_cell("import torch")
    ip.run_line_magic("prune", 'model --amount 0.3 --structured --inputs "torch.randn(2, 1, 8, 8)" --no-latency -o r3')
    assert ip.user_ns["r3"].model(ip.user_ns["x"]).shape == (2, 10)


def test_help_is_complete(ip):
    doc = ip.find_line_magic("prune").__doc__
    for opt in ("--amount", "--threshold", "--structured", "--scope", "--inputs", "--eval", "--exclude", "-o"):
        assert opt in doc


@pytest.mark.parametrize("line, words", [
    ("model --inputs x", "--amount"),
    ("model --amount 1.5 --inputs x", "[0, 1)"),
    ("model --amount 0.5 --threshold 0.1 --inputs x", "not both"),
    ("model --amount 0.5", "inputs"),
    ("nope --amount 0.5 --inputs x", "nope"),
    ("model --amount 0.5 --inputs x --exclude block9", "block9"),
    ("model --threshold 100 --inputs x", "removes every weight"),
    ("model --amount 0.5 --inputs x --eval 3", "not callable"),
    ("model --amount 0.5 --scope model --inputs x", "scope"),
])
def test_bad_input_is_usage_error(ip, line, words):
    with pytest.raises(UsageError) as err:
        ip.run_line_magic("prune", line)
    assert type(err.value) is UsageError
    assert words in str(err.value), str(err.value)


@pytest.fixture()
def shown(monkeypatch):
    """What the magic displays, in order."""
    import nbopt.magics.prune as magic

    out: list = []
    monkeypatch.setattr(magic, "display", lambda obj: out.append(getattr(obj, "data", obj)))
    return out


def test_summary_and_report_render_through_frames(ip, shown):
    ip.run_line_magic("prune", "model --amount 0.5 --inputs x --no-latency --eval demo.evaluate -o r")
    assert len(shown) == 1 and isinstance(shown[0], str)  # one HTML block: summary, notes, folded report
    html = shown[0]
    assert "105.87K" in html and "417.61 KiB" in html and "<details>" in html
    assert "105866" not in html and "e+" not in html and "nan" not in html.lower()
    assert "overflow-x:auto" in html and 'border="1"' not in html
    r = ip.user_ns["r"]
    assert r.summary.loc["params", "before"] == 105866.0  # the stored result keeps raw numbers
    sparsity = r.report["sparsity"].iloc[0]
    assert f"{100 * sparsity:.1f}%" in html and f"{sparsity:.6f}" not in html
