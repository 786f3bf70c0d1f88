"""Mixed precision: the bit width per layer with the least sensitivity loss under a size budget."""
from __future__ import annotations

import math

import pandas as pd

from ..errors import NboptError


def _cost(sens: pd.DataFrame, layer: str, bits: int) -> float:
    """Loss of quantizing ``layer`` at ``bits``: the measured drop, plus for a language model the KL divergence of
    its next-token distributions (``kl_{b}bit``, nats: smooth where per-token agreement ties), tie-broken by
    output noise (1/SQNR)."""
    drop = float(sens.at[layer, f"drop_{bits}bit"])
    sqnr = sens.at[layer, f"sqnr_{bits}bit"] if f"sqnr_{bits}bit" in sens else math.nan
    noise = 10 ** (-float(sqnr) / 10) if not math.isnan(sqnr) else 0.0
    kl = float(sens.at[layer, f"kl_{bits}bit"]) if f"kl_{bits}bit" in sens else math.nan
    return max(drop, 0.0) + (max(kl, 0.0) if not math.isnan(kl) else 0.0) + 1e-3 * noise


def mixed_precision(sensitivity: pd.DataFrame, *, budget_bytes: float | None = None,
                    avg_bits: float | None = None) -> dict[str, int]:
    """``layer_bits`` for :func:`nbopt.quantize` that fits the weight budget with the least total loss.

    Greedy: start every layer at the widest measured width and repeatedly lower the layer whose next
    step loses the least per byte saved, until the weights fit ``budget_bytes`` (or ``avg_bits`` per
    weight on average).

    Args:
        sensitivity: the DataFrame of :func:`nbopt.sensitivity` (its widths are the choices).
        budget_bytes: the most bytes all quantized weights may take (packed, scales not counted).
        avg_bits: or the average bits per weight (budget = weights x avg_bits / 8); give exactly one.
    """
    if (budget_bytes is None) == (avg_bits is None):
        raise NboptError("give exactly one of budget_bytes=... or avg_bits=... (e.g. avg_bits=6).")
    bits = sorted(sensitivity.attrs.get("bits") or
                  [int(c[5:-3]) for c in sensitivity.columns if c.startswith("drop_")], reverse=True)
    if not bits or "params" not in sensitivity:
        raise NboptError("pass the DataFrame returned by nbopt.sensitivity(model, calib).")
    params = sensitivity["params"].astype(int).to_dict()
    if avg_bits is not None:
        budget_bytes = sum(params.values()) * avg_bits / 8
    floor = sum(params.values()) * bits[-1] / 8
    if budget_bytes < floor:
        raise NboptError(f"budget_bytes={budget_bytes:.0f} is below {floor:.0f}, the size with every layer at "
                         f"{bits[-1]} bits; raise the budget or measure lower widths in sensitivity(bits=...).")
    choice = {layer: 0 for layer in params}  # index into bits
    size = lambda: sum(params[l] * bits[i] / 8 for l, i in choice.items())  # noqa: E731,E741
    while size() > budget_bytes + 1e-9:
        steps = [(( _cost(sensitivity, l, bits[i + 1]) - _cost(sensitivity, l, bits[i]))
                  / (params[l] * (bits[i] - bits[i + 1]) / 8), l)
                 for l, i in choice.items() if i + 1 < len(bits)]  # noqa: E741
        choice[min(steps)[1]] += 1
    return {layer: bits[i] for layer, i in choice.items()}
