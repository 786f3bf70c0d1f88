"""QuantTuner: re-quantize one prepared copy in place when only the settings change (interactive tuning).

:func:`nbopt.quantize` copies the model, folds BatchNorm, calibrates and measures fp32 again on every call.
A tuner does the setting-independent work once (copies, BN folding, fp32 weights, fp32 outputs and
accuracy) and caches what calibration observed for each weight setting, so :meth:`QuantTuner.set` costs a
few forward passes. After ``set(**opts)`` the tuner's model gives exactly the outputs of
``nbopt.quantize(model, calib, mode="simulate", **opts).model``.

``set(method="gptq")`` rounds the linear layers' weights with GPTQ (:mod:`.gptq`: error-compensating, Hessians
from one calibration pass over the fp32 model, per-channel or group-wise scales) instead of round-to-nearest;
the codes of each (layer, bits, grid) are computed once and kept. For a language model (logits (N, T, V)) the
fidelity holds the per-token ``top1_agreement`` and ``kl_div`` of the next-token distributions.

Cost of one :meth:`QuantTuner.set`: rounding the weights, one pass over ``calib`` (the per-layer report is read
from that pass's first batch), ``evaluate`` if given, and, for a new weight setting with ``act_bits``, one more
calibration pass.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import pandas as pd
import torch
from torch import nn

from ..errors import InputError, NboptError
from ..inputs import check_finite, check_module, check_not_meta, tensors_in
from ..layers import eval_folded, is_linear_like, linear_weight_view, out_axis, weighted_layers
from ..model_state import disk_bytes, size_bytes, working_copy
from .calibration import first_input, run_batches
from .metrics import fidelity, lower_is_better, score_name
from .observers import QParams, dequantize_groupwise, sqnr_db
from .options import QuantOptions, check_choice, check_layer_names
from .report import layer_outputs, layer_report
from .simulate import act_quantizers, attach
from .sizes import deployable_bytes, fp32_sizes

CACHE_SIZE = 32  # weight settings whose calibration observations are kept
METHODS = ("rtn", "gptq")  # round to nearest (what nbopt.quantize simulates) or GPTQ's error-compensating rounding
GPTQ_CACHE_BYTES = 256 * 2 ** 20  # GPTQ-rounded weights kept (per layer, bits and grid), oldest dropped first


@dataclass
class TuneResult:
    """What :meth:`QuantTuner.set` returns: the numbers of ``nbopt.quantize`` without the model copy or timing."""

    options: dict[str, Any]
    report: pd.DataFrame
    size_bytes: dict[str, dict[str, int]]
    fidelity: dict[str, float]
    accuracy: dict[str, float] | None = None
    notes: list[str] = field(default_factory=list)
    method: str = "rtn"
    label = "simulated (fake quantization, float32 compute)"

    def __repr__(self) -> str:
        """One line: the setting and its headline numbers (``.report`` has the per-layer table)."""
        o = self.options
        act = "float" if o.get("act_bits") is None else o.get("act_bits")
        fid = ", ".join(f"{k} {v:.4g}" for k, v in self.fidelity.items() if isinstance(v, float))
        acc = "" if not self.accuracy else \
            f", {o.get('evaluate', 'evaluate')} {self.accuracy['quantized']:.4g} (fp32 {self.accuracy['fp32']:.4g})"
        dep = self.size_bytes["quantized"]["deployable"] / 2 ** 20
        return (f"TuneResult(W{o.get('weight_bits')}/A{act} {o.get('granularity')} {self.method}: {fid}{acc}, "
                f"deployable {dep:.2f} MiB, {len(self.report)} layers)")


class QuantTuner:
    """Simulated quantization of a copy of ``model`` that :meth:`set` re-quantizes in place.

    >>> tuner = QuantTuner(model, demo.calibration_data(), evaluate=demo.evaluate)
    >>> tuner.set(weight_bits=4, act_bits=8).accuracy    # same numbers as nbopt.quantize(..., mode="simulate")
    >>> tuner.model                                      # the live simulated model (changes on the next set)

    ``observer`` and ``percentile`` are fixed per tuner (GPTQ uses min/max grids); the user's model is never
    modified.
    """

    def __init__(self, model: nn.Module, calib: Any, *, evaluate: Callable[[nn.Module], float] | None = None,
                 observer: str = "minmax", percentile: float = 99.99, progress: bool = False) -> None:
        check_module(model)
        check_not_meta(model, "QuantTuner")
        if calib is None:
            raise NboptError("QuantTuner needs calibration data (a tensor, DataLoader or list of batches) to fix "
                             "activation ranges, e.g. nbopt.demo.calibration_data()")
        self.base = QuantOptions(observer=observer, percentile=percentile)
        self.calib, self.evaluate, self.progress = calib, evaluate, progress
        self.example = first_input(calib)
        check_finite(self.example, "calibration inputs")
        self.reference = working_copy(model).eval()
        self.folded = eval_folded(working_copy(model))
        self.model = working_copy(self.folded)
        self._layers = weighted_layers(self.model)
        self._fp32 = {n: m.weight.detach().clone() for n, m in self._layers.items()}
        attach(self.model, self.base)  # installs the activation quantizers once (weights restored in set)
        self._quants = act_quantizers(self.model)
        self._ref_out = run_batches(self.reference, calib, progress=progress, desc="fp32 outputs")
        self._fp32_sizes = fp32_sizes(self.reference)
        # a state_dict lists the activation quantizers' (empty) modules: a few bytes more on disk with them
        self._disk = {True: disk_bytes(self.model), False: disk_bytes(self.folded)}
        self._fp32_accuracy = float(evaluate(self.reference)) if evaluate else None
        self._observed: OrderedDict[tuple, list[torch.Tensor]] = OrderedDict()
        self._act_qparams: dict[tuple, list[QParams | None]] = {}
        self._ref_layers = layer_outputs(self.folded, list(self._layers), self.example)  # fp32, for the report
        self._hessians: dict[str, torch.Tensor | None] | None = None
        self._gptq: OrderedDict[tuple, tuple[torch.Tensor, QParams]] = OrderedDict()
        self.options: QuantOptions | None = None
        self.method = "rtn"

    @property
    def language_model(self) -> bool:
        """Whether the model outputs sequence logits (N, T, V): fidelity is then per token, with ``kl_div``."""
        first = next(tensors_in(self._ref_out[0]), None)
        return first is not None and first.dim() == 3 and first.shape[-1] > 1

    @property
    def gptq_supported(self) -> bool:
        """Whether ``method="gptq"`` applies: every quantized layer is linear-like (language models)."""
        return all(is_linear_like(m) for m in self._layers.values())

    def set(self, *, weight_bits: int = 8, act_bits: int | None = 8, granularity: str = "per_channel",
            symmetric: bool = True, layer_bits: Mapping[str, int] | None = None, method: str = "rtn") -> TuneResult:
        """Re-quantize the tuner's model for these options (``nbopt.quantize``'s meanings) and measure it.

        ``method="gptq"`` rounds with GPTQ (linear layers only; per-channel or ``per_groupN`` scales)."""
        opts = self.base.with_(weight_bits=weight_bits, act_bits=act_bits, granularity=granularity,
                               symmetric=symmetric, layer_bits=layer_bits)
        check_layer_names(self.reference, opts.layer_bits)
        self._check_method(method, opts)
        qparams = self._quantize_weights(opts, method)
        self.method = method
        self._quantize_activations(opts)
        self.options = opts
        return self._measure(opts, qparams)

    def _check_method(self, method: str, opts: QuantOptions) -> None:
        check_choice(method, METHODS, "method")
        if method != "gptq":
            return
        if not self.gptq_supported:
            convs = [n for n, m in self._layers.items() if not is_linear_like(m)]
            raise InputError(f"method='gptq' rounds linear layers only, and this model has {len(convs)} conv "
                             f"layers ({', '.join(convs[:3])}{' ...' if len(convs) > 3 else ''}); use method='rtn'.")
        if opts.granularity == "per_tensor":
            raise InputError("method='gptq' needs one scale per output channel or per group: use "
                             "granularity='per_channel' or 'per_group32'/'per_group64'/'per_group128', or "
                             "method='rtn' for per-tensor scales.")

    def _quantize_weights(self, opts: QuantOptions, method: str = "rtn") -> dict[str, QParams | None]:
        """Round the kept fp32 weights to ``opts`` (what quantize's ``attach`` does to a fresh copy), or with GPTQ."""
        with torch.no_grad():
            for name, layer in self._layers.items():
                layer.weight.copy_(self._fp32[name])
        if method == "gptq":
            return self._gptq_weights(opts)
        return attach(self.model, opts.with_(act_bits=None))

    def _gptq_weights(self, opts: QuantOptions) -> dict[str, QParams]:
        """GPTQ-rounded weights for every layer (each (layer, bits, grid) computed once, then cached)."""
        from .gptq import collect_hessians, gptq_quantize

        if self._hessians is None:
            self._hessians = collect_hessians(self.folded, weighted_layers(self.folded), self.calib,
                                              progress=self.progress)
        qparams = {}
        for name, layer in self._layers.items():
            key = (name, opts.bits_for(name), opts.group_size, opts.symmetric)
            if key in self._gptq:
                self._gptq.move_to_end(key)
            else:
                w = linear_weight_view(layer).detach().float()
                H = self._hessians.get(name)
                H = torch.eye(w.shape[1], dtype=torch.float64) if H is None else H
                codes, qp = gptq_quantize(w, H, key[1], opts.group_size, symmetric=opts.symmetric)
                qp.axis = out_axis(layer)  # the grids of the (out, in) view, in the layer's own weight layout
                self._gptq[key] = (dequantize_groupwise(codes, qp), qp)
                self._trim_gptq()
            deq, qparams[name] = self._gptq[key]
            with torch.no_grad():
                linear_weight_view(layer).copy_(deq.to(layer.weight.dtype))
        return qparams

    def _trim_gptq(self) -> None:
        while len(self._gptq) > 1 and sum(w.numel() * 4 for w, _ in self._gptq.values()) > GPTQ_CACHE_BYTES:
            self._gptq.popitem(last=False)

    def _weight_key(self, opts: QuantOptions) -> tuple:
        return (self.method, opts.granularity, opts.symmetric) + tuple(opts.bits_for(n) for n in self._layers)

    def _quantize_activations(self, opts: QuantOptions) -> None:
        """Activation scale/zero point from the observations made with these weights (cached per setting)."""
        if opts.act_bits is None:
            for q in self._quants:
                q.observing, q.qparams = False, None
            return
        key = self._weight_key(opts) + (opts.act_bits,)
        if key not in self._act_qparams:
            observed = self._observations(self._weight_key(opts))
            for q, values in zip(self._quants, observed):
                q.bits, q.qparams = opts.act_bits, None  # a layer that saw no input stays float
                q.samples = [values] if values is not None else []
                q.freeze()
            self._act_qparams[key] = [q.qparams for q in self._quants]
        for q, qp in zip(self._quants, self._act_qparams[key]):
            q.observing, q.qparams = False, qp

    def _observations(self, wkey: tuple) -> list[torch.Tensor | None]:
        """What each activation quantizer saw on ``calib`` with the current weights (observed once per key)."""
        if wkey in self._observed:
            self._observed.move_to_end(wkey)
            return self._observed[wkey]
        for q in self._quants:
            q.observing, q.samples = True, []
        run_batches(self.model, self.calib, progress=self.progress, desc="calibrating activations")
        observed = [torch.cat(q.samples) if q.samples else None for q in self._quants]
        for q in self._quants:
            q.observing, q.samples = False, []
        self._observed[wkey] = observed
        if len(self._observed) > CACHE_SIZE:
            dropped = self._observed.popitem(last=False)[0]
            self._act_qparams = {k: v for k, v in self._act_qparams.items() if k[:-1] != dropped}
        return observed

    def _measure(self, opts: QuantOptions, qparams: dict[str, QParams | None]) -> TuneResult:
        bits = {n: opts.bits_for(n) for n in qparams}
        sizes = {"fp32": dict(self._fp32_sizes),
                 "quantized": {"dense": size_bytes(self.folded), "disk": self._disk[opts.act_bits is not None],
                               "deployable": deployable_bytes(self.folded, bits, symmetric=opts.symmetric,
                                                              per_channel=opts.granularity == "per_channel",
                                                              group_size=opts.group_size)}}
        q_out, q_layers = self._run_capturing()
        accuracy = None
        if self.evaluate is not None:
            accuracy = {"fp32": self._fp32_accuracy, "quantized": float(self.evaluate(self.model))}
        fid = fidelity(self._ref_out, q_out)
        note = fid.pop("note", None)  # batches left out (empty outputs); the numbers stay floats
        options = opts.__dict__.copy()
        if self.evaluate is not None:  # what quantize's options say of the score (accuracy or perplexity)
            options.update(evaluate=score_name(self.evaluate), lower_is_better=lower_is_better(self.evaluate))
        return TuneResult(options=options, report=self._report(opts, qparams, q_layers),
                          size_bytes=sizes, fidelity=fid, accuracy=accuracy, notes=[note] if note else [],
                          method=self.method)

    def _run_capturing(self) -> tuple[list[Any], dict[str, torch.Tensor]]:
        """The quantized outputs on ``calib``, and each layer's output in the first batch (the example input),
        as :func:`~.report.layer_outputs` would record them, without running the example a second time."""
        got: dict[str, torch.Tensor] = {}
        state = {"first": True}

        def keep(name: str):
            def hook(_m: nn.Module, _a: Any, out: Any) -> None:
                if state["first"]:
                    got[name] = out.detach()
            return hook

        def first_done(*_: Any) -> None:
            state["first"] = False

        handles = [m.register_forward_hook(keep(n)) for n, m in self._layers.items()]
        handles.append(self.model.register_forward_hook(first_done))
        try:
            outs = run_batches(self.model, self.calib, progress=self.progress, desc="quantized outputs")
        finally:
            for h in handles:
                h.remove()
        return outs, got

    def _report(self, opts: QuantOptions, qparams: dict[str, QParams | None],
                q_layers: dict[str, torch.Tensor]) -> pd.DataFrame:
        """:func:`~.report.layer_report`'s table; output SQNR from the captured first batch, and for GPTQ the
        weight SQNR of the GPTQ-rounded weights (the report's own would re-round to nearest)."""
        report = layer_report(self.folded, None, qparams, opts, None)
        report["output_sqnr_db"] = [sqnr_db(self._ref_layers[n], q_layers[n]) if n in q_layers and
                                    n in self._ref_layers else math.nan for n in report.index]
        if self.method == "gptq":
            report["weight_sqnr_db"] = [sqnr_db(self._fp32[n], self._layers[n].weight) for n in report.index]
            if opts.group_size is None:
                report["granularity"] = "per_channel"
        return report


__all__ = ["QuantTuner", "TuneResult"]
