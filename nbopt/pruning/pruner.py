"""``Pruner``: prepare once, then move between pruning settings quickly and reversibly."""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

import pandas as pd
import torch
from torch import nn

from .. import graph
from ..errors import NboptError, UnsupportedModelError, describe_exception
from ..inputs import call, check_device, check_finite, check_module, check_not_meta
from ..layers import out_axis
from ..model_state import preserved, working_copy
from . import heads as H
from . import structured as S
from .preview import ChannelPreview, removed_slices
from .masks import LayerMask, build_masks, check_finite_parameters, check_names, global_counts, prunable_layers

SCOPES = ("global", "layer")
PRUNE_CACHE_NOTE = ("use_cache was off while pruning (a KV cache cannot be traced); the pruned model has it on again, "
                    "like yours. Your model's config is unchanged.")


class Pruner:
    """Reversible pruning of a working copy of ``model``; the model you pass is never modified.

    >>> pruner = Pruner(model, x)            # sorts magnitudes once
    >>> pruner.set(amount=0.5)               # global L1, unstructured; fast enough for a slider
    >>> pruner.set(amount=0.3, structured=True)   # remove 30% of channels (preview by zeroing)
    >>> pruner.report                        # per-layer DataFrame
    >>> small = pruner.export()              # independent model (channels physically removed)
    """

    def __init__(self, model: nn.Module, example_inputs: Any, *, layers: list[str] | None = None,
                 exclude: list[str] | None = None, criterion: str = "l1", round_to: int = 8,
                 progress: bool = True) -> None:
        check_module(model)
        check_not_meta(model, "Pruner/prune")
        check_finite_parameters(model)
        check_finite(example_inputs, "example_inputs")
        check_device(model, example_inputs)
        if criterion not in S.CRITERIA:
            raise NboptError(f"criterion must be one of {S.CRITERIA} (L1/L2 norm or BatchNorm scale), got {criterion!r}")
        if not isinstance(round_to, int) or round_to < 1:
            raise NboptError(f"round_to must be a positive int (8 suits most CPU kernels), got {round_to!r}")
        self.original = model
        self.example_inputs = graph.cache_free_inputs(example_inputs)
        self.criterion, self.round_to = criterion, round_to
        self._explicit_layers = list(layers) if layers is not None else None
        # a KV cache (DynamicCache) cannot be traced: pruning works on copies with use_cache off, and the
        # exported model gets it back (see export)
        self._cache_modules = graph.cache_owners(model)
        self.notes: list[str] = [PRUNE_CACHE_NOTE] if self._cache_modules else []
        self.model = working_copy(model)
        graph.cache_off(self.model)
        with preserved(self.model, eval_mode=True), torch.no_grad():
            self._reference = S.output_spec(call(self.model, example_inputs))  # every export must match it
        self._layers = prunable_layers(self.model, layers, exclude)
        self._masks: dict[str, LayerMask] = build_masks(self._layers, progress)
        self._groups: list[S.ChannelGroup] | None = None
        self.blocked: list[S.Blocked] = []
        self._preview = ChannelPreview({id(m.module.weight): m.original for m in self._masks.values()})
        self._kept: dict[str, int] = {}
        self._dense_macs: dict[str, float] | None = None
        self.structured = False
        self.setting: dict[str, Any] = {"amount": 0.0, "threshold": None, "scope": "global", "structured": False}

    # ------------------------------------------------------------------ settings
    @property
    def layer_names(self) -> list[str]:
        """Qualified names of the layers this pruner may prune."""
        return list(self._masks)

    def set(self, amount: float | None = None, *, threshold: float | None = None, scope: str = "global",
            structured: bool = False, overrides: dict[str, float] | None = None) -> "Pruner":
        """Apply one setting to the working copy (replacing the previous one) and return ``self``.

        ``amount``: fraction of weights (or of channels, when ``structured``) to remove, in [0, 1).
        ``threshold``: remove weights with magnitude below it (structured: channels whose importance,
        normalised to mean 1 per group, is below it). ``scope``: rank globally or within each layer.
        ``overrides``: ``{layer: amount}`` for layers that get their own amount.
        """
        amount, overrides = self._check_setting(amount, threshold, scope, overrides)
        if structured:
            self._prepare_structured()  # traces once, with all threads
        with one_thread():
            self._apply(amount, threshold, scope, structured, overrides)
        self.setting = {"amount": amount, "threshold": threshold, "scope": scope, "structured": structured,
                        "overrides": dict(overrides)}
        return self

    def _apply(self, amount: float | None, threshold: float | None, scope: str, structured: bool,
               overrides: dict[str, float]) -> None:
        if structured:
            kept = self._plan_structured(amount, threshold, scope, overrides)
            for m in self._masks.values():
                m.apply(0)  # only restores what the previous unstructured setting zeroed
            self._preview.update(removed_slices(self._groups or [], kept))
            self._kept, self.structured = kept, True
        else:
            counts = self._plan_unstructured(amount, threshold, scope, overrides)
            self._restore()
            for name, k in counts.items():
                self._masks[name].apply(k)

    def reset(self) -> "Pruner":
        """Back to the original weights, bit for bit."""
        self._restore()
        for m in self._masks.values():
            m.apply(0)
        self.setting = {"amount": 0.0, "threshold": None, "scope": "global", "structured": False}
        return self

    def _check_setting(self, amount: Any, threshold: Any, scope: str, overrides: Any
                       ) -> tuple[float | None, dict[str, float]]:
        if amount is not None and threshold is not None:
            raise NboptError("give either amount= or threshold=, not both")
        if amount is None and threshold is None:
            amount = 0.0
        if amount is not None:
            check_amount(amount)
        if threshold is not None and (not isinstance(threshold, (int, float)) or not math.isfinite(threshold)
                                      or threshold < 0):
            raise NboptError(f"threshold must be a finite number >= 0 (a weight magnitude), got {threshold!r}")
        if scope not in SCOPES:
            raise NboptError(f"scope must be 'global' (rank all layers together) or 'layer' (each layer "
                             f"by itself), got {scope!r}")
        overrides = dict(overrides or {})
        unknown = [n for n in overrides if n not in self._masks]
        if unknown:
            check_names(self.model, self._layers, unknown, "overrides")
            raise NboptError(f"overrides names layer {unknown[0]!r}, which is excluded or not prunable; "
                             f"prunable layers: {', '.join(self.layer_names[:6])} ...")
        for name, value in overrides.items():
            check_amount(value, f"overrides[{name!r}]")
        return (None if amount is None else float(amount)), overrides

    def _plan_unstructured(self, amount: float | None, threshold: float | None, scope: str,
                           overrides: dict[str, float]) -> dict[str, int]:
        masks = self._masks
        if threshold is not None:
            counts = {n: m.count_below(threshold) for n, m in masks.items()}
            full = [n for n, k in counts.items() if k >= masks[n].numel and n not in overrides]
            if full:
                top = float(masks[full[0]].sorted_abs[-1])
                raise NboptError(f"threshold {threshold} removes every weight of layer {full[0]!r} (its largest "
                                 f"magnitude is {top:.4g}); use a threshold below {top:.4g}, or exclude "
                                 f"the layer (exclude=[{full[0]!r}]).")
        elif scope == "layer":
            counts = {n: round(amount * m.numel) for n, m in masks.items()}
        else:
            pool = [m for n, m in masks.items() if n not in overrides]
            counts = global_counts(pool, round(amount * sum(m.numel for m in pool)))
        counts.update({n: round(a * masks[n].numel) for n, a in overrides.items()})
        return counts

    def _plan_structured(self, amount: float | None, threshold: float | None, scope: str,
                         overrides: dict[str, float]) -> dict[str, int]:
        groups = self._prepare_structured()
        roots = {g.root for g in groups}
        bad = [n for n in overrides if n not in roots]
        if bad:
            raise NboptError(f"overrides names {bad[0]!r}, which is not the root of a prunable channel group "
                             f"{self._why_not(bad[0])}; group roots: {', '.join(sorted(roots)[:6])} ...")
        if threshold is not None:
            for g in groups:
                if g.root not in overrides and bool((g.scores < threshold).all()):
                    raise NboptError(f"threshold {threshold} removes every channel of layer {g.root!r} "
                                     f"(its most important channel scores {float(g.scores[-1]):.3g}); use a "
                                     f"lower threshold or exclude the layer (exclude=[{g.root!r}]).")
        return S.plan(groups, amount=amount, threshold=threshold, scope=scope, round_to=self.round_to,
                      overrides=overrides)

    def _why_not(self, name: str) -> str:
        for b in self.blocked:
            if b.root == name:
                return f"({b.reason})"
        return "(it feeds the model output, or its channels are pruned as part of another layer's group)"

    def _prepare_structured(self) -> list[S.ChannelGroup]:
        """Trace the dependency groups and score channels once (on the original weights)."""
        if self._groups is None:
            self.reset()
            with preserved(self.model, eval_mode=True):
                groups, blocked = S.build_groups(self.model, self.example_inputs, set(self._masks), self.criterion)
            groups += H.head_groups(self.model, set(self._masks), self.criterion)
            explicit = [b for b in blocked if self._explicit_layers and b.root in self._explicit_layers]
            if explicit:
                b = explicit[0]
                raise NboptError(f"cannot prune the channels of layer {b.root!r} structurally: {b.reason}, whose "
                                 f"dependants nbopt cannot follow. Exclude it (exclude=[{b.root!r}]) or prune "
                                 "it unstructured (structured=False).")
            if not groups:
                why = "; ".join(f"{b.root}: {b.reason}" for b in blocked[:3])
                raise UnsupportedModelError(
                    "no layer can be pruned structurally (every channel group reaches the output or an unsupported "
                    f"layer{f'; {why}' if why else ''}); prune unstructured (structured=False) instead.")
            self._groups, self.blocked = groups, blocked
        return self._groups

    def _restore(self) -> None:
        """Undo a structured preview (restores only the zeroed channel slices)."""
        if self.structured:
            self._preview.update({})
            self._kept, self.structured = {}, False

    # ------------------------------------------------------------------ results
    @property
    def sparsity(self) -> float:
        """Fraction of prunable weights that are zero now."""
        rep = self.report
        return 1.0 - float(rep["params_after"].sum() - rep["bias"].sum()) / float(rep["weights"].sum())

    @property
    def report(self) -> pd.DataFrame:
        """One row per prunable layer: sparsity, params before/after, dense and effective MACs, channels."""
        macs = self.dense_macs()
        removed = self._preview.counts
        rows = []
        for name, m in self._masks.items():
            w = m.module.weight
            bias = getattr(m.module, "bias", None)
            nb = 0 if bias is None else bias.numel()
            if self.structured:  # from the plan, not from zeros: trained or zero-initialised weights may hold zeros
                o = out_axis(m.module)
                n_out, n_in = w.shape[o], w.shape[1 - o]
                kept = n_out - removed.get((m.module, o), 0)
                nz = round(m.numel * kept / n_out * (n_in - removed.get((m.module, 1 - o), 0)) / n_in)
                nzb = 0 if bias is None else kept
            else:
                nz, nzb, kept = m.numel - max(m.k, 0), nb, out_channels(m.module)
            dense = macs.get(name, float("nan"))
            rows.append({"layer": name, "type": type(m.module).__name__, "weights": m.numel, "bias": nb,
                         "sparsity": (m.numel - nz) / m.numel, "params_before": m.numel + nb, "params_after": nz + nzb,
                         "dense_macs": dense, "effective_macs": dense * nz / m.numel,
                         "channels": out_channels(m.module), "channels_kept": kept})
        return pd.DataFrame(rows).set_index("layer")

    def dense_macs(self) -> dict[str, float]:
        """Per-layer MACs of the unpruned model, from ``nbopt.profile`` (computed once)."""
        if self._dense_macs is None:
            self._dense_macs = layer_macs(self.original, self.example_inputs)
        return self._dense_macs

    def export(self) -> nn.Module:
        """An independent model with the current setting baked in (structured: channels removed).

        The model is run on the example inputs before it is returned: it must return the same output structure,
        types, shapes and dtypes as the original, or an :class:`UnsupportedModelError` names the channel group
        that broke it (nothing half-pruned is returned; your model is untouched either way).
        """
        if not self.structured:
            model = working_copy(self.model)
            self._verify(model, lambda: None)
            return self._cache_back(model)
        kept = dict(self._kept)
        model = self._removed(kept)
        self._verify(model, lambda: self._culprit(kept))
        return self._cache_back(model)

    def _cache_back(self, model: nn.Module) -> nn.Module:
        """Turn ``use_cache`` back on where the original had it (pruning traced the model without a cache)."""
        return graph.cache_back(model, self._cache_modules)

    def _removed(self, kept: dict[str, int], *, explain: bool = True) -> nn.Module:
        """A fresh copy of the original with the channels of ``kept`` removed (``explain``: name the culprit
        group when the removal itself fails)."""
        with preserved(self.original):
            model = working_copy(self.original)
        graph.cache_off(model)
        groups = self._groups or []
        with preserved(model, eval_mode=True):
            try:
                S.remove_channels(model, self.example_inputs, groups, kept, set(self._masks))
                H.remove_heads(model, groups, kept)
            except NboptError:
                raise
            except Exception as exc:  # noqa: BLE001 - surface which model failed and the way out
                root = self._culprit(kept) if explain else None
                where = f" in the group rooted at {root!r}; exclude it (exclude=[{root!r}])" if root else \
                    "; exclude the layer it names"
                raise UnsupportedModelError(f"removing channels failed ({describe_exception(exc)}){where} or prune "
                                            "unstructured (structured=False).") from None
        return model

    def _verify(self, model: nn.Module, culprit: Any) -> None:
        """Raise unless ``model`` runs on the example inputs with the original's output structure and shapes;
        ``culprit()`` names the group to blame (or None)."""
        with preserved(model, eval_mode=True):
            problem = S.check_runs(model, self.example_inputs, self._reference)
        if problem is not None:
            root = culprit()
            blame = (f" Removing the channels of the group rooted at {root!r} alone breaks it; exclude that layer "
                     f"(exclude=[{root!r}])" if root else " Exclude the layers involved (exclude=[...])")
            raise UnsupportedModelError(
                f"the pruned {type(self.original).__name__} is not a drop-in replacement for the original: {problem}."
                f"{blame} or prune unstructured (structured=False). Nothing was returned; your model is unchanged.")

    def _culprit(self, kept: dict[str, int], limit: int = 24) -> str | None:
        """The root of the first group that breaks the model when pruned alone (None if none does, alone)."""
        groups = self._groups or []
        for g in [g for g in groups if kept.get(g.root, g.channels) < g.channels][:limit]:
            alone = {h.root: (kept[h.root] if h is g else h.channels) for h in groups}
            try:
                problem = S.check_runs(self._removed(alone, explain=False).eval(), self.example_inputs,
                                       self._reference)
            except NboptError as exc:
                problem = str(exc)
            if problem is not None:
                return g.root
        return None

    def __repr__(self) -> str:
        s = self.setting
        what = f"threshold={s['threshold']}" if s["threshold"] is not None else f"amount={s['amount']}"
        return (f"Pruner({type(self.original).__name__}, {len(self._masks)} layers, {what}, scope={s['scope']}, "
                f"structured={s['structured']})")


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run small memory-bound tensor ops on one thread: with busy cores, every two-thread op waits a time slice."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_amount(amount: Any, what: str = "amount") -> None:
    """``amount`` must be a number in [0, 1)."""
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 <= amount < 1:
        raise NboptError(f"{what} must be a fraction in [0, 1) (0.5 removes half), got {amount!r}; "
                         "amount=1 would remove everything.")


def out_channels(m: nn.Module) -> int:
    """Output channels (rows) of a Conv/Linear weight."""
    return int(m.weight.shape[out_axis(m)])


def layer_macs(model: nn.Module, example_inputs: Any) -> dict[str, float]:
    """Per-layer MACs counted by the profiler (NaN where it is unavailable)."""
    from ..profiling import profile

    table = profile(model, example_inputs, latency=False).table
    return {str(k): float(v) for k, v in table["macs"].items()}
