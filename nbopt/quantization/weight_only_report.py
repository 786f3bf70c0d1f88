"""Per-layer report of a weight-only program: what each kernel stores, and its error against the fp32 layer.

Nothing inside a kernel is read back: the dequantized weight is what the layer computes on the identity
(``layer(I) - layer(0)``, the bias cancels), so the report measures the program that runs, whatever
packing the kernel uses.
"""
from __future__ import annotations

import math
from typing import Any

import pandas as pd
import torch
from torch import nn

from ..layers import linear_weight_view
from .observers import sqnr_db
from .report import output_sqnr

COLUMNS = ["type", "weight_bits", "group_size", "symmetric", "method", "kernel", "weight_dtype", "params",
           "kernel_bytes", "weight_sqnr_db", "output_sqnr_db"]
PROBE_LIMIT = 2 ** 24  # weights above this many values are not probed (the probe's output is that large)


def _tensor_bytes(module: nn.Module) -> int:
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        inner = getattr(t, "__tensor_flatten__", None)
        if inner is not None and type(t) not in (torch.Tensor, nn.Parameter):  # a torchao tensor subclass
            total += sum(getattr(t, n).numel() * getattr(t, n).element_size() for n in inner()[0])
        else:
            total += t.numel() * t.element_size()
    return total


@torch.no_grad()
def computed_weight(layer: nn.Module, shape: torch.Size) -> torch.Tensor | None:
    """The (out, in) weight ``layer`` computes with: ``layer(I) - layer(0)``; None above :data:`PROBE_LIMIT` values."""
    out_features, in_features = shape
    if out_features * in_features > PROBE_LIMIT:
        return None
    return (layer(torch.eye(in_features)) - layer(torch.zeros(1, in_features))).T.float()


def weight_only_report(reference: nn.Module, program: nn.Module, layers: list[str], *, bits: int,
                       group_size: int | None, symmetric: bool, method: str, kernel: str,
                       weight_dtypes: dict[str, str], example: Any | None) -> pd.DataFrame:
    """One row per quantized linear: its storage, bytes, weight SQNR and (with ``example``) output SQNR vs fp32."""
    out_sqnr = output_sqnr(reference, program, layers, example) if example is not None else {}
    rows = []
    for name in layers:
        fp32, kernel_layer = reference.get_submodule(name), program.get_submodule(name)
        w = linear_weight_view(fp32).detach().float()
        deq = computed_weight(kernel_layer, w.shape)
        rows.append({
            "layer": name, "type": type(fp32).__name__, "weight_bits": bits,
            "group_size": group_size if group_size else math.nan, "symmetric": symmetric, "method": method,
            "kernel": kernel, "weight_dtype": weight_dtypes.get(name, ""), "params": w.numel(),
            "kernel_bytes": _tensor_bytes(kernel_layer),
            "weight_sqnr_db": sqnr_db(w, deq) if deq is not None else math.nan,
            "output_sqnr_db": out_sqnr.get(name, math.nan),
        })
    return pd.DataFrame(rows, columns=["layer"] + COLUMNS).set_index("layer")
