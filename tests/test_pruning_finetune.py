"""Fine-tuning recovers accuracy (measured on the held-out digits) and never touches the input model."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import nbopt
from nbopt import demo
from nbopt.errors import NboptError
from nbopt.pruning import Pruner, finetune


def test_structured_half_plus_short_finetune_within_one_point(demo_model, untouched):
    guard = untouched(demo_model)
    dense = demo.evaluate(demo_model)
    small = Pruner(demo_model, demo.example_input(2), progress=False).set(amount=0.5, structured=True).export()
    assert sum(p.numel() for p in small.parameters()) < 0.5 * sum(p.numel() for p in demo_model.parameters())
    pruned_acc = demo.evaluate(small)
    tuned = finetune(small, demo.train_loader(), nn.CrossEntropyLoss(), epochs=3, lr=3e-3, progress=False)
    acc = demo.evaluate(tuned)
    assert acc >= dense - 0.01, (dense, pruned_acc, acc)
    assert acc > pruned_acc
    guard.assert_unchanged()


def test_finetune_keeps_unstructured_zeros(demo_model):
    sparse = nbopt.prune(demo_model, demo.example_input(2), amount=0.7, latency=False, progress=False).model
    zero = {n: p == 0 for n, p in sparse.named_parameters() if p.dim() > 1}
    tuned = finetune(sparse, demo.train_loader(), nn.CrossEntropyLoss(), epochs=1, lr=1e-3, progress=False)
    for n, p in tuned.named_parameters():
        if n in zero:
            assert bool((p[zero[n]] == 0).all()), n


def test_interrupt_leaves_original_intact(demo_model, untouched):
    guard = untouched(demo_model)

    def loss(out, y):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(demo_model, demo.train_loader(), loss, epochs=1, progress=False)
    guard.assert_unchanged()


@pytest.mark.parametrize("kwargs", [{"epochs": 0}, {"lr": -1.0}])
def test_bad_arguments(demo_model, kwargs):
    with pytest.raises(NboptError):
        finetune(demo_model, demo.train_loader(), nn.CrossEntropyLoss(), **kwargs)


def test_unlabelled_data_is_refused(demo_model):
    with pytest.raises(NboptError, match=r"\(inputs, target\) pairs"):
        finetune(demo_model, [torch.randn(4, 1, 8, 8)], nn.CrossEntropyLoss(), progress=False)


def test_finished_run_is_not_partial_and_on_interrupt_is_checked(demo_model):
    tuned = finetune(demo_model, [(demo.example_input(4), torch.tensor([0, 1, 2, 3]))], nn.CrossEntropyLoss(),
                     epochs=2, progress=False)
    info = tuned.finetune_info
    assert (info.partial, info.epochs_completed, info.steps_completed, info.steps_planned) == (False, 2, 2, 2)
    assert info.last_loss > 0
    with pytest.raises(NboptError, match=r"on_interrupt must be 'return' \(keep the work done, marked partial\) "
                                         r"or 'raise', got 'ignore'"):
        finetune(demo_model, demo.train_loader(), nn.CrossEntropyLoss(), on_interrupt="ignore")
