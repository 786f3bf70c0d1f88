"""One model-copy/restore helper shared by every capability.

nbopt never mutates the user's model unless a call says so: work happens on :func:`working_copy`,
and :func:`preserved` restores ``training`` flags (and checks that no hook was left behind) even when
the forward pass raises.
"""
from __future__ import annotations

import contextlib
import copy
import io
from typing import Iterator

import torch
from torch import nn

from .errors import NboptError

_HOOK_DICTS = (
    "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
    "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs",
    "_state_dict_hooks", "_load_state_dict_pre_hooks",
)


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


def hook_counts(model: nn.Module) -> dict[str, int]:
    """How many hooks each submodule carries (for checking that none was left behind)."""
    out = {}
    for name, m in model.named_modules():
        n = sum(len(getattr(m, d, {}) or {}) for d in _HOOK_DICTS)
        if n:
            out[name] = n
    return out


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


def state_fingerprint(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached clone of the state_dict, to compare bit for bit later (tests, guarantees)."""
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}


def same_state(model: nn.Module, fingerprint: dict[str, torch.Tensor]) -> bool:
    """True when ``model``'s state_dict equals ``fingerprint`` bit for bit."""
    now = model.state_dict(keep_vars=True)
    if now.keys() != fingerprint.keys():
        return False
    return all(now[k].dtype == v.dtype and now[k].shape == v.shape and _same_bits(now[k].detach(), v)
               for k, v in fingerprint.items())


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equality; unlike ``torch.equal`` a NaN equals the same NaN."""
    if a.is_floating_point() or a.is_complex():
        return torch.equal(a, b) or bool(((a == b) | (a.isnan() & b.isnan())).all())
    return torch.equal(a, b)


def unique_parameters(model: nn.Module) -> list[torch.nn.Parameter]:
    """Parameters with shared ones (tied weights) counted once."""
    seen, out = set(), []
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


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
