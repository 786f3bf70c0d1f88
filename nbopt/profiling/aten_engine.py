"""``engine="aten"``: one counted forward, on meta tensors when shapes are all it needs, else on real ones."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import NboptError, describe_exception
from ..inputs import forward_error, on_meta as weights_on_meta
from ..model_state import preserved
from .attribution import ModuleNames, ModuleTracker
from .calls import fresh
from .counter import OpCounter
from .formulas import FormulaRegistry
from .thop_engine import rule_tracker


def _meta(obj: Any) -> Any:
    """``obj`` with every tensor replaced by an empty meta tensor of the same shape and dtype."""
    return torch.utils._pytree.tree_map(
        lambda t: torch.empty_like(t, device="meta") if isinstance(t, torch.Tensor) else t, obj)


# a module's own bookkeeping, restored by on_meta's parameter/buffer swap or never holding tensors
_INTERNAL = frozenset({"_parameters", "_buffers", "_modules", "training", "_non_persistent_buffers_set"})


def _holds_tensor(value: Any, depth: int = 0) -> bool:
    """True for a tensor, or a list/tuple/dict/set holding one (at any depth up to a few levels)."""
    if isinstance(value, torch.Tensor):
        return True
    if depth > 4:
        return False
    if isinstance(value, dict):
        return any(_holds_tensor(v, depth + 1) for v in value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_holds_tensor(v, depth + 1) for v in value)
    return False


def _contents(value: Any) -> Any:
    """A shallow copy of a mutable container's contents (to put back in place), else ``None``."""
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, (list, set)):
        return list(value)
    return None


class _Attributes:
    """Every module's plain ``__dict__`` entries, so that what a forward sets there goes back afterwards.

    A forward may reassign or fill a plain attribute (torchvision's anchor generator sets its
    ``cell_anchors`` list from the feature maps' device): on meta tensors that would leave meta tensors on
    the user's model. :meth:`restore` puts back each entry that now holds a tensor (or a container of them)
    and is not the original object, refills containers whose contents changed, and removes new entries that
    hold tensors. Other attributes (counters, flags) are left as the forward left them, as a real run would.
    """

    def __init__(self, model: nn.Module) -> None:
        self.saved: list[tuple[nn.Module, dict[str, tuple[Any, Any]]]] = []
        seen: set[int] = set()
        for m in model.modules():
            if id(m) in seen:
                continue
            seen.add(id(m))
            self.saved.append((m, {k: (v, _contents(v)) for k, v in vars(m).items() if k not in _INTERNAL}))

    def restore(self) -> None:
        for m, entries in self.saved:
            now = vars(m)
            for k in [k for k in now if k not in _INTERNAL and k not in entries]:
                if _holds_tensor(now[k]):
                    del now[k]
            for k, (value, contents) in entries.items():
                current = now.get(k, _MISSING)
                if current is not value:
                    if current is _MISSING or _holds_tensor(current) or _holds_tensor(value):
                        now[k] = value
                    continue
                if contents is None or not (_holds_tensor(contents) or _holds_tensor(value)):
                    continue
                if isinstance(value, dict):
                    if value.keys() != contents.keys() or any(value[i] is not contents[i] for i in contents):
                        value.clear()
                        value.update(contents)
                elif isinstance(value, list):
                    if len(value) != len(contents) or any(a is not b for a, b in zip(value, contents)):
                        value[:] = contents
                elif isinstance(value, set) and value != set(contents):
                    value.clear()
                    value.update(contents)


_MISSING = object()


@contextlib.contextmanager
def on_meta(model: nn.Module) -> Iterator[None]:
    """Point every parameter/buffer slot at a meta twin for one block; the originals go back in ``finally``,
    and so do the plain attributes holding tensors that the forward set (see :class:`_Attributes`).

    (``torch.func.functional_call`` restores a module reachable under two names — a shared module — in the
    wrong order and leaves meta tensors on the user's model, so the swap is done here, once per module.)
    """
    attributes = _Attributes(model)
    slots = [(store, k, t) for m in model.modules() for store in (m._parameters, m._buffers)
             for k, t in store.items() if t is not None]
    twins: dict[int, torch.Tensor] = {}
    for _, _, t in slots:
        if id(t) not in twins:
            twin = torch.empty_like(t, device="meta")
            twins[id(t)] = nn.Parameter(twin, t.requires_grad) if isinstance(t, nn.Parameter) else twin
    try:
        for store, k, t in slots:
            store[k] = twins[id(t)]
        yield
    finally:
        for store, k, t in slots:
            store[k] = t
        attributes.restore()


@contextlib.contextmanager
def attributes_restored(model: nn.Module) -> Iterator[None]:
    """Put back the plain attributes holding tensors that a forward set (see :class:`_Attributes`)."""
    attributes = _Attributes(model)
    try:
        yield
    finally:
        attributes.restore()


def _forward(model: nn.Module, args: tuple, kwargs: dict, tracker: ModuleTracker) -> None:
    """One forward; a failure is a ForwardError naming the inputs and the layer that raised."""
    try:
        model(*args, **kwargs)
    except NboptError:
        raise
    except Exception as exc:
        raise forward_error(model, (args, kwargs), exc, tracker.failed_at(exc)) from None


def _run_counted(model: nn.Module, args: tuple, kwargs: dict, tracker: ModuleTracker, mode: str,
                 formulas: FormulaRegistry) -> OpCounter:
    """One eval-mode, no_grad forward under an :class:`OpCounter`; the model is left as it was.

    ``mode``: ``"real"`` (the inputs as given), ``"meta"`` (meta tensors) or ``"fake"`` (meta tensors under a
    ``FakeTensorMode``, see :func:`_fake_mode`).
    """
    args, kwargs = fresh(args), fresh(kwargs)  # a forward may change a cache it is given: never the caller's
    counter = OpCounter(tracker, meta=mode != "real", formulas=formulas)
    with preserved(model, eval_mode=True), torch.no_grad(), tracker.active():
        if mode == "real":
            with counter:
                _forward(model, args, kwargs, tracker)
        elif mode == "meta":
            with on_meta(model), counter:
                model(*_meta(args), **_meta(kwargs))
        else:  # real weights and inputs become fake on the fly (no data is copied, none is written)
            if weights_on_meta(model):
                args, kwargs = _meta(args), _meta(kwargs)
            with attributes_restored(model), _fake_mode(), counter:
                model(*args, **kwargs)
    return counter


def _fake_mode() -> Any:
    """A ``FakeTensorMode`` that takes real tensors too: weights, inputs and the tensors inside a cache object
    become fake (shape-only) tensors on the device they are on, so the model picks the kernels it picks there.

    Libraries skip their data-dependent checks under fake tensors (transformers' ``is_tracing``: packed-sequence
    detection, mask shortcuts), which plain meta tensors cannot answer (``Tensor.item()``); the counter sits above
    the fake mode, so it sees every op first.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    return FakeTensorMode(allow_non_fake_inputs=True)


def _meta_failure(model: nn.Module, args: tuple, kwargs: dict, names: ModuleNames, exc: Exception,
                  where: str) -> NboptError:
    """Why a meta run failed: bad inputs (a real run fails too and raises its own ForwardError here) or a
    model that needs real data (an op without a meta kernel, a branch on tensor values)."""
    tracker = ModuleTracker(names)
    with preserved(model, eval_mode=True), torch.no_grad(), tracker.active():
        _forward(model, fresh(args), fresh(kwargs), tracker)
    return NboptError(f"this model cannot run on meta tensors{where} ({describe_exception(exc)}), though it runs "
                      "on real ones; count it with execution='real' (or 'auto', which falls back by itself)")


def count_aten(model: nn.Module, args: tuple, kwargs: dict, names: ModuleNames, custom_ops: dict,
               ignore_ops: tuple, execution: str, formulas: FormulaRegistry, custom_ops_scope: str = "own",
               notes: list[str] | None = None) -> tuple[ModuleTracker, OpCounter, str]:
    """Count one forward: ``execution`` ``"meta"``, ``"real"`` or ``"auto"`` (meta, falling back to real).

    Meta tries plain meta tensors, then fake tensors (for models whose code asks a tensor's value, which fake
    tensors let libraries skip). Returns the tracker (per-module stats), the counter (uncounted ops, coverage)
    and the execution used; why an ``"auto"`` count fell back to real goes to ``notes``.
    """
    def make() -> ModuleTracker:
        return rule_tracker(names, custom_ops, ignore_ops, custom_ops_scope=custom_ops_scope)

    if execution in ("auto", "meta"):
        failures: list[tuple[Exception, str]] = []
        for mode in ("meta", "fake"):
            tracker = make()
            try:
                return tracker, _run_counted(model, args, kwargs, tracker, mode, formulas), "meta"
            except NboptError:
                raise
            except Exception as exc:  # bad inputs, an op without a meta kernel or a data-dependent branch
                failures.append((exc, tracker.failed_at(exc)))
        failure, where = _telling(failures)
        if weights_on_meta(model):
            raise NboptError(f"this model's weights are on the meta device and it cannot be counted on meta "
                             f"tensors{where} ({describe_exception(failure)}); check the inputs (shapes, dtypes, "
                             "keyword names), or build the model on a real device to count it on real tensors")
        if execution == "meta":
            raise _meta_failure(model, args, kwargs, names, failure, where) from None
        if notes is not None:
            notes.append(f"counted on real tensors: the model cannot run on meta tensors{where} "
                         f"({describe_exception(failure)})")
    tracker = make()
    return tracker, _run_counted(model, args, kwargs, tracker, "real", formulas), "real"


def _needs_values(exc: Exception) -> bool:
    """A failure because the code asked for a tensor's value (``.item()``, ``bool(t)``, a data-dependent shape)."""
    return "cannot be called on meta tensors" in str(exc) or type(exc).__name__ in (
        "DataDependentOutputException", "DynamicOutputShapeException")


def _telling(failures: list[tuple[Exception, str]]) -> tuple[Exception, str]:
    """The failure to report of the meta and fake attempts: the meta one (its message is the plainer), unless
    fake tensors got past the value the meta run needed and failed for another reason."""
    (meta, meta_where), (fake, fake_where) = failures
    return (fake, fake_where) if _needs_values(meta) and not _needs_values(fake) else (meta, meta_where)


