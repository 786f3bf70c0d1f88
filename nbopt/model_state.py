"""One model-copy/restore helper shared by every capability, and a model's sizes.

nbopt never mutates the user's model unless a call says so: work happens on :func:`working_copy`, and
:func:`preserved` puts the ``training`` flags back even when the forward pass raises. (That nothing else is
left behind — hooks, attributes, patches — is checked by the tests' ``tests/snapshot.py``.)
"""
from __future__ import annotations

import contextlib
import copy
import io
from typing import Iterator

import torch
from torch import nn

from .errors import NboptError


def working_copy(model: nn.Module) -> nn.Module:
    """An independent deep copy of ``model`` (same training flags, no shared storage)."""
    try:
        return copy.deepcopy(model)
    except Exception as exc:
        raise NboptError(
            f"could not copy {type(model).__name__} ({exc}); nbopt works on a copy so your model "
            "stays untouched. Make the model deep-copyable (no open files/locks held as attributes)."
        ) from None


def training_flags(model: nn.Module) -> dict[str, bool]:
    """``training`` of every submodule, by qualified name."""
    return {name: m.training for name, m in model.named_modules(remove_duplicate=False)}


def restore_training(model: nn.Module, flags: dict[str, bool]) -> None:
    """Put back the ``training`` flags saved by :func:`training_flags`."""
    for name, m in model.named_modules(remove_duplicate=False):
        if name in flags:
            m.training = flags[name]


@contextlib.contextmanager
def preserved(model: nn.Module, *, eval_mode: bool = False) -> Iterator[nn.Module]:
    """Run a block against ``model`` and put its training flags back afterwards, even on error."""
    flags = training_flags(model)
    try:
        if eval_mode and any(flags.values()):
            model.eval()
        yield model
    finally:
        restore_training(model, flags)


def disk_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: the checkpoint that would ship."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def size_bytes(model: nn.Module) -> int:
    """Bytes held by unique parameters and buffers (the dense in-memory size)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total
