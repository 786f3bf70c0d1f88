"""PruningPanel's Recover action equals nbopt.distill / finetune on the exported model; measure() without latency."""
from __future__ import annotations

import matplotlib
import pytest
import torch
import torch.nn.functional as F

matplotlib.use("Agg")

import nbopt  # noqa: E402
from nbopt import demo  # noqa: E402
from tests.snapshot import same_state, state_fingerprint  # noqa: E402


@pytest.fixture(scope="module")
def small():
    return list(demo.train_loader(seed=0))  # fixed batches: the panel and the check see the same order


@pytest.fixture(scope="module")
def model():
    return demo.load_model()


@pytest.mark.parametrize("method", ["distill", "finetune"])
def test_recover_button_equals_core(model, small, method):
    x = demo.example_input(1)
    fp = state_fingerprint(model)
    panel = nbopt.PruningPanel(model, x, evaluate=demo.evaluate, debounce=0, train_data=small, recover_epochs=1)
    panel.set(0.7, structured=True)
    panel.recover_method.value = method
    panel.recover_button.click()
    panel.raise_last_error()
    pruned = panel.pruner.export()
    expected = (nbopt.distill(pruned, model, small, epochs=1, progress=False).model if method == "distill"
                else nbopt.finetune(pruned, small, F.cross_entropy, epochs=1, progress=False))
    a, b = panel.result.state_dict(), expected.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert panel.recovered_accuracy == demo.evaluate(expected) > panel.accuracy
    assert f"{100 * panel.recovered_accuracy:.2f}%" in panel.status.value and method in panel.status.value
    assert same_state(model, fp)


def test_recover_needs_train_data(model):
    panel = nbopt.PruningPanel(model, demo.example_input(1), debounce=0)
    assert panel.recover_button.disabled
    with pytest.raises(nbopt.NboptError, match="train_data"):
        panel.recover()


def test_measure_without_latency_shows_sizes(model):
    panel = nbopt.PruningPanel(model, demo.example_input(1), debounce=0, measure_latency=False)
    panel.set(0.5, structured=True)
    m = panel.measure()  # used to raise KeyError 'latency_ms'
    assert "latency_ms" not in m.index and "dense size" in panel.measured_html.value
