"""Validated quantization settings shared by quantize(), sensitivity() and qat()."""
from __future__ import annotations

import difflib
import operator
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import NboptError
from ..inputs import check_finite_weights as _check_finite_weights
from ..layers import weighted_layers
from .backends import BUILDERS

GROUP_SIZES = (32, 64, 128)
#: weight scales: per output channel, per tensor, or per group of 32/64/128 input values of each output channel
GRANULARITIES = ("per_channel", "per_tensor", *(f"per_group{g}" for g in GROUP_SIZES))
OBSERVERS = ("minmax", "percentile", "mse")
MODES = ("simulate", "int8", "dynamic")
LAYER_KINDS = "nn.Conv1d/Conv2d/Conv3d, nn.Linear or linear-like (transformers' Conv1D)"  # layers.weighted_layers
BACKENDS = ("auto", *BUILDERS)  # the built-in real int8 backends (register_backend adds more)


def check_bits(bits: Any, what: str = "weight_bits", allow_none: bool = False) -> int | None:
    """Bits must be an integer in 2..16 (or None for float activations); returns it as a plain ``int``.

    Any integral type is accepted (``int``, a numpy integer, a 0-d integer tensor: whatever
    ``operator.index`` takes); a bool, a float (even ``8.0``), a string (``"8"``) or anything else is an error,
    never rounded or parsed.
    """
    if bits is None and allow_none:
        return None
    value = None
    if not isinstance(bits, (bool, str, bytes)) and type(bits).__name__ != "bool_" \
            and not (isinstance(bits, torch.Tensor) and bits.dim() != 0):
        try:
            value = operator.index(bits)
        except TypeError:
            value = None
    if value is None or not 2 <= value <= 16:
        hint = " or None to keep activations in float" if allow_none else ""
        kind = "" if value is not None or isinstance(bits, (int, float)) else f" (got {type(bits).__name__})"
        raise NboptError(f"{what}={bits!r} is not supported: use an integer from 2 to 16{hint}{kind}.")
    return int(value)


def check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    """``value`` must be one of ``choices``; the error lists them."""
    if value not in choices:
        raise NboptError(f"{what}={value!r} is not one of {', '.join(map(repr, choices))}; pick one of those.")


@dataclass(frozen=True)
class QuantOptions:
    """How to quantize: bit widths, granularity, symmetry, observer, per-layer overrides.

    Checked on construction, so ``QuantOptions(...)`` and :meth:`with_` only ever hold valid settings;
    ``layer_bits`` is kept as a plain dict (``None`` means no overrides).
    """

    weight_bits: int = 8
    act_bits: int | None = 8
    granularity: str = "per_channel"
    symmetric: bool = True
    observer: str = "minmax"
    layer_bits: Mapping[str, int] = field(default_factory=dict)
    percentile: float = 99.99

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight_bits", check_bits(self.weight_bits, "weight_bits"))
        object.__setattr__(self, "act_bits", check_bits(self.act_bits, "act_bits", allow_none=True))
        check_choice(self.granularity, GRANULARITIES, "granularity")
        check_choice(self.observer, OBSERVERS, "observer")
        if not 50.0 < self.percentile <= 100.0:
            raise NboptError(f"percentile={self.percentile} must be in (50, 100], e.g. 99.99.")
        object.__setattr__(self, "layer_bits", {name: check_bits(bits, f"layer_bits[{name!r}]")
                                                for name, bits in dict(self.layer_bits or {}).items()})

    def with_(self, **changes: Any) -> "QuantOptions":
        """A copy with ``changes`` applied (checked like a new one)."""
        return replace(self, **changes)

    @property
    def group_size(self) -> int | None:
        """Input values per weight scale for ``granularity="per_groupN"``, else None."""
        return group_size_of(self.granularity)

    def bits_for(self, name: str) -> int:
        """Weight bits of layer ``name``: its ``layer_bits`` override, else ``weight_bits``."""
        return int(self.layer_bits.get(name, self.weight_bits)) if self.layer_bits else self.weight_bits


def group_size_of(granularity: str) -> int | None:
    """``"per_group128"`` -> 128; None for per-channel / per-tensor."""
    return int(granularity[len("per_group"):]) if granularity.startswith("per_group") else None


def check_layer_names(model: nn.Module, names: Mapping[str, int] | None, what: str = "layer_bits") -> None:
    """Every name must be a quantizable layer of ``model``; suggest the closest ones otherwise."""
    layers = weighted_layers(model)
    for name in names or {}:
        if name not in layers:
            close = difflib.get_close_matches(name, list(layers), n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else \
                f" Quantizable layers: {', '.join(list(layers)[:8])}{' ...' if len(layers) > 8 else ''}."
            raise NboptError(f"{what} names {name!r}, which is not a Conv/Linear layer of the model.{hint}")


def check_finite_weights(model: nn.Module) -> None:
    """Raise naming the first parameter or buffer that holds NaN or Inf (scales would be meaningless)."""
    _check_finite_weights(model, "no quantization scale can represent it")
