"""Per-layer profile of a model: params, MACs, FLOPs, latency, activation memory -> :class:`Profile`.

MACs count the multiply-accumulates of convolutions, matrix multiplies (linear, matmul, einsum),
attention and RNN cells — torchvision's published "GMACs". FLOPs count every floating-point operation:
``2 * MACs`` plus elementwise, normalization, pooling, softmax and interpolation work
(see :mod:`nbopt.profiling.formulas`).
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Mapping

import pandas as pd
from torch import nn

from .. import timing
from ..errors import InputTypeError, NboptError
from ..inputs import as_args, call, check_device, check_finite, check_module, describe_shapes, model_device
from ..model_state import preserved, size_bytes
from .attribution import ModuleNames
from .aten_engine import count_aten
from .counter import OpCounter
from .formulas import FORMULAS
from .latency import measure_latency
from .result import Profile
from .table import build_table
from .thop_engine import check_op_types, count_thop, rule_tracker

ENGINES = ("aten", "thop")
EXECUTIONS = ("auto", "real", "meta")
FormulaMap = Mapping[Any, Callable[..., Any]]


def _check_choice(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise NboptError(f"unknown {what} {value!r}; use one of {allowed}")


def _check_repeat(repeat: int | None) -> None:
    if repeat is not None and repeat < 1:
        raise NboptError(f"repeat must be at least 1, got {repeat}")


def profile(model: nn.Module, inputs: Any, *, latency: bool = True, engine: str = "aten",
            custom_ops: Mapping[type, Callable] | None = None, ignore_ops: Any = None,
            warmup: int = 2, repeat: int | None = None, execution: str = "auto",
            formulas: FormulaMap | None = None) -> Profile:
    """Profile ``model`` on ``inputs``: one row per module with params, MACs, FLOPs, latency and memory.

    The model is run in eval mode under ``no_grad`` and left exactly as it was.

    Args:
        model: the ``nn.Module`` to profile.
        inputs: a tensor, a tuple of positional tensors, or a dict of keyword inputs.
        latency: also time the whole forward and every module (``False``: counts only, much quicker).
        engine: ``"aten"`` counts at the ATen dispatch level (complete: functional ops, attention,
            einsum, interpolation, RNNs); ``"thop"`` reports thop's own numbers (positional inputs only).
        custom_ops: ``{ModuleType: rule(module, inputs, output)}``, thop-style rules that add MACs to
            ``module.total_ops``; they replace the count of those modules (both engines).
        ignore_ops: module types whose counts are dropped (both engines).
        warmup: untimed forwards before timing (``latency=True``).
        repeat: timed forwards whose median is reported; ``None`` picks a count that fits about a second.
        execution: ``"auto"`` counts on meta tensors when only shapes are needed (no latency), falling
            back to a real run; ``"meta"`` insists on meta tensors; ``"real"`` runs on the real inputs.
        formulas: ``{op: fn}`` counting formulas for this call only, laid over the global registry (they
            win over built-in and registered ones; nothing is kept). ``op`` and ``fn`` are as in
            :func:`~nbopt.profiling.formulas.register_formula` (``engine="aten"`` only).
    """
    check_module(model)
    _check_choice(engine, ENGINES, "engine")
    _check_choice(execution, EXECUTIONS, "execution")
    _check_repeat(repeat)
    custom = check_op_types(custom_ops, "custom_ops")
    ignore = check_op_types(ignore_ops, "ignore_ops")
    registry = FORMULAS.overlay(formulas)
    args, kwargs = as_args(inputs)
    check_device(model, inputs)
    check_finite(inputs)
    names = ModuleNames()
    names.add_root(model)
    counter: OpCounter | None = None
    if engine == "thop":
        if formulas:
            raise NboptError("formulas= counts ATen ops and needs engine='aten'; thop counts modules "
                             "(use custom_ops for thop rules)")
        tracker, own_macs, own_flops = count_thop(model, args, kwargs, names, custom, ignore)
        used = "real"
    else:
        if execution == "auto" and latency:
            execution = "real"
        tracker, counter, used = count_aten(model, args, kwargs, names, custom, ignore, execution, registry)
        own_macs = own_flops = None
    total_ms, per_module = None, None
    if latency:
        run = lambda: call(model, inputs)  # noqa: E731 - a failure is a ForwardError too
        with preserved(model, eval_mode=True):
            total_ms, per_module = measure_latency(run, names, warmup, repeat, model_device(model))
    table = build_table(names, tracker, own_macs, own_flops, per_module)
    return Profile.from_table(table, latency_ms=total_ms, uncounted=dict(counter.uncounted) if counter else {},
                              coverage=counter.coverage if counter else 1.0, engine=engine, execution=used,
                              inputs=describe_shapes(inputs))


def profile_code(run: Callable[[], Any], *, name_for: Callable[[nn.Module], str | None],
                 latency: bool = True, custom_ops: Mapping[type, Callable] | None = None,
                 ignore_ops: Any = None, warmup: int = 2, repeat: int | None = None,
                 formulas: FormulaMap | None = None) -> tuple[Profile, Any]:
    """Profile every ``nn.Module`` forward that ``run()`` performs (the cell magic's core).

    ``name_for(module)`` names each model that starts running at top level (``None`` skips it). ``run`` is
    executed once, as it is (its value is returned); latency replays the recorded model calls in eval mode.
    ``custom_ops``, ``ignore_ops``, ``warmup``, ``repeat`` and ``formulas`` are as in :func:`profile`.
    """
    _check_repeat(repeat)
    custom = check_op_types(custom_ops, "custom_ops")
    ignore = check_op_types(ignore_ops, "ignore_ops")
    registry = FORMULAS.overlay(formulas)
    names = ModuleNames()
    roots: list[tuple[nn.Module, str]] = []

    def on_new_root(module: nn.Module) -> str | None:
        prefix = name_for(module)
        if prefix is not None:
            roots.append((module, prefix))
        return prefix

    tracker = rule_tracker(names, custom, ignore, on_new_root)
    tracker.record_root_calls = True
    counter = OpCounter(tracker, formulas=registry)
    with tracker.active(), counter:
        value = run()
    if not roots:
        raise NboptError("the code ran no torch.nn.Module; call a model in it, e.g. `model(x)`")
    total_ms, per_module = None, None
    if latency and tracker.root_calls:
        calls = list(tracker.root_calls)

        def replay() -> None:
            for module, a, kw in calls:
                module(*a, **kw)

        with contextlib.ExitStack() as stack:
            for m, _ in roots:
                stack.enter_context(preserved(m, eval_mode=True))
            total_ms, per_module = measure_latency(replay, names, warmup, repeat, model_device(roots[0][0]))
    table = build_table(names, tracker, latencies=per_module)
    shapes = "; ".join(describe_shapes((a, kw) if kw else a) for _, a, kw in tracker.root_calls[:3])
    prof = Profile.from_table(table, latency_ms=total_ms, uncounted=dict(counter.uncounted),
                              coverage=counter.coverage, engine="aten", execution="real", inputs=shapes)
    return prof, value


def compare(models: Mapping[str, nn.Module], inputs: Any, *, latency: bool = True, warmup: int = 2,
            repeat: int = 10) -> pd.DataFrame:
    """Several model variants side by side on the same inputs: params, MACs, FLOPs, latency, size.

    Latencies are measured interleaved (A, B, A, B ...) so machine load affects all alike. Ratio columns
    (``*_vs_first``) divide each row by the first row.
    """
    if not isinstance(models, Mapping) or not models:
        raise InputTypeError("models must be a non-empty dict {name: nn.Module}, e.g. {'plain': m1, 'dw-sep': m2}")
    for name, m in models.items():
        check_module(m, f"models[{name!r}]")
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
        df["latency_ms"] = [timings[n].median_ms for n in df.index]
    first = df.iloc[0]
    for col in [c for c in ("params", "macs", "flops", "latency_ms", "size_bytes") if c in df]:
        df[f"{col}_vs_first"] = df[col] / first[col] if first[col] else math.nan
    df.index.name = "model"
    return df
