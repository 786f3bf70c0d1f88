"""Built-in demo: real digits data, a small trained CNN shipped with the package, and evaluation.

>>> from nbopt import demo
>>> model = demo.load_model()          # trained weights, eval mode
>>> demo.evaluate(model)               # measured held-out accuracy
"""
from __future__ import annotations

import torch

from .data import (calibration_data, digits_split, example_input, fashion_mnist, test_loader,
                   train_loader)
from .evaluate import accuracy, evaluate
from .model import ConvBNReLU, DepthwiseSeparable, DigitsNet, ResidualBlock
from .train import WEIGHTS


def load_model() -> DigitsNet:
    """The demo CNN with its shipped, trained weights, in eval mode."""
    model = DigitsNet()
    model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    return model.eval()


__all__ = ["DigitsNet", "ResidualBlock", "DepthwiseSeparable", "ConvBNReLU", "load_model", "evaluate",
           "accuracy", "digits_split", "train_loader", "test_loader", "calibration_data", "example_input",
           "fashion_mnist", "WEIGHTS"]
