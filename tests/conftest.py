"""Shared fixtures: deterministic torch, the demo model, a clean-state checker (:mod:`tests.snapshot`)."""
from __future__ import annotations

import pytest
import torch

from nbopt import demo
from tests.snapshot import Snapshot


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def demo_model() -> torch.nn.Module:
    return demo.load_model()


def Untouched(model: torch.nn.Module) -> Snapshot:
    """Snapshot of everything nbopt promises not to change on a model (``.assert_unchanged()`` after the call).

    Model-level checks only (kernel=False): these tests compile int8 programs, and the first ``torch.compile``
    of a process installs PyTorch's own wrapper on ``nn.Module``; ``tests/reliability`` checks the kernel too.
    """
    return Snapshot.take(model, kernel=False)


@pytest.fixture
def untouched():
    return Untouched
