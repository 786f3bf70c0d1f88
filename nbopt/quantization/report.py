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
    """Outputs of the named layers for one forward; every hook is removed even if forward raises."""
    mods = dict(model.named_modules())
    got: dict[str, torch.Tensor] = {}
    handles = [mods[n].register_forward_hook(lambda m, a, o, n=n: got.__setitem__(n, o.detach()))
               for n in names if n in mods]
    try:
        with torch.no_grad():
            call(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return got


def layer_report(fp32: nn.Module, quantized: nn.Module | None, qparams: dict[str, QParams | None],
                 options: QuantOptions, inputs: Any | None, *, real: bool = False) -> pd.DataFrame:
    """One row per quantized layer. ``fp32`` is the (BN-folded) float model the weights came from.

    ``quantized`` is the simulated model, or None for real int8 programs whose internals are not
    observable (output SQNR is then NaN; see the end-to-end fidelity instead).
    """
    layers = weighted_layers(fp32)
    names = [n for n in layers if n in qparams]
    ref_out = layer_outputs(fp32, names, inputs) if inputs is not None and quantized is not None else {}
    q_out = layer_outputs(quantized, names, inputs) if ref_out else {}
    rows = []
    for name in names:
        qp, w = qparams[name], layers[name].weight.detach()
        rows.append({
            "layer": name, "type": type(layers[name]).__name__, "weight_bits": qp.bits,
            "act_bits": options.act_bits, "granularity": qp.granularity, "symmetric": qp.symmetric,
            "observer": options.observer, "scale_min": float(qp.scale.min()), "scale_max": float(qp.scale.max()),
            "weight_sqnr_db": sqnr_db(w, fake_quant(w, qp)),
            "output_sqnr_db": sqnr_db(ref_out[name], q_out[name]) if name in q_out else math.nan,
            "real_int8": real,
        })
    return pd.DataFrame(rows, columns=["layer"] + COLUMNS).set_index("layer")
