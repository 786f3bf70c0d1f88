"""The magics' and the CLI's choice lists are the core's tuples (a new observer/engine/format shows up in help)."""
from __future__ import annotations

import pytest
from IPython.core.magic_arguments import parse_argstring

from nbopt.deployment.export import FORMATS
from nbopt.display.tables import VIEWS
from nbopt.profiling.api import ENGINES
from nbopt.pruning.pruner import SCOPES
from nbopt.pruning.structured import CRITERIA
from nbopt.quantization.options import BACKENDS, GRANULARITIES, MODES, OBSERVERS


@pytest.mark.parametrize("kind, name, choices", [
    ("line", "quantize", [OBSERVERS, MODES, BACKENDS, GRANULARITIES]),
    ("line", "prune", [SCOPES, CRITERIA]),
    ("cell", "profile_flops", [ENGINES, VIEWS]),
    ("line", "export", [FORMATS]),
])
def test_help_lists_the_core_choices(ip, kind, name, choices):
    find = ip.find_line_magic if kind == "line" else ip.find_cell_magic
    doc = find(name).__doc__
    for tup in choices:  # argparse's {a,b} or the readable "one of a, b" (with a METAVAR)
        assert "{" + ",".join(tup) + "}" in doc or "one of " + ", ".join(tup) in " ".join(doc.split())


def test_per_tensor_is_granularity_per_tensor():
    from nbopt.magics.quantize import QuantizeMagics

    f = QuantizeMagics.quantize
    assert parse_argstring(f, "m").granularity == "per_channel"
    assert parse_argstring(f, "m --per-tensor").granularity == "per_tensor"
    assert parse_argstring(f, "m --granularity per_tensor").granularity == "per_tensor"


def test_cli_choices():
    from nbopt.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices["profile"]
    by_dest = {a.dest: a.choices for a in sub._actions}
    assert tuple(by_dest["engine"]) == tuple(ENGINES) and tuple(by_dest["by"]) == VIEWS
