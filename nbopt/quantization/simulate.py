"""Simulated ("fake") quantization at any bit width: weight and activation quantizers.

A simulated model computes in float32 with values rounded to the quantization grid: it predicts the
accuracy of a quantized deployment but is *not* faster or smaller in memory.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..layers import out_axis, weighted_layers
from .calibration import run_batches
from .observers import QParams, compute_qparams, fake_quant, groupwise_qparams
from .options import QuantOptions

ACT_SAMPLES = 2 ** 16  # values kept per batch for percentile/MSE activation observers


class ActQuant(nn.Module):
    """Observes a layer's input during calibration, then fake-quantizes it per tensor."""

    def __init__(self, bits: int, symmetric: bool, observer: str, percentile: float):
        super().__init__()
        self.bits, self.symmetric, self.observer, self.percentile = bits, symmetric, observer, percentile
        self.observing = True
        self.samples: list[torch.Tensor] = []
        self.qparams: QParams | None = None

    def observe(self, x: torch.Tensor) -> None:
        flat = x.detach().float().reshape(-1)
        if self.observer == "minmax":
            flat = torch.stack([flat.min(), flat.max()])
        elif flat.numel() > ACT_SAMPLES:
            flat = torch.cat([flat.min().view(1), flat.max().view(1), flat[:: flat.numel() // ACT_SAMPLES + 1]])
        self.samples.append(flat)

    def freeze(self) -> None:
        """Turn the observed values into scale/zero point and stop observing."""
        if self.samples:
            values = torch.cat(self.samples)
            self.qparams = compute_qparams(values, self.bits, symmetric=self.symmetric, axis=None,
                                           observer=self.observer, percentile=self.percentile)
        self.samples, self.observing = [], False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.observe(x)
            return x
        return x if self.qparams is None else fake_quant(x, self.qparams)


def _act_hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (module.input_quant(args[0]),) + tuple(args[1:])


class WeightFakeQuant(nn.Module):
    """Parametrization: the weight seen by forward is re-quantized from the float weight (QAT, STE)."""

    def __init__(self, bits: int, options: QuantOptions, channel_axis: int = 0):
        super().__init__()
        self.bits, self.options, self.channel_axis = bits, options, channel_axis

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return fake_quant(w, weight_qparams(w, self.bits, self.options, self.channel_axis))


def weight_qparams(w: torch.Tensor, bits: int, options: QuantOptions, channel_axis: int = 0) -> QParams:
    """Weight scales of ``w``: one per output channel (``channel_axis``: 0, or 1 for a transposed linear such as
    transformers' ``Conv1D``, see :func:`nbopt.layers.out_axis`), one per tensor, or one per group of input values
    (``per_groupN``, min/max)."""
    if options.group_size:
        return groupwise_qparams(w, bits, options.group_size, symmetric=options.symmetric, axis=channel_axis)
    axis = channel_axis if options.granularity == "per_channel" else None
    return compute_qparams(w, bits, symmetric=options.symmetric, axis=axis, observer=options.observer,
                           percentile=options.percentile)


def layer_qparams(layer: nn.Module, bits: int, options: QuantOptions) -> QParams:
    """:func:`weight_qparams` of ``layer``'s weight, per output channel of its layout."""
    return weight_qparams(layer.weight, bits, options, out_axis(layer))


def attach(model: nn.Module, options: QuantOptions, *, trainable: bool = False) -> dict[str, QParams | None]:
    """Quantize every Conv/linear-like weight of ``model`` (in place) and add input quantizers.

    ``trainable=False`` bakes the rounded weights in; ``True`` adds a parametrization so training updates
    the float weights through straight-through gradients. Returns the weight qparams by layer name.
    """
    qparams = {}
    for name, layer in weighted_layers(model).items():
        bits = options.bits_for(name)
        if trainable:
            parametrize.register_parametrization(layer, "weight", WeightFakeQuant(bits, options, out_axis(layer)))
            qparams[name] = None
        else:
            qp = layer_qparams(layer, bits, options)
            with torch.no_grad():
                layer.weight.copy_(fake_quant(layer.weight, qp))
            qparams[name] = qp
        if options.act_bits is not None:
            layer.input_quant = ActQuant(options.act_bits, False, options.observer,  # asymmetric, as int8 runtimes do
                                         options.percentile)
            layer.register_forward_pre_hook(_act_hook)
    return qparams


def act_quantizers(model: nn.Module) -> list[ActQuant]:
    return [m for m in model.modules() if isinstance(m, ActQuant)]


def calibrate(model: nn.Module, calib: Any, *, progress: bool = True) -> None:
    """Observe activation ranges on ``calib`` and freeze the activation quantizers."""
    quants = act_quantizers(model)
    if not quants:
        return
    for q in quants:
        q.observing, q.samples = True, []
    run_batches(model, calib, progress=progress, desc="calibrating activations")
    for q in quants:
        q.freeze()


def bake(model: nn.Module) -> dict[str, QParams]:
    """Replace QAT parametrizations by the final rounded weights; returns their qparams."""
    out = {}
    for name, layer in weighted_layers(model).items():
        if parametrize.is_parametrized(layer, "weight"):
            fq = layer.parametrizations.weight[0]
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
            qp = weight_qparams(layer.weight, fq.bits, fq.options, fq.channel_axis)
            with torch.no_grad():
                layer.weight.copy_(fake_quant(layer.weight, qp))
            out[name] = qp
    return out
