"""Shared fixtures: deterministic torch, the demo model, a clean-state checker."""
from __future__ import annotations

import pytest
import torch

from nbopt import demo
from nbopt.model_state import hook_counts, state_fingerprint, training_flags


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def demo_model() -> torch.nn.Module:
    return demo.load_model()


def global_hooks() -> int:
    from torch.nn.modules import module as m
    return len(m._global_forward_hooks) + len(m._global_forward_pre_hooks)


class Untouched:
    """Snapshot of everything nbopt promises not to change on a model."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.state = state_fingerprint(model)
        self.flags = training_flags(model)
        self.hooks = hook_counts(model)
        self.global_hooks = global_hooks()

    def check(self) -> None:
        from nbopt.model_state import same_state
        from torch.utils._python_dispatch import _get_current_dispatch_mode
        assert same_state(self.model, self.state), "state_dict changed"
        assert training_flags(self.model) == self.flags, "training flags changed"
        assert hook_counts(self.model) == self.hooks, "hooks left on the model"
        assert global_hooks() == self.global_hooks, "global module hooks left behind"
        assert _get_current_dispatch_mode() is None, "a dispatch mode is still active"


@pytest.fixture
def untouched():
    return Untouched
