"""Everything a long-lived kernel could lose to a profiler/quantizer/pruner call, snapshotted and compared.

``snap = Snapshot.take(model)`` before a call, ``snap.assert_unchanged()`` after it (also after the call
raised). Checked:

* the model: state_dict bit for bit, the same Parameter/buffer objects, ``requires_grad``, ``training``
  flags, no hook on any module, no new attribute on any module (thop leaves ``total_ops`` buffers);
* PyTorch's *global* module hooks (``torch.nn.modules.module._global_*``) are as before (empty);
* ``torch``, ``torch.nn.functional``, ``torch.Tensor`` and ``nn.Module`` attributes are the same objects
  (calflops-style patches would show here), and so are the attributes of the model's module classes;
* no TorchDispatchMode / TorchFunctionMode left on the stacks, grad / inference mode, default dtype and
  thread count as before.
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

from nbopt.model_state import hook_counts, same_state, state_fingerprint, training_flags

# torch itself rebinds torch.manual_seed once, the first time torch._dynamo is imported (torch.func, export
# and compile import it lazily). Import it up front so that one-time, torch-owned change is not blamed on
# the call under test.
import torch._dynamo  # noqa: E402,F401

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


@dataclass
class Snapshot:
    model: nn.Module | None
    fingerprint: dict | None
    tensors: dict | None
    requires_grad: dict | None
    flags: dict | None
    hooks: dict | None
    attrs: dict | None
    classes: dict
    globals_: dict
    dispatch: dict
    namespaces: dict
    modes: dict

    @classmethod
    def take(cls, model: nn.Module | None = None) -> "Snapshot":
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
            classes=classes,
            globals_=global_hooks(),
            dispatch=dispatch_state(),
            namespaces={name: (ns, identities(ns)) for name, ns in spaces.items()},
            modes={"grad": torch.is_grad_enabled(), "inference": torch.is_inference_mode_enabled(),
                   "dtype": torch.get_default_dtype(), "threads": torch.get_num_threads()},
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
        for klass, ids in self.classes.items():
            out += _patched(ids, klass, klass.__name__)
        if global_hooks() != self.globals_:
            out.append(f"global module hooks left: {global_hooks()} (before {self.globals_})")
        if dispatch_state() != self.dispatch:
            out.append(f"dispatch/function mode left active: {dispatch_state()} (before {self.dispatch})")
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


def clean_exception(exc: BaseException) -> None:
    """The exception a user sees carries no chained torch traceback and no C++ stack in its message."""
    assert exc.__cause__ is None, f"chained cause {exc.__cause__!r}"
    assert exc.__suppress_context__ or exc.__context__ is None, f"chained context {exc.__context__!r}"
    text = str(exc)
    for marker in ("Exception raised from", "frame #", "C++ CapturedTraceback", "Traceback (most recent"):
        assert marker not in text, f"torch internals in the message: {text[:300]}"


def ipython_shell():
    """The test IPython shell (``globalipapp.get_ipython`` is rebound after the first call; always look it up)."""
    from IPython.testing import globalipapp

    return globalipapp.get_ipython() or globalipapp.get_ipython()
