"""Per-layer sensitivity: each Conv/Linear weight quantized alone at each bit width, metric drop per cell.

Without ``evaluate`` the metric is measured on ``calib`` against the fp32 outputs, and the fp32 activations
are cached (:mod:`.activation_cache`): a layer's trial re-runs only the part of the (torch.fx traced)
network that depends on that layer, all bit widths of the layer in one batch. ``method="naive"`` copies
the model and re-runs all of it per trial (same numbers; the reference for tests and benchmarks).
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import InputError, NboptError, PartialResultWarning, check_on_interrupt
from ..inputs import call, check_module, check_not_meta
from ..layers import eval_folded, skipped_layers, warn_skipped, weighted_layers
from ..model_state import working_copy
from .activation_cache import ActivationCache, trace
from .calibration import EMPTY_CALIBRATION, calibration_inputs
from .metrics import fidelity, lower_is_better, score_name
from .observers import fake_quant
from .options import LAYER_KINDS, QuantOptions, check_bits, check_finite_weights, group_granularity
from .simulate import layer_qparams

Trial = Callable[[str, list[torch.Tensor]], list[dict[str, float]]]


TOP1, COSINE = "1 - top-1 agreement with fp32", "1 - cosine similarity with fp32"


def _metrics(ref: list[Any], out: list[Any]) -> dict[str, Any]:
    """The drop (1 - top-1 agreement, per sample/position/token as :func:`fidelity` decides; 1 - cosine when the
    output has no class dimension), the output SQNR, which drop it is, and for sequence logits (N, T, V) the KL
    divergence of the next-token distributions (``kl``, nats)."""
    f = fidelity(ref, out)
    top1 = "top1_agreement" in f
    cell = {"drop": 1.0 - f["top1_agreement" if top1 else "cosine"], "sqnr": f["sqnr_db"],
            "metric": TOP1 if top1 else COSINE}
    if "kl_div" in f:
        cell["kl"] = f["kl_div"]
    return cell


def _bit_list(bits: Iterable[int] | int) -> list[int]:
    """The distinct bit widths, widest first: one integer or an iterable of them, each 2-16, at least one.

    Nothing is rounded or parsed: ``3.5``, ``"8"`` or ``True`` is an error, as :func:`check_bits` says.
    """
    if isinstance(bits, (str, bytes, float, bool)) or not isinstance(bits, Iterable) \
            or getattr(bits, "ndim", None) == 0:
        items = [bits]
    else:
        items = list(bits)
    if not items:
        raise NboptError(f"bits={bits!r} is empty: give at least one weight bit width from 2 to 16, "
                         "e.g. bits=(8, 6, 4).")
    return sorted({check_bits(b, "bits") for b in items}, reverse=True)


def sensitivity(model: nn.Module, calib: Any, evaluate: Callable[[nn.Module], float] | None = None,
                bits: Iterable[int] = (8, 6, 4), *, granularity: str = "per_channel", group_size: int | None = None,
                symmetric: bool = True, observer: str = "minmax", method: str = "cached", progress: bool = True,
                on_interrupt: str = "return") -> pd.DataFrame:
    """DataFrame, one row per Conv/linear-like layer (``nn.Linear``, transformers' ``Conv1D``): ``drop_{b}bit`` (metric
    drop) and ``sqnr_{b}bit`` (dB); for a language model (logits (N, T, V)) also ``kl_{b}bit``.

    Weights only (activations stay float), one layer at a time. ``evaluate(model) -> accuracy`` makes the
    drop an accuracy drop; otherwise it is 1 - top-1 agreement with fp32 on ``calib``, measured where the
    model makes its predictions (see :func:`nbopt.quantization.metrics.fidelity`): per sample for (N, C)
    classifier outputs, per pixel for (N, C, H, W, ...) maps (argmax over dim 1), per token for (N, T, V)
    sequence logits (argmax over the last dim); 1 - cosine similarity for outputs without a class dimension.
    ``df.attrs["metric"]`` says which. ``sqnr`` is the output SQNR vs fp32. For sequence logits ``kl`` is the mean
    KL(fp32 || quantized) of the next-token distributions (nats), smooth where token agreement ties. An
    ``evaluate`` whose score is lower-is-better (a perplexity or loss, by its name:
    :func:`nbopt.quantization.metrics.lower_is_better`, e.g. ``nbopt.demo.lm.perplexity``) makes the drop the
    increase of that score. Plot it with
    ``nbopt.display.figures.plot_sensitivity(df)``; feed it to :func:`nbopt.mixed_precision`.

    Args:
        model: the float model (BatchNorm is folded into a copy first).
        calib: the batches the trials run on (tensor, DataLoader or iterable of batches).
        evaluate: ``evaluate(model) -> accuracy``; makes the drop an accuracy drop (no caching then).
        bits: the weight bit widths to try (each 2-16).
        granularity: "per_channel", "per_tensor" or "per_group32/64/128" weight scales, as in
            :func:`nbopt.quantize`.
        group_size: 32, 64 or 128: the same as ``granularity="per_group{N}"``.
        symmetric: symmetric weight grid (zero point 0).
        observer: "minmax", "percentile" or "mse" weight ranges.
        method: "cached" (re-run only what depends on the layer) or "naive" (whole model per trial).
        progress: show a progress bar.
        on_interrupt: "return" (the finished layers, see below) or "raise".

    Interrupting the sweep (Ctrl-C, the notebook's stop button) with ``on_interrupt="return"`` (default),
    once at least one layer is done, returns the finished layers with ``df.attrs["partial"] = True`` and a
    :class:`PartialResultWarning`; before the first layer finishes, or with ``on_interrupt="raise"``, the
    KeyboardInterrupt propagates. Layers holding weights that are not measured (embeddings, custom layers) are
    listed in ``df.attrs["skipped"]`` (name -> type and parameters) with a ``SkippedLayerWarning``. The model is
    never modified.
    """
    check_module(model)
    check_not_meta(model, "sensitivity")
    bits = _bit_list(bits)
    if method not in ("cached", "naive"):
        raise NboptError(f"method={method!r} must be 'cached' or 'naive'.")
    check_on_interrupt(on_interrupt)
    granularity = group_granularity(granularity, group_size)
    opts = QuantOptions(granularity=granularity, symmetric=symmetric, observer=observer, act_bits=None)
    check_finite_weights(model)
    if not weighted_layers(model):
        raise InputError(
            f"sensitivity has no layer to measure: the model ({type(model).__name__}) has no {LAYER_KINDS} "
            "module, and those are the layers nbopt quantizes one at a time (weights held as parameters and "
            "used through functional calls such as F.conv2d are not seen). For the whole model's int8 "
            "fidelity, use quantize(model, calib, mode='dynamic') or mode='int8', which quantize the "
            "captured graph, functional ops included.")
    inputs = list(calibration_inputs(calib))
    if not inputs:
        raise NboptError(EMPTY_CALIBRATION)
    folded = eval_folded(working_copy(model))
    layers = weighted_layers(folded)
    trial, used, batched, layout = _trial_runner(folded, inputs, evaluate, method, list(layers), len(bits))
    kinds: set[str] = set()
    rows = _sweep(layers, bits, opts, trial, progress, on_interrupt == "raise", kinds)
    df = pd.DataFrame(rows).set_index("layer") if rows else pd.DataFrame()
    df.attrs.update(bits=bits, metric=_score_drop(evaluate) if evaluate else " / ".join(sorted(kinds)) or TOP1,
                    method=used, batched=batched, layout=layout,
                    options=dict(granularity=granularity, symmetric=symmetric, observer=observer),
                    partial=len(rows) < len(layers), layers_total=len(layers), skipped=skipped_layers(folded))
    warn_skipped(df.attrs["skipped"], "sensitivity", stacklevel=3)
    return df


def _sweep(layers: dict[str, nn.Module], bits: list[int], opts: QuantOptions, trial: Trial,
           progress: bool, reraise: bool, kinds: set[str]) -> list[dict[str, Any]]:
    """One row per layer; an interrupt after the first row ends the sweep early with a warning."""
    rows: list[dict[str, Any]] = []
    try:
        for name in tqdm(layers, desc="sensitivity", disable=not progress, leave=False):
            w = layers[name].weight.detach()
            cells = trial(name, [fake_quant(w, layer_qparams(layers[name], b, opts)) for b in bits])
            row = {"layer": name, "type": type(layers[name]).__name__, "params": w.numel()}
            for b, cell in zip(bits, cells):
                row[f"drop_{b}bit"], row[f"sqnr_{b}bit"] = cell["drop"], cell["sqnr"]
                if "kl" in cell:
                    row[f"kl_{b}bit"] = cell["kl"]
                if "metric" in cell:
                    kinds.add(cell["metric"])
            rows.append(row)
    except KeyboardInterrupt:
        if reraise or not rows:
            raise
        warnings.warn(f"sensitivity interrupted after {len(rows)} of {len(layers)} layers; returning partial "
                      "results (df.attrs['partial'] is True).", PartialResultWarning, stacklevel=3)
    return rows


def _set_weight(model: nn.Module, name: str, w: torch.Tensor) -> None:
    model.get_submodule(name).weight.data = w


def _trial_runner(folded: nn.Module, inputs: list[Any], evaluate: Callable | None, method: str,
                  names: list[str], variants: int) -> tuple[Trial, str, bool, str]:
    """A function (layer, quantized weights per bit width) -> metrics per bit width; method used; bits batched?;
    memory layout the trials ran in."""
    if evaluate is not None:
        return _evaluate_trial(folded, evaluate), "evaluate (black box: no caching)", False, "contiguous"
    if method == "cached":
        try:
            cache = ActivationCache(trace(folded, inputs[0]), inputs, names, variants)
        except Exception:  # noqa: BLE001 - untraceable: fall back to full re-evaluation
            cache = None
        if cache is not None:
            return ((lambda name, ws: [_metrics(cache.outputs, out) for out in cache.trial(name, ws)]), "cached",
                    cache.batching, cache.layout)
    with torch.no_grad():
        ref = [call(folded, x) for x in inputs]
    return _naive_trial(folded, inputs, ref), "naive" if method == "naive" else "naive (not traceable)", False, \
        "contiguous"


def _score_drop(evaluate: Callable) -> str:
    """What an ``evaluate`` drop measures: ``accuracy drop``, or ``perplexity increase`` for lower-is-better."""
    return f"{score_name(evaluate)} increase" if lower_is_better(evaluate) else "accuracy drop"


def _evaluate_trial(folded: nn.Module, evaluate: Callable) -> Trial:
    """Each trial's drop in ``evaluate``'s score (its increase when lower is better, e.g. perplexity)."""
    base, sign = float(evaluate(folded)), (-1.0 if lower_is_better(evaluate) else 1.0)

    def run(name: str, weights: list[torch.Tensor]) -> list[dict[str, float]]:
        layer = folded.get_submodule(name)
        original, out = layer.weight.data, []
        try:
            for w in weights:
                layer.weight.data = w
                out.append({"drop": sign * (base - float(evaluate(folded))), "sqnr": float("nan")})
        finally:
            layer.weight.data = original
        return out
    return run


def _naive_trial(folded: nn.Module, inputs: list[Any], ref: list[Any]) -> Trial:
    """Reference method: per trial, copy the model, quantize one layer, run every batch through all of it."""
    def run(name: str, weights: list[torch.Tensor]) -> list[dict[str, float]]:
        out = []
        for w in weights:
            model = working_copy(folded)
            _set_weight(model, name, w)
            with torch.no_grad():
                out.append(_metrics(ref, [call(model, x) for x in inputs]))
        return out
    return run
