"""%%profile_flops through IPython's InteractiveShell: values, options, errors."""
from __future__ import annotations

import pytest
from IPython.core.error import UsageError

from .conftest import run


@pytest.fixture(autouse=True)
def _setup(ip):
    ip.run_cell("import torch\nfrom nbopt import demo\nmodel = demo.load_model()\nx = torch.randn(2, 1, 8, 8)")


def test_cell_form_returns_cell_value_and_stores_profile(ip):
    value, err = run(ip, "%%profile_flops --no-latency -o prof\ny = model(x)\ny.shape")
    assert err is None and tuple(value) == (2, 10)
    prof = ip.user_ns["prof"]
    assert prof.total_macs == 2 * 2_556_672  # batch 2 of the demo CNN's 2.56M MACs
    assert prof.table.loc["model.block1.conv1.0", "macs"] == 2 * 32 * 64 * 32 * 9  # named after the variable


def test_line_form_and_options(ip):
    _, err = run(ip, "%profile_flops model x --no-latency --by type --top 3 -o p2")
    assert err is None
    assert ip.user_ns["p2"].total_macs == 2 * 2_556_672
    _, err = run(ip, "%profile_flops model x --no-latency --engine thop -o p3")
    assert err is None and ip.user_ns["p3"].engine == "thop"
    _, err = run(ip, "%profile_flops model x --no-latency --ignore Conv2d -o p4")
    assert err is None and ip.user_ns["p4"].total_macs == 2 * 1290 - 2 * 10  # only the Linear's MACs remain


@pytest.mark.parametrize("cell, message", [
    ("%%profile_flops --bogus\nmodel(x)", "unrecognized arguments: --bogus"),
    ("%%profile_flops\n1 + 1", "ran no torch.nn.Module"),
    ("%%profile_flops\nmodel(torch.randn(1, 3, 8, 8))", "the cell raised RuntimeError"),
    ("%profile_flops model nosuch", "could not evaluate input expression `nosuch`: NameError"),
    ("%profile_flops model", "line form needs a model and an input expression"),
    ("%profile_flops 42 x", "must be a torch.nn.Module"),
    ("%profile_flops model x --ignore Banana", "'Banana' is not a torch.nn module type"),
    ("%%profile_flops --engine thop\nmodel(x)", "use the line form"),
])
def test_bad_input_is_a_usage_error(ip, cell, message):
    _, err = run(ip, cell)
    assert type(err) is UsageError  # IPython prints a subclass with a full traceback (ipython#14024)
    assert message in str(err)


def test_help_is_complete(ip):
    doc = ip.find_cell_magic("profile_flops").__doc__
    for option in ("--top", "--by", "--depth", "--engine", "--no-latency", "--ignore", "--plot", "-o"):
        assert option in doc


def test_failed_cell_leaves_model_clean(ip, untouched):
    snap = untouched(ip.user_ns["model"])
    run(ip, "%%profile_flops\nmodel(x)\nraise ValueError('late')")
    snap.assert_unchanged()


def body_rows(html: str) -> int:
    return html.split("<tbody>", 1)[1].count("<tr")


@pytest.fixture()
def shown(monkeypatch):
    """The HTML the magic displays, in order."""
    import nbopt.magics.profile as magic

    out: list[str] = []
    monkeypatch.setattr(magic, "display", lambda obj: out.append(getattr(obj, "data", str(obj))))
    return out


def test_default_shows_the_15_layers_with_most_macs_and_top_all_shows_every_row(ip, shown):
    """A model with 20 linear layers: 15 rows by default, largest MACs first, and a line saying so;
    ``--top all`` shows every row."""
    import torch
    from torch import nn

    ip.user_ns["deep"] = nn.Sequential(*[nn.Linear(4 + i, 5 + i) for i in range(20)])
    ip.user_ns["xin"] = torch.randn(1, 4)
    ip.run_cell("%profile_flops deep xin --no-latency")
    html = shown[-1]
    assert body_rows(html) == 15 and "the 15 rows with the most MACs of 20 are shown" in html
    assert "<th>19</th>" in html and "<th>4</th>" not in html  # layer 19 (24x23 MACs) shown, layer 4 not
    ip.run_cell("%profile_flops deep xin --no-latency --top all")
    assert body_rows(shown[-1]) == 20 and "most MACs" not in shown[-1]


def test_large_tensor_value_is_not_echoed_unless_asked(ip, shown):
    import torch
    from torch import nn

    ip.user_ns["wide"] = nn.Linear(4, 1000)
    ip.user_ns["xin"] = torch.randn(1, 4)
    value, err = run(ip, "%%profile_flops --no-latency\nwide(xin)")
    assert err is None and value is None and "a tensor of shape (1, 1000)" in shown[-1]
    value, err = run(ip, "%%profile_flops --no-latency --show-value\nwide(xin)")
    assert err is None and tuple(value.shape) == (1, 1000)
    value, err = run(ip, "%%profile_flops --no-latency\nwide(xin).sum()")
    assert err is None and value.numel() == 1  # small values are returned as a cell's value


@pytest.mark.parametrize("line, message", [("--top 0", "--top needs a positive number"),
                                           ("--top many", "a number of layers or 'all'"),
                                           ("--depth -1", "--depth needs 0 or more")])
def test_bad_top_and_depth_name_the_flag(ip, line, message):
    _, err = run(ip, f"%%profile_flops --no-latency {line}\nmodel(x)")
    assert err is not None and message in str(err)


def test_no_latency_by_type_has_no_latency_column(ip, shown):
    ip.run_cell("%profile_flops model x --no-latency --by type")
    html = shown[-1]
    assert "latency_ms" not in html and "0.000" not in html
