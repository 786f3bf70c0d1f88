"""``%prune --recover distill|finetune --epochs N --data EXPR``: the stored model is the recovered one."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from IPython.core.error import UsageError

import nbopt
from nbopt import demo
from tests.snapshot import same_state, state_fingerprint


@pytest.fixture(autouse=True)
def _namespace(ip):
    small = [b for b, _ in zip(demo.train_loader(seed=0), range(4))]
    ip.user_ns.update(model=demo.load_model(), x=demo.example_input(2), demo=demo, small=small)


@pytest.mark.parametrize("method", ["distill", "finetune"])
def test_recover_equals_the_core(ip, method):
    ns = ip.user_ns
    fp = state_fingerprint(ns["model"])
    ip.run_line_magic("prune", f"model --amount 0.7 --structured --inputs x --no-latency --eval demo.evaluate "
                               f"--recover {method} --epochs 2 --data small -o r")
    r = ns["r"]
    assert same_state(ns["model"], fp)
    pruned = nbopt.prune(ns["model"], ns["x"], amount=0.7, structured=True, latency=False, progress=False).model
    if method == "distill":
        expected = nbopt.distill(pruned, ns["model"], ns["small"], epochs=2, progress=False).model
    else:
        expected = nbopt.finetune(pruned, ns["small"], F.cross_entropy, epochs=2, progress=False)
    a, b = r.model.state_dict(), expected.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert r.summary.loc["eval", "after"] == demo.evaluate(expected) > demo.evaluate(pruned)
    assert r.setting["recover"] == {"method": method, "epochs": 2} and any("recovered" in n for n in r.notes)


def test_help_lists_recover(ip):
    doc = ip.find_line_magic("prune").__doc__
    for opt in ("--recover", "--epochs", "--data"):
        assert opt in doc


@pytest.mark.parametrize("line, words", [
    ("model --amount 0.5 --structured --inputs x --recover distill", "--data"),
    ("model --amount 0.5 --structured --inputs x --recover teach --data small", "invalid choice"),
    ("model --amount 0.5 --structured --inputs x --recover finetune --epochs 0 --data small", "--epochs"),
])
def test_bad_recover_is_usage_error(ip, line, words):
    with pytest.raises(UsageError) as err:
        ip.run_line_magic("prune", line)
    assert words in str(err.value), str(err.value)
