"""One snapshot of everything nbopt promises to leave as it was: a model, and the kernel around it.

``snap = Snapshot.take(model)`` before a call, ``snap.assert_unchanged()`` after it (also after the call
raised). Checked on the model: state_dict bit for bit (NaN equals itself), the same Parameter/buffer objects,
``requires_grad``, ``training`` flags, no hook on any module, no new attribute on any module (thop leaves
``total_ops`` buffers), and the tensors modules hold in plain attributes (a tensor, a list/tuple/dict of them:
the same objects, on the same devices; a meta count once left torchvision's ``cell_anchors`` on meta).
With ``kernel=True`` (the default) also: PyTorch's *global* module hooks, no
TorchDispatchMode / TorchFunctionMode left on the stacks, ``torch``, ``torch.nn.functional``, ``torch.Tensor``,
``nn.Module`` and the model's module classes' attributes are the same objects (calflops-style patches would show),
grad / inference mode, default dtype and thread count. ``kernel=False`` checks the model, the global module
hooks and the dispatch mode only (for tests whose call compiles: the first ``torch.compile`` of a process
installs PyTorch's own wrapper on ``nn.Module``).
"""
from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module
from torch.utils import _python_dispatch

from nbopt.model_state import training_flags

# torch itself rebinds torch.manual_seed once, the first time torch._dynamo is imported (torch.func, export
# and compile import it lazily). Import it up front so that one-time, torch-owned change is not blamed on
# the call under test.
import torch._dynamo  # noqa: E402,F401

_HOOK_DICTS = (
    "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
    "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs",
    "_state_dict_hooks", "_load_state_dict_pre_hooks",
)


def hook_counts(model: nn.Module) -> dict[str, int]:
    """How many hooks each submodule carries (for checking that none was left behind)."""
    out = {}
    for name, m in model.named_modules():
        n = sum(len(getattr(m, d, {}) or {}) for d in _HOOK_DICTS)
        if n:
            out[name] = n
    return out


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
    """Bit-for-bit equality; unlike ``torch.equal`` a NaN equals the same NaN. Meta tensors hold no bits:
    two meta tensors are equal (shape and dtype are compared by the caller), a meta and a real one are not."""
    if a.is_meta or b.is_meta:
        return a.is_meta and b.is_meta
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


GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                "_global_backward_pre_hooks", "_global_forward_hooks_always_called",
                "_global_forward_hooks_with_kwargs", "_global_module_registration_hooks",
                "_global_parameter_registration_hooks", "_global_buffer_registration_hooks")


def global_hooks() -> dict[str, int]:
    return {name: len(getattr(_module, name, {}) or {}) for name in GLOBAL_HOOKS}


def dispatch_state() -> dict[str, Any]:
    return {"current_dispatch_mode": _python_dispatch._get_current_dispatch_mode(),
            "dispatch_stack": torch._C._len_torch_dispatch_stack(),
            "function_stack": torch._C._len_torch_function_stack()}


def identities(namespace: Any) -> dict[str, int]:
    return {k: id(v) for k, v in vars(namespace).items()}


def _patched(before: dict[str, int], namespace: Any, what: str) -> list[str]:
    now = vars(namespace)
    out = [f"{what}.{k} replaced" for k, i in before.items() if k not in now or id(now[k]) != i]
    # new names are allowed only when they are submodules imported lazily (torch._dynamo ...)
    # (and copyreg's __slotnames__ cache, which Python adds to a class the first time it is deep-copied)
    out += [f"{what}.{k} added" for k in now.keys() - before.keys()
            if not isinstance(now[k], types.ModuleType) and k != "__slotnames__"]
    return out


def module_attrs(model: nn.Module) -> dict[str, tuple]:
    return {name: (tuple(sorted(vars(m))), tuple(m._parameters), tuple(m._buffers), tuple(m._modules))
            for name, m in model.named_modules(remove_duplicate=False)}


_MODULE_INTERNALS = frozenset({"_parameters", "_buffers", "_modules"})


def _tensor_leaves(value: Any, depth: int = 0) -> tuple | None:
    """``(id, device)`` of every tensor in a tensor or a list/tuple/dict/set of them (``None``: holds none)."""
    if isinstance(value, torch.Tensor):
        return ((id(value), str(value.device)),)
    if depth > 4:
        return None
    if isinstance(value, dict):
        parts = [(k, _tensor_leaves(v, depth + 1)) for k, v in value.items()]
    elif isinstance(value, (list, tuple)):
        parts = [(i, _tensor_leaves(v, depth + 1)) for i, v in enumerate(value)]
    elif isinstance(value, (set, frozenset)):
        parts = [(None, _tensor_leaves(v, depth + 1)) for v in value]
    else:
        return None
    leaves = tuple((repr(k), leaf) for k, leaf in parts if leaf is not None)
    return leaves or None


def plain_tensors(model: nn.Module) -> dict[str, tuple]:
    """Tensors a module holds outside its parameters and buffers — plain tensor attributes and lists, tuples,
    dicts of them (torchvision's ``cell_anchors``) — as ``{module.attr: its tensors' ids and devices,
    with their positions)}``, so a call that replaces, drops or moves them (to meta tensors) shows. The container
    itself may be a new one holding the same tensors: a forward that rebuilds its list of the same tensors
    (``[a.to(x.device) for a in ...]`` on the device they are on) leaves the model as it was."""
    out = {}
    for name, m in model.named_modules(remove_duplicate=False):
        for k, v in vars(m).items():
            if k in _MODULE_INTERNALS:
                continue
            leaves = _tensor_leaves(v)
            if leaves is not None:
                out[f"{name}.{k}" if name else k] = leaves
    return out


@dataclass
class Snapshot:
    model: nn.Module | None
    fingerprint: dict | None
    tensors: dict | None
    requires_grad: dict | None
    flags: dict | None
    hooks: dict | None
    attrs: dict | None
    plain: dict | None
    classes: dict
    globals_: dict
    dispatch: dict
    namespaces: dict
    modes: dict
    kernel: bool = True

    @classmethod
    def take(cls, model: nn.Module | None = None, *, kernel: bool = True) -> "Snapshot":
        spaces = {"torch": torch, "torch.nn.functional": F, "torch.Tensor": torch.Tensor, "nn.Module": nn.Module}
        classes = {}
        if model is not None:
            for m in model.modules():
                classes.setdefault(type(m), identities(type(m)))
        return cls(
            model=model,
            fingerprint=state_fingerprint(model) if model is not None else None,
            tensors={k: id(v) for k, v in model.state_dict(keep_vars=True).items()} if model is not None else None,
            requires_grad={k: p.requires_grad for k, p in model.named_parameters()} if model is not None else None,
            flags=training_flags(model) if model is not None else None,
            hooks=hook_counts(model) if model is not None else None,
            attrs=module_attrs(model) if model is not None else None,
            plain=plain_tensors(model) if model is not None else None,
            classes=classes,
            globals_=global_hooks(),
            dispatch=dispatch_state(),
            namespaces={name: (ns, identities(ns)) for name, ns in spaces.items()},
            modes={"grad": torch.is_grad_enabled(), "inference": torch.is_inference_mode_enabled(),
                   "dtype": torch.get_default_dtype(), "threads": torch.get_num_threads()},
            kernel=kernel,
        )

    def problems(self) -> list[str]:
        out = []
        m = self.model
        if m is not None:
            if not same_state(m, self.fingerprint):
                out.append("state_dict changed")
            now_t = {k: id(v) for k, v in m.state_dict(keep_vars=True).items()}
            if now_t != self.tensors:
                out.append("parameter/buffer objects replaced")
            if {k: p.requires_grad for k, p in m.named_parameters()} != self.requires_grad:
                out.append("requires_grad changed")
            if training_flags(m) != self.flags:
                out.append(f"training flags changed: {self.flags} -> {training_flags(m)}")
            if hook_counts(m) != self.hooks:
                out.append(f"hooks left on modules: {hook_counts(m)}")
            if module_attrs(m) != self.attrs:
                diff = {k for k, v in module_attrs(m).items() if self.attrs.get(k) != v}
                out.append(f"module attributes changed on {sorted(diff)}")
            plain = plain_tensors(m)
            if plain != self.plain:
                diff = sorted(k for k in plain.keys() | self.plain.keys() if plain.get(k) != self.plain.get(k))
                out.append(f"plain tensor attributes (tensors, lists/dicts of tensors) replaced or moved: {diff}")
        if global_hooks() != self.globals_:
            out.append(f"global module hooks left: {global_hooks()} (before {self.globals_})")
        if dispatch_state() != self.dispatch:
            out.append(f"dispatch/function mode left active: {dispatch_state()} (before {self.dispatch})")
        if self.kernel:
            out += self._kernel_problems()
        return out

    def _kernel_problems(self) -> list[str]:
        out = []
        for klass, ids in self.classes.items():
            out += _patched(ids, klass, klass.__name__)
        for name, (ns, ids) in self.namespaces.items():
            out += _patched(ids, ns, name)
        modes = {"grad": torch.is_grad_enabled(), "inference": torch.is_inference_mode_enabled(),
                 "dtype": torch.get_default_dtype(), "threads": torch.get_num_threads()}
        if modes != self.modes:
            out.append(f"global torch modes changed: {self.modes} -> {modes}")
        return out

    def assert_unchanged(self) -> None:
        problems = self.problems()
        assert not problems, "kernel state was not restored:\n  " + "\n  ".join(problems)
