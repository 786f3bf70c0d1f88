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
