"""QuantTuner: re-quantize one prepared copy in place when only the settings change (interactive tuning).

:func:`nbopt.quantize` copies the model, folds BatchNorm, calibrates and measures fp32 again on every call.
A tuner does the setting-independent work once (copies, BN folding, fp32 weights, fp32 outputs and
accuracy) and caches what calibration observed for each weight setting, so :meth:`QuantTuner.set` costs a
few forward passes. After ``set(**opts)`` the tuner's model gives exactly the outputs of
``nbopt.quantize(model, calib, mode="simulate", **opts).model``.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import pandas as pd
import torch
from torch import nn

from ..errors import NboptError
from ..inputs import check_finite, check_module, check_not_meta
from ..layers import eval_folded, weighted_layers
from ..model_state import disk_bytes, size_bytes, working_copy
from .calibration import first_input, run_batches
from .metrics import fidelity
from .observers import QParams
from .options import QuantOptions, check_layer_names
from .report import layer_report
from .simulate import act_quantizers, attach
from .sizes import deployable_bytes, fp32_sizes

CACHE_SIZE = 32  # weight settings whose calibration observations are kept


@dataclass
class TuneResult:
    """What :meth:`QuantTuner.set` returns: the numbers of ``nbopt.quantize`` without the model copy or timing."""

    options: dict[str, Any]
    report: pd.DataFrame
    size_bytes: dict[str, dict[str, int]]
    fidelity: dict[str, float]
    accuracy: dict[str, float] | None = None
    notes: list[str] = field(default_factory=list)
    label = "simulated (fake quantization, float32 compute)"


class QuantTuner:
    """Simulated quantization of a copy of ``model`` that :meth:`set` re-quantizes in place.

    >>> tuner = QuantTuner(model, demo.calibration_data(), evaluate=demo.evaluate)
    >>> tuner.set(weight_bits=4, act_bits=8).accuracy    # same numbers as nbopt.quantize(..., mode="simulate")
    >>> tuner.model                                      # the live simulated model (changes on the next set)

    ``observer`` and ``percentile`` are fixed per tuner; the user's model is never modified.
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
        self.options: QuantOptions | None = None

    def set(self, *, weight_bits: int = 8, act_bits: int | None = 8, granularity: str = "per_channel",
            symmetric: bool = True, layer_bits: Mapping[str, int] | None = None) -> TuneResult:
        """Re-quantize the tuner's model for these options (``nbopt.quantize``'s meanings) and measure it."""
        opts = self.base.with_(weight_bits=weight_bits, act_bits=act_bits, granularity=granularity,
                               symmetric=symmetric, layer_bits=layer_bits)
        check_layer_names(self.reference, opts.layer_bits)
        qparams = self._quantize_weights(opts)
        self._quantize_activations(opts)
        self.options = opts
        return self._measure(opts, qparams)

    def _quantize_weights(self, opts: QuantOptions) -> dict[str, QParams | None]:
        """Round the kept fp32 weights to ``opts`` (what quantize's ``attach`` does to a fresh copy)."""
        with torch.no_grad():
            for name, layer in self._layers.items():
                layer.weight.copy_(self._fp32[name])
        return attach(self.model, opts.with_(act_bits=None))

    def _weight_key(self, opts: QuantOptions) -> tuple:
        return (opts.granularity, opts.symmetric) + tuple(opts.bits_for(n) for n in self._layers)

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
                                                              per_channel=opts.granularity == "per_channel")}}
        q_out = run_batches(self.model, self.calib, progress=self.progress, desc="quantized outputs")
        accuracy = None
        if self.evaluate is not None:
            accuracy = {"fp32": self._fp32_accuracy, "quantized": float(self.evaluate(self.model))}
        fid = fidelity(self._ref_out, q_out)
        note = fid.pop("note", None)  # batches left out (empty outputs); the numbers stay floats
        return TuneResult(options=opts.__dict__.copy(),
                          report=layer_report(self.folded, self.model, qparams, opts, self.example),
                          size_bytes=sizes, fidelity=fid, accuracy=accuracy, notes=[note] if note else [])


__all__ = ["QuantTuner", "TuneResult"]
