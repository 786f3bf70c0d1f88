"""Per-layer profile of a model: params, MACs, FLOPs, latency, activation memory -> :class:`Profile`.

MACs count the multiply-accumulates of convolutions, matrix multiplies (linear, matmul, einsum),
attention and RNN cells — torchvision's published "GMACs". FLOPs count every floating-point operation:
``2 * MACs`` plus elementwise, normalization, pooling, softmax and interpolation work
(see :mod:`nbopt.profiling.formulas`).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import pandas as pd
import torch
from torch import nn

from .. import timing
from .attribution import OUTSIDE, ModuleNames, ModuleTracker
from .counter import OpCounter
from .thop_engine import self_from_inclusive, thop_layer_macs
from ..errors import InputTypeError, NboptError, describe_exception
from ..inputs import (as_args, call, check_device, check_finite, check_module, describe_shapes, forward_error,
                     model_device)
from ..model_state import preserved, size_bytes

ENGINES = ("aten", "thop")
EXECUTIONS = ("auto", "real", "meta")
COLUMNS = ["type", "depth", "calls", "in_shape", "out_shape", "params", "macs", "flops", "share",
           "latency_ms", "self_latency_ms", "out_bytes", "intensity", "gflops_per_s", "params_total",
           "macs_total", "flops_total"]


@dataclass
class Profile:
    """Where a model's compute goes, one row per module (``table``), plus totals.

    ``table`` columns: ``params``/``macs``/``flops`` are the module's own (rows add up to the totals);
    ``*_total`` are inclusive of children; ``latency_ms`` is inclusive wall time per forward (median),
    ``self_latency_ms`` excludes children; ``out_bytes`` is activation memory (output bytes);
    ``intensity`` is FLOPs per byte moved; ``gflops_per_s`` is achieved throughput.
    """

    table: pd.DataFrame
    total_macs: int
    total_flops: int
    total_params: int
    latency_ms: float | None
    uncounted: dict[str, int] = field(default_factory=dict)
    coverage: float = 1.0
    engine: str = "aten"
    execution: str = "real"
    inputs: str = ""

    @property
    def layers(self) -> pd.DataFrame:
        """Rows of modules that do work themselves (leaves and containers with their own ops)."""
        t = self.table
        return t[(t["macs"] > 0) | (t["flops"] > 0) | (t["params"] > 0)]

    def top(self, k: int = 10, by: str = "macs") -> pd.DataFrame:
        """The ``k`` layers with the most ``by`` (own counts: macs, flops, params, self_latency_ms ...)."""
        if by not in self.table.columns:
            raise NboptError(f"unknown column {by!r}; choose one of {', '.join(self.table.columns)}")
        return self.layers.sort_values(by, ascending=False).head(k)

    def by_type(self) -> pd.DataFrame:
        """Totals grouped by layer type (own counts, so nothing is counted twice)."""
        cols = ["params", "macs", "flops", "self_latency_ms", "out_bytes"]
        grouped = self.layers.groupby("type")[cols].sum()
        grouped.insert(0, "count", self.layers.groupby("type").size())
        grouped["share"] = grouped["macs"] / self.total_macs if self.total_macs else 0.0
        return grouped.sort_values("macs", ascending=False)

    def at_depth(self, depth: int) -> pd.DataFrame:
        """The tree collapsed to ``depth`` levels: deeper modules fold into their ancestor's inclusive row."""
        t = self.table
        kept = t[t["depth"] <= depth].copy()
        folded = kept["depth"] == depth
        for own, total in (("params", "params_total"), ("macs", "macs_total"), ("flops", "flops_total"),
                           ("self_latency_ms", "latency_ms")):
            kept.loc[folded, own] = kept.loc[folded, total]
        kept["share"] = kept["macs"] / self.total_macs if self.total_macs else 0.0
        return kept

    def summary(self) -> dict[str, Any]:
        """Totals as a plain dict."""
        return {"params": self.total_params, "macs": self.total_macs, "flops": self.total_flops,
                "latency_ms": self.latency_ms, "coverage": self.coverage, "uncounted": dict(self.uncounted),
                "engine": self.engine, "inputs": self.inputs}

    def plot(self, k: int = 10, **kwargs: Any) -> Any:
        """Top layers by MACs beside top layers by latency (matplotlib; drawn by :mod:`nbopt.display.figures`)."""
        from ..display.figures import plot_profile  # front-end imported on demand: the core stays matplotlib-free
        return plot_profile(self, k=k, **kwargs)

    def _repr_html_(self) -> str:
        from ..display.tables import profile_html
        return profile_html(self)

    def __repr__(self) -> str:
        lat = f", latency={self.latency_ms:.3f} ms" if self.latency_ms is not None else ""
        return (f"Profile(params={self.total_params:,}, macs={self.total_macs:,}, flops={self.total_flops:,}"
                f"{lat}, layers={len(self.layers)}, engine={self.engine!r})")


class _ThopProxy:
    """Looks like the module to a thop-style counting rule, but collects ``total_ops`` on itself."""

    def __init__(self, module: nn.Module) -> None:
        self.__dict__.update(_module=module, total_ops=0, total_params=0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_module"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        self.__dict__[name] = value


def _custom_rule_exit(custom_ops: Mapping[type, Callable], tracker_ref: list[ModuleTracker]) -> Callable:
    def on_exit(module: nn.Module, st: Any, args: tuple, output: Any) -> None:
        rule = custom_ops.get(type(module))
        if rule is None or tracker_ref[0].suppressed:
            return
        proxy = _ThopProxy(module)
        rule(proxy, args, output)
        macs = int(float(proxy.total_ops))
        st.macs += macs
        st.flops += 2 * macs
    return on_exit


def _check_op_types(ops: Any, what: str) -> dict | tuple:
    if ops is None:
        return {} if what == "custom_ops" else ()
    items = ops.keys() if isinstance(ops, Mapping) else ops
    for t in items:
        if not (isinstance(t, type) and issubclass(t, nn.Module)):
            raise InputTypeError(f"{what} must hold nn.Module subclasses (e.g. nn.ReLU), got {t!r}")
    if what == "custom_ops" and not isinstance(ops, Mapping):
        raise InputTypeError("custom_ops must be a dict {ModuleType: rule(module, inputs, output)} as in thop")
    return dict(ops) if isinstance(ops, Mapping) else tuple(ops)


def _new_tracker(names: ModuleNames, custom_ops: dict, ignore_ops: tuple,
                 on_new_root: Callable | None = None) -> ModuleTracker:
    ref: list[ModuleTracker] = []
    tracker = ModuleTracker(names, on_new_root=on_new_root, suppress_types=tuple(custom_ops) + ignore_ops,
                            on_exit=_custom_rule_exit(custom_ops, ref) if custom_ops else None)
    ref.append(tracker)
    return tracker


def _meta(obj: Any) -> Any:
    return torch.utils._pytree.tree_map(
        lambda t: torch.empty_like(t, device="meta") if isinstance(t, torch.Tensor) else t, obj)


@contextlib.contextmanager
def _on_meta(model: nn.Module) -> Iterator[None]:
    """Point every parameter/buffer slot at a meta twin for one block; the originals go back in ``finally``.

    (``torch.func.functional_call`` restores a module reachable under two names — a shared module — in the
    wrong order and leaves meta tensors on the user's model, so the swap is done here, once per module.)
    """
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


def _forward(model: nn.Module, args: tuple, kwargs: dict, tracker: ModuleTracker) -> None:
    """One forward; a failure is a ForwardError naming the inputs and the layer that raised."""
    try:
        model(*args, **kwargs)
    except NboptError:
        raise
    except Exception as exc:
        raise forward_error(model, (args, kwargs), exc, tracker.failed_at(exc)) from None


def _run_counted(model: nn.Module, args: tuple, kwargs: dict, tracker: ModuleTracker, on_meta: bool) -> OpCounter:
    counter = OpCounter(tracker, meta=on_meta)
    with preserved(model, eval_mode=True), torch.no_grad(), tracker.active(), counter:
        if on_meta:
            with _on_meta(model):
                model(*_meta(args), **_meta(kwargs))
        else:
            _forward(model, args, kwargs, tracker)
    return counter


def _meta_failure(model: nn.Module, args: tuple, kwargs: dict, names: ModuleNames, exc: Exception,
                  where: str) -> NboptError:
    """Why a meta run failed: bad inputs (a real run fails too and raises its own ForwardError here) or a
    model that needs real data (an op without a meta kernel, a branch on tensor values)."""
    tracker = ModuleTracker(names)
    with preserved(model, eval_mode=True), torch.no_grad(), tracker.active():
        _forward(model, args, kwargs, tracker)
    return NboptError(f"this model cannot run on meta tensors{where} ({describe_exception(exc)}), though it runs "
                      "on real ones; count it with execution='real' (or 'auto', which falls back by itself)")


def _count_aten(model: nn.Module, args: tuple, kwargs: dict, names: ModuleNames, custom_ops: dict,
                ignore_ops: tuple, execution: str) -> tuple[ModuleTracker, OpCounter, str]:
    if execution in ("auto", "meta"):
        tracker = _new_tracker(names, custom_ops, ignore_ops)
        try:
            return tracker, _run_counted(model, args, kwargs, tracker, on_meta=True), "meta"
        except Exception as exc:  # bad inputs, an op without a meta kernel or a data-dependent branch
            if execution == "meta":
                raise _meta_failure(model, args, kwargs, names, exc, tracker.failed_at(exc)) from None
    tracker = _new_tracker(names, custom_ops, ignore_ops)
    return tracker, _run_counted(model, args, kwargs, tracker, on_meta=False), "real"


def _ancestors(name: str, present: set[str]) -> list[str]:
    """Enclosing modules of ``name`` that appear in the table, nearest first."""
    if name == "(root)":
        return []
    out = []
    while "." in name:
        name = name.rsplit(".", 1)[0]
        if name in present:
            out.append(name)
    if "(root)" in present:
        out.append("(root)")
    return out


def _inclusive(rows: list[str], own: list[float], ancestors: list[list[str]]) -> list:
    """Own values plus those of every descendant."""
    total = dict(zip(rows, own))
    for v, ups in zip(own, ancestors):
        for a in ups:
            total[a] += v
    return [total[n] for n in rows]


def build_table(names: ModuleNames, tracker: ModuleTracker | None, own_macs: Mapping[str, float] | None = None,
                own_flops: Mapping[str, float] | None = None, latencies: Mapping[str, float] | None = None
                ) -> pd.DataFrame:
    """Assemble the per-module DataFrame (own and inclusive counts, latency, memory, intensity)."""
    types, params = names.types, names.params
    stats = tracker.stats if tracker is not None else {}
    rows = list(types) + [n for n in stats if n not in types]
    present = set(rows)
    ancestors = [_ancestors(n, present) for n in rows]
    st = [stats.get(n) for n in rows]
    has_root = 1 if "(root)" in types else 0
    src_macs = own_macs if own_macs is not None else {n: s.macs for n, s in stats.items()}
    src_flops = own_flops if own_flops is not None else {n: s.flops for n, s in stats.items()}
    cols: dict[str, Any] = {
        "type": [types.get(n) or (s.type if s else "") for n, s in zip(rows, st)],
        "depth": [0 if n in ("(root)", OUTSIDE) else n.count(".") + has_root for n in rows],
        "calls": [s.calls if s else 0 for s in st],
        "in_shape": [_fmt_shapes(s.in_shapes) if s else "" for s in st],
        "out_shape": [_fmt_shapes(s.out_shapes) if s else "" for s in st],
        "params": [params.get(n, 0) for n in rows],
        "macs": [int(src_macs.get(n, 0)) for n in rows],
        "flops": [int(src_flops.get(n, 0)) for n in rows],
    }
    for own in ("params", "macs", "flops"):
        cols[f"{own}_total"] = _inclusive(rows, cols[own], ancestors)
    total_macs = sum(cols["macs"])
    macs = np.asarray(cols["macs"], dtype=np.int64)
    cols["share"] = macs / total_macs if total_macs else np.zeros(len(rows))
    lat = latencies or {}
    cols["latency_ms"] = np.array([lat.get(n, math.nan) for n in rows], dtype=float)
    child_lat = dict.fromkeys(rows, 0.0)
    for n, ups in zip(rows, ancestors):
        if ups and n in lat:
            child_lat[ups[0]] += lat[n]
    cols["self_latency_ms"] = [lat[n] - child_lat[n] if n in lat else math.nan for n in rows]
    cols["out_bytes"] = [s.out_bytes if s else 0 for s in st]
    moved = np.array([s.in_bytes + s.out_bytes if s else 0 for s in st], dtype=float)
    moved += np.asarray(cols["params_total"], dtype=float) * 4
    flops_total = np.asarray(cols["flops_total"], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        cols["intensity"] = np.where(moved > 0, flops_total / np.where(moved > 0, moved, 1.0), math.nan)
        cols["gflops_per_s"] = flops_total / (cols["latency_ms"] * 1e6)
    df = pd.DataFrame(cols, index=pd.Index(rows, name="module"))
    return df[COLUMNS]


def _fmt_shapes(shapes: list) -> str:
    return ", ".join("x".join(map(str, s)) for s in shapes)


def _latency(fn: Callable[[], Any], names: ModuleNames, warmup: int, repeat: int | None,
             device: torch.device) -> tuple[float, dict[str, float]]:
    for _ in range(max(0, warmup)):
        with torch.no_grad():
            fn()
    n = repeat if repeat is not None else timing.auto_repeat(fn, device=device)
    total = timing.measure(fn, warmup=0, repeat=n, device=device).median_ms
    per_module = timing.module_latencies(fn, names.names, repeat=n, device=device)
    return total, per_module


def profile(model: nn.Module, inputs: Any, *, latency: bool = True, engine: str = "aten",
            custom_ops: Mapping[type, Callable] | None = None, ignore_ops: Any = None,
            warmup: int = 2, repeat: int | None = None, execution: str = "auto") -> Profile:
    """Profile ``model`` on ``inputs`` (a tensor, a tuple of positional tensors or a dict of kwargs).

    ``engine="aten"`` counts at the ATen dispatch level (complete: functional ops, attention, einsum,
    interpolation, RNNs); ``engine="thop"`` reports thop's own numbers. ``custom_ops`` maps module types to
    thop-style rules ``rule(module, inputs, output)`` that add to ``module.total_ops`` (MACs);
    ``ignore_ops`` lists module types whose counts are dropped. ``latency=True`` measures the whole forward
    and every module (median of ``repeat`` runs after ``warmup``; ``repeat=None`` fits about a second).
    ``execution="auto"`` counts on meta tensors when only shapes are needed (no latency), falling back to a
    real run. The model is run in eval mode under ``no_grad`` and left exactly as it was.
    """
    check_module(model)
    if engine not in ENGINES:
        raise NboptError(f"unknown engine {engine!r}; use one of {ENGINES}")
    if execution not in EXECUTIONS:
        raise NboptError(f"unknown execution {execution!r}; use one of {EXECUTIONS}")
    if repeat is not None and repeat < 1:
        raise NboptError(f"repeat must be at least 1, got {repeat}")
    custom = _check_op_types(custom_ops, "custom_ops")
    ignore = _check_op_types(ignore_ops, "ignore_ops")
    args, kwargs = as_args(inputs)
    check_device(model, inputs)
    check_finite(inputs)
    names = ModuleNames()
    names.add_root(model)
    if engine == "thop":
        if kwargs:
            raise NboptError("engine='thop' takes positional inputs only (thop has no keyword inputs); "
                             "use engine='aten' for dict inputs")
        call_fn = lambda: call(model, args)  # noqa: E731
        with preserved(model, eval_mode=True), torch.no_grad():
            call_fn()  # a clear ForwardError before thop sees bad inputs
            total, inclusive = thop_layer_macs(model, args, custom, ignore)
        own = self_from_inclusive(inclusive)
        tracker = _new_tracker(names, {}, ())
        with preserved(model, eval_mode=True), torch.no_grad(), tracker.active():
            call_fn()  # shapes and activation bytes
        for st in tracker.stats.values():
            st.macs = st.flops = 0
        counter, used = None, "real"
        own_macs, own_flops = own, {k: 2 * v for k, v in own.items()}
    else:
        if execution == "auto" and latency:
            execution = "real"
        tracker, counter, used = _count_aten(model, args, kwargs, names, custom, ignore, execution)
        own_macs = own_flops = None
    total_ms, per_module = None, None
    if latency:
        run = lambda: call(model, inputs)  # noqa: E731 - a failure is a ForwardError too
        with preserved(model, eval_mode=True):
            total_ms, per_module = _latency(run, names, warmup, repeat, model_device(model))
    table = build_table(names, tracker, own_macs, own_flops, per_module)
    return Profile(table=table, total_macs=int(table["macs"].sum()), total_flops=int(table["flops"].sum()),
                   total_params=int(table["params"].sum()), latency_ms=total_ms,
                   uncounted=dict(counter.uncounted) if counter else {},
                   coverage=counter.coverage if counter else 1.0, engine=engine, execution=used,
                   inputs=describe_shapes(inputs))


def profile_code(run: Callable[[], Any], *, name_for: Callable[[nn.Module], str | None],
                 latency: bool = True, custom_ops: Mapping[type, Callable] | None = None,
                 ignore_ops: Any = None, warmup: int = 2, repeat: int | None = None) -> tuple[Profile, Any]:
    """Profile every ``nn.Module`` forward that ``run()`` performs (the cell magic's core).

    ``name_for(module)`` names each model that starts running at top level (``None`` skips it). ``run`` is
    executed once, as it is (its value is returned); latency replays the recorded model calls in eval mode.
    """
    if repeat is not None and repeat < 1:
        raise NboptError(f"repeat must be at least 1, got {repeat}")
    custom = _check_op_types(custom_ops, "custom_ops")
    ignore = _check_op_types(ignore_ops, "ignore_ops")
    names = ModuleNames()
    roots: list[tuple[nn.Module, str]] = []

    def on_new_root(module: nn.Module) -> str | None:
        prefix = name_for(module)
        if prefix is not None:
            roots.append((module, prefix))
        return prefix

    tracker = _new_tracker(names, custom, ignore, on_new_root)
    tracker.record_root_calls = True
    counter = OpCounter(tracker)
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
            total_ms, per_module = _latency(replay, names, warmup, repeat, model_device(roots[0][0]))
    table = build_table(names, tracker, latencies=per_module)
    prof = Profile(table=table, total_macs=int(table["macs"].sum()), total_flops=int(table["flops"].sum()),
                   total_params=int(table["params"].sum()), latency_ms=total_ms, uncounted=dict(counter.uncounted),
                   coverage=counter.coverage, engine="aten", execution="real",
                   inputs="; ".join(describe_shapes((a, kw) if kw else a) for _, a, kw in tracker.root_calls[:3]))
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
