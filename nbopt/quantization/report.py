"""Per-layer report: bits, granularity, scale range, weight SQNR and output SQNR vs fp32."""
from __future__ import annotations

import math
from typing import Any

import pandas as pd
import torch
from torch import nn

from ..layers import weighted_layers
from ..inputs import call
from .observers import QParams, fake_quant, sqnr_db
from .options import QuantOptions

COLUMNS = ["type", "weight_bits", "act_bits", "granularity", "symmetric", "observer", "scale_min",
           "scale_max", "weight_sqnr_db", "output_sqnr_db", "real_int8"]


def layer_outputs(model: nn.Module, names: list[str], inputs: Any) -> dict[str, torch.Tensor]:
    """Outputs of the named layers for one forward (a layer called twice: its last output); every hook is
    removed even if forward raises."""
    got: dict[str, torch.Tensor] = {}
    _forward_with_hooks(model, names, inputs, lambda n, o: got.__setitem__(n, o.detach()))
    return got


def _forward_with_hooks(model: nn.Module, names: list[str], inputs: Any, on_output: Any) -> None:
    mods = dict(model.named_modules())
    handles = [mods[n].register_forward_hook(lambda m, a, o, n=n: on_output(n, o)) for n in names if n in mods]
    try:
        with torch.no_grad():
            call(model, inputs)
    finally:
        for h in handles:
            h.remove()


def output_sqnr(fp32: nn.Module, quantized: nn.Module, names: list[str], inputs: Any) -> dict[str, float]:
    """Each named layer's output SQNR (dB) of ``quantized`` against ``fp32`` on ``inputs`` (for a layer called
    several times, its last call). Each fp32 output is freed as soon as its quantized twin is compared, so at
    most one model's layer outputs are held at a time (not both: the report of a big model at a real batch
    size would otherwise hold two copies of every activation)."""
    calls: dict[str, int] = {}
    ref: dict[str, torch.Tensor] = {}

    def keep(n: str, o: torch.Tensor) -> None:
        calls[n] = calls.get(n, 0) + 1
        ref[n] = o.detach()

    _forward_with_hooks(fp32, names, inputs, keep)
    seen: dict[str, int] = {}
    out: dict[str, float] = {}

    def compare(n: str, o: torch.Tensor) -> None:
        seen[n] = seen.get(n, 0) + 1
        if seen[n] == calls.get(n) and n in ref:
            out[n] = sqnr_db(ref.pop(n), o.detach())

    _forward_with_hooks(quantized, names, inputs, compare)
    return out


def layer_report(fp32: nn.Module, quantized: nn.Module | None, qparams: dict[str, QParams | None],
                 options: QuantOptions, inputs: Any | None, *, real: bool = False) -> pd.DataFrame:
    """One row per quantized layer. ``fp32`` is the (BN-folded) float model the weights came from.

    ``quantized`` is the simulated model, or None for real int8 programs whose internals are not
    observable (output SQNR is then NaN; see the end-to-end fidelity instead).
    """
    layers = weighted_layers(fp32)
    names = [n for n in layers if n in qparams]
    out_sqnr = output_sqnr(fp32, quantized, names, inputs) if inputs is not None and quantized is not None else {}
    rows = []
    for name in names:
        qp, w = qparams[name], layers[name].weight.detach()
        rows.append({
            "layer": name, "type": type(layers[name]).__name__, "weight_bits": qp.bits,
            "act_bits": options.act_bits, "granularity": qp.granularity, "symmetric": qp.symmetric,
            "observer": options.observer, "scale_min": float(qp.scale.min()), "scale_max": float(qp.scale.max()),
            "weight_sqnr_db": sqnr_db(w, fake_quant(w, qp)),
            "output_sqnr_db": out_sqnr.get(name, math.nan),
            "real_int8": real,
        })
    return pd.DataFrame(rows, columns=["layer"] + COLUMNS).set_index("layer")
