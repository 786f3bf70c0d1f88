"""Per-layer profile of a model: params, MACs, FLOPs, latency, activation memory -> :class:`Profile`.

MACs count the multiply-accumulates of convolutions, matrix multiplies (linear, matmul, einsum),
attention and RNN cells — torchvision's published "GMACs". FLOPs count every floating-point operation:
``2 * MACs`` plus elementwise, normalization, pooling, softmax and interpolation work
(see :mod:`nbopt.profiling.formulas`).
"""
from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any, Callable, Mapping

import pandas as pd
from torch import nn

from .. import timing
from ..errors import InputError, InputTypeError, NboptError, NoisyTimingWarning
from ..inputs import (as_args, call, check_device, check_finite, check_module, describe_shapes, model_device,
                      on_meta)
from ..model_state import preserved, size_bytes
from ..table import Table, as_table
from .attribution import ModuleNames
from .aten_engine import count_aten
from .calls import calls_table, copy_note, fresh, needs_copy
from .counter import OpCounter
from .formulas import FORMULAS
from .latency import Latency, measure_latency
from .result import Profile
from .table import build_table
from .thop_engine import CUSTOM_OPS_SCOPES, check_op_types, count_thop, rule_tracker

ENGINES = ("aten", "thop")
EXECUTIONS = ("auto", "real", "meta")
FormulaMap = Mapping[Any, Callable[..., Any]]


def _check_choice(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise NboptError(f"unknown {what} {value!r}; use one of {allowed}")


def _check_repeat(repeat: int | None) -> None:
    if repeat is not None and repeat < 1:
        raise NboptError(f"repeat must be at least 1, got {repeat}")


def _check_timeable(model: nn.Module, inputs: Any = None, what: str = "the model") -> None:
    """Latency cannot be measured on meta tensors: they hold no data and run no kernels."""
    if on_meta(model, inputs):
        where = "its inputs are" if not on_meta(model) else f"{what}'s weights are"
        raise InputError(
            f"cannot measure latency: {where} on the meta device (no data, no kernels run, so a timing would be "
            "meaningless). Count only with latency=False (--no-latency in the magics), or make the model real first: "
            "model.to_empty(device='cpu') then model.load_state_dict(weights), with real inputs")


def _latency_fields(lat: Latency | None) -> dict[str, Any]:
    """The Profile's latency fields: the whole-model median, its samples and the machine's load."""
    if lat is None:
        return {"latency_ms": None}
    return {"latency_ms": lat.median_ms, "timing": lat.whole, "load": lat.load}


def profile(model: nn.Module | Callable[..., Any], inputs: Any = None, *, latency: bool = True,
            engine: str = "aten", custom_ops: Mapping[type, Callable] | None = None, ignore_ops: Any = None,
            warmup: int = 2, repeat: int | None = None, execution: str = "auto",
            formulas: FormulaMap | None = None, custom_ops_scope: str = "own") -> Profile:
    """Profile ``model`` on ``inputs``: one row per module with params, MACs, FLOPs, latency and memory.

    The model is run in eval mode under ``no_grad`` and left exactly as it was; inputs that a forward may change
    (a ``DynamicCache``, a ``ModelOutput``, any object that is not a tensor) are copied before every forward, so
    they are left as they were too (``prof.notes`` says so).

    Args:
        model: the ``nn.Module`` to profile (weights on the meta device count without memory, see latency), or,
            without ``inputs``, a function of no arguments that runs models (``lambda: model.generate(ids)``):
            it is run once, every top-level forward it makes is counted, and ``prof.calls`` has one row per
            forward (prefill, then each decode step); see :func:`profile_code`.
        inputs: a tensor, a tuple of positional tensors, or a dict of keyword inputs.
        latency: also time the whole forward and every module (``False``: counts only, much quicker). A model
            whose weights are on the meta device (built under ``torch.device("meta")``) has no data to time:
            count it with ``latency=False``, in seconds and without allocating its weights.
        engine: ``"aten"`` counts at the ATen dispatch level (complete: functional ops, attention,
            einsum, interpolation, RNNs); ``"thop"`` reports thop's own numbers (positional inputs only).
        custom_ops: ``{ModuleType: rule(module, inputs, output)}``, thop-style rules that add MACs to
            ``module.total_ops`` (FLOPs = 2 x MACs), found through the class hierarchy as thop does. As in thop,
            a rule replaces what the module computes itself and its submodules are counted as usual: a rule
            on a leaf (``nn.Conv2d``) replaces its count, a rule on a container is added to its children's
            counts (both engines; see ``custom_ops_scope``).
        ignore_ops: module types whose counts are dropped, with everything inside them (both engines).
        custom_ops_scope: ``"own"`` (default, thop's semantics, above) or ``"subtree"``: a rule is the whole
            count of its module, children included (``engine="aten"`` only).
        warmup: untimed forwards before timing (``latency=True``).
        repeat: timed forwards whose median is reported; ``None`` picks a count that fits about a second.
        execution: ``"auto"`` counts on meta tensors when only shapes are needed (no latency), falling
            back to a real run (``prof.notes`` says why); ``"meta"`` insists on meta tensors; ``"real"`` runs on
            the real inputs. Meta counts try plain meta tensors, then fake tensors (which let libraries such as
            transformers skip their data-dependent checks).
        formulas: ``{op: fn}`` counting formulas for this call only, laid over the global registry (they
            win over built-in and registered ones; nothing is kept). ``op`` and ``fn`` are as in
            :func:`~nbopt.profiling.formulas.register_formula` (``engine="aten"`` only).
    """
    if inputs is None and callable(model) and not isinstance(model, (nn.Module, type)):
        if engine != "aten" or execution == "meta":
            raise NboptError("a callable is profiled by running it: it needs engine='aten' and real execution "
                             "(pass the model itself with its inputs to count on meta tensors)")
        prof, _ = profile_code(model, name_for=lambda m: type(m).__name__, latency=latency, custom_ops=custom_ops,
                               ignore_ops=ignore_ops, warmup=warmup, repeat=repeat, formulas=formulas,
                               custom_ops_scope=custom_ops_scope)
        return prof
    check_module(model)
    if inputs is None:
        raise InputTypeError("profile(model, inputs) needs the model's inputs: a tensor, a tuple of positional "
                             "tensors or a dict of keyword arguments, e.g. nbopt.profile(model, torch.randn(1, 3, "
                             "224, 224)); or pass a callable that runs the model, e.g. lambda: model.generate(ids)")
    _check_choice(engine, ENGINES, "engine")
    _check_choice(execution, EXECUTIONS, "execution")
    _check_repeat(repeat)
    custom = check_op_types(custom_ops, "custom_ops")
    ignore = check_op_types(ignore_ops, "ignore_ops")
    _check_choice(custom_ops_scope, CUSTOM_OPS_SCOPES, "custom_ops_scope")
    if engine == "thop" and custom_ops_scope != "own":
        raise NboptError("custom_ops_scope='subtree' needs engine='aten'; thop adds a rule to its module's "
                         "children (custom_ops_scope='own')")
    registry = FORMULAS.overlay(formulas)
    args, kwargs = as_args(inputs)
    notes: list[str] = []
    meta_model = on_meta(model)
    if meta_model and not latency and (execution == "real" or engine == "thop"):
        raise InputError("this model's weights are on the meta device (no data), so it cannot run on real "
                         "tensors; count it with execution='auto' or 'meta' and engine='aten'")
    if latency or not meta_model:  # a meta model counts on real inputs too: they are read for their shapes
        check_device(model, inputs)
    if latency:
        _check_timeable(model, inputs)
    check_finite(inputs)
    copies = needs_copy(args, kwargs)
    if copies:
        notes.append(copy_note(args, kwargs))
    names = ModuleNames()
    names.add_root(model)
    counter: OpCounter | None = None
    if engine == "thop":
        if formulas:
            raise NboptError("formulas= counts ATen ops and needs engine='aten'; thop counts modules "
                             "(use custom_ops for thop rules)")
        tracker, own_macs, own_flops = count_thop(model, fresh(args), fresh(kwargs), names, custom, ignore)
        used = "real"
    else:
        if execution == "auto" and latency:
            execution = "real"
        tracker, counter, used = count_aten(model, args, kwargs, names, custom, ignore, execution, registry,
                                            custom_ops_scope, notes)
        own_macs = own_flops = None
    lat = None
    if latency:
        run = lambda: call(model, fresh(inputs) if copies else inputs)  # noqa: E731 - a failure is a ForwardError too
        with preserved(model, eval_mode=True):
            lat = measure_latency(run, names, warmup, repeat, model_device(model))
    table = build_table(names, tracker, own_macs, own_flops, lat.modules if lat else None)
    return Profile.from_table(table, **_latency_fields(lat), uncounted=dict(counter.uncounted) if counter else {},
                              coverage=counter.coverage if counter else 1.0, engine=engine, execution=used,
                              inputs=describe_shapes(inputs), notes=notes,
                              calls=calls_table(tracker.calls) if counter else None)


def profile_code(run: Callable[[], Any], *, name_for: Callable[[nn.Module], str | None],
                 latency: bool = True, custom_ops: Mapping[type, Callable] | None = None,
                 ignore_ops: Any = None, warmup: int = 2, repeat: int | None = None,
                 formulas: FormulaMap | None = None, custom_ops_scope: str = "own") -> tuple[Profile, Any]:
    """Profile every ``nn.Module`` forward that ``run()`` performs (the cell magic's core).

    ``name_for(module)`` names each model that starts running at top level (``None`` skips it). ``run`` is
    executed once, as it is (its value is returned); latency replays the recorded model calls in eval mode, each
    on a copy of the inputs it was given (taken before that call ran: a ``generate()`` decode step replays with
    the KV cache it saw). ``prof.calls`` has one row per top-level forward (prefill, then each decode step:
    tokens in, MACs, MACs per generated token, KV-cache bytes read). ``custom_ops``, ``ignore_ops``,
    ``custom_ops_scope``, ``warmup``, ``repeat`` and
    ``formulas`` are as in :func:`profile`.
    """
    _check_repeat(repeat)
    custom = check_op_types(custom_ops, "custom_ops")
    ignore = check_op_types(ignore_ops, "ignore_ops")
    _check_choice(custom_ops_scope, CUSTOM_OPS_SCOPES, "custom_ops_scope")
    registry = FORMULAS.overlay(formulas)
    names = ModuleNames()
    roots: list[tuple[nn.Module, str]] = []

    def on_new_root(module: nn.Module) -> str | None:
        prefix = name_for(module)
        if prefix is not None:
            roots.append((module, prefix))
        return prefix

    tracker = rule_tracker(names, custom, ignore, on_new_root, custom_ops_scope)
    tracker.record_root_calls = True
    tracker.copy_root_calls = bool(latency)  # copies of every call's inputs, to replay them for timing
    counter = OpCounter(tracker, formulas=registry)
    with tracker.active(), counter:
        value = run()
    if not roots:
        raise NboptError("the code ran no torch.nn.Module; call a model in it, e.g. `model(x)`")
    notes: list[str] = []
    calls = list(tracker.root_calls)
    lat = None
    if latency and calls:
        if any(needs_copy(a, kw) for _, a, kw in calls):
            notes.append(copy_note(*[(a, kw) for _, a, kw in calls[:1]]))
        for module, a, kw in calls:
            _check_timeable(module, (a, kw), next((p for m, p in roots if m is module), None) or "the model")

        def replay() -> None:
            for module, a, kw in calls:
                module(*fresh(a), **fresh(kw))

        with contextlib.ExitStack() as stack:
            for m, _ in roots:
                stack.enter_context(preserved(m, eval_mode=True))
            lat = measure_latency(replay, names, warmup, repeat, model_device(roots[0][0]))
    table = build_table(names, tracker, latencies=lat.modules if lat else None)
    shapes = "; ".join(describe_shapes((a, kw) if kw else a) for _, a, kw in tracker.root_calls[:3])
    prof = Profile.from_table(table, **_latency_fields(lat), uncounted=dict(counter.uncounted),
                              coverage=counter.coverage, engine="aten", execution="real", inputs=shapes,
                              notes=notes, calls=calls_table(tracker.calls))
    return prof, value


COMPARE_BRIEF = ("params", "macs", "flops", "size_bytes", "latency_ms", "speedup_vs_first")  # a terminal's columns


def compare(models: Mapping[str, nn.Module], inputs: Any, *, latency: bool = True, warmup: int = 2,
            repeat: int = 10) -> Table:
    """Several model variants side by side on the same inputs: params, MACs, FLOPs, latency, size.

    Latencies are measured once, interleaved (A, B, A, B ...) so machine load affects all alike:
    ``latency_ms`` is each model's median, ``latency_q1_ms``/``latency_q3_ms`` its quartiles over
    ``latency_calls`` timed calls. Ratio columns (``*_vs_first``) divide each row by the first row; for latency
    they come from :func:`nbopt.timing.ratio` of that same measurement, with the quartiles of the per-round
    ratios in ``latency_ms_vs_first_q1``/``_q3``, and ``speedup_vs_first`` is its inverse ratio (first / row).
    ``df.attrs`` keeps the ``timings`` and the speed-up ``ratios`` (:class:`~nbopt.timing.Ratio`), the
    machine's ``load``, ``noisy`` (a spread above :data:`~nbopt.timing.NOISY_SPREAD` or a busy machine) and a
    ``note`` saying so; a noisy measurement also warns (:class:`~nbopt.errors.NoisyTimingWarning`).

    The result is a :class:`~nbopt.table.Table`: a DataFrame of raw numbers that a notebook shows in readable
    units (every column, scrolling) and a terminal with the :data:`COMPARE_BRIEF` columns.
    """
    if not isinstance(models, Mapping) or not models:
        raise InputTypeError("models must be a non-empty dict {name: nn.Module}, e.g. {'plain': m1, 'dw-sep': m2}")
    for name, m in models.items():
        check_module(m, f"models[{name!r}]")
        if latency:
            _check_timeable(m, inputs, f"models[{name!r}]")
    rows = {}
    for name, m in models.items():
        p = profile(m, inputs, latency=False)
        rows[name] = {"params": p.total_params, "macs": p.total_macs, "flops": p.total_flops,
                      "size_bytes": size_bytes(m)}
    df = pd.DataFrame.from_dict(rows, orient="index")
    if latency:
        args, kwargs = as_args(inputs)
        fns = {name: (lambda mm: (lambda: mm(*args, **kwargs)))(m) for name, m in models.items()}
        with contextlib.ExitStack() as stack:
            for m in models.values():
                stack.enter_context(preserved(m, eval_mode=True))
            timings = timing.compare(fns, warmup=warmup, repeat=repeat)
        load = timing.machine_load()
    first = df.iloc[0]
    for col in [c for c in ("params", "macs", "flops", "size_bytes") if c in df]:
        df[f"{col}_vs_first"] = df[col] / first[col] if first[col] else math.nan
    if latency:
        _latency_columns(df, timings, load)
    df.index.name = "model"
    return as_table(df, brief=COMPARE_BRIEF)


def _latency_columns(df: pd.DataFrame, timings: Mapping[str, timing.Timing], load: timing.MachineLoad) -> None:
    """compare()'s latency columns and attrs, all from one interleaved measurement (``timings``)."""
    base = timings[df.index[0]]
    slower = {n: timing.ratio(timings[n], base) for n in df.index}   # row / first, per round
    faster = {n: timing.ratio(base, timings[n]) for n in df.index}   # first / row: the speed-up
    df["latency_ms"] = [timings[n].median_ms for n in df.index]
    df["latency_q1_ms"] = [timings[n].q1_ms for n in df.index]
    df["latency_q3_ms"] = [timings[n].q3_ms for n in df.index]
    df["latency_calls"] = [timings[n].n for n in df.index]
    df["latency_ms_vs_first"] = [slower[n].value for n in df.index]
    df["latency_ms_vs_first_q1"] = [slower[n].q1 for n in df.index]
    df["latency_ms_vs_first_q3"] = [slower[n].q3 for n in df.index]
    df["speedup_vs_first"] = [faster[n].value for n in df.index]
    df.attrs.update(timings=dict(timings), ratios=faster, load=load, noisy=timing.is_noisy(timings, load),
                    note=timing.noise_note(timings, load))
    if df.attrs["note"]:
        warnings.warn(f"compare(): {df.attrs['note']}", NoisyTimingWarning, stacklevel=3)
