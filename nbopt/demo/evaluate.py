"""Measured accuracy on the held-out digits (never an invented number)."""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from ..inputs import check_module
from ..model_state import preserved
from .data import test_loader


def accuracy(model: nn.Module, data: Iterable[Any]) -> float:
    """Top-1 accuracy of ``model`` over labelled batches ``(x, y)``; the model's flags are restored."""
    check_module(model)
    correct = total = 0
    with preserved(model, eval_mode=True), torch.no_grad():
        for x, y in data:
            out = model(x)
            correct += int((out.argmax(-1) == y).sum())
            total += len(y)
    return correct / max(total, 1)


def evaluate(model: nn.Module) -> float:
    """Top-1 accuracy on the 360 held-out digits (a fraction in [0, 1])."""
    return accuracy(model, test_loader())
