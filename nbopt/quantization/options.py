"""Validated quantization settings shared by quantize(), sensitivity() and qat()."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from torch import nn

from ..errors import NboptError
from ..inputs import check_finite_weights as _check_finite_weights
from ..layers import weighted_layers
from .backends import BUILDERS

GRANULARITIES = ("per_channel", "per_tensor")
OBSERVERS = ("minmax", "percentile", "mse")
MODES = ("simulate", "int8", "dynamic")
BACKENDS = ("auto", *BUILDERS)  # the built-in real int8 backends (register_backend adds more)


def check_bits(bits: int | None, what: str = "weight_bits", allow_none: bool = False) -> None:
    """Bits must be an int in 2..16 (or None for float activations)."""
    if bits is None and allow_none:
        return
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        hint = " or None to keep activations in float" if allow_none else ""
        raise NboptError(f"{what}={bits!r} is not supported: use an integer from 2 to 16{hint}.")


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
        check_bits(self.weight_bits, "weight_bits")
        check_bits(self.act_bits, "act_bits", allow_none=True)
        check_choice(self.granularity, GRANULARITIES, "granularity")
        check_choice(self.observer, OBSERVERS, "observer")
        if not 50.0 < self.percentile <= 100.0:
            raise NboptError(f"percentile={self.percentile} must be in (50, 100], e.g. 99.99.")
        object.__setattr__(self, "layer_bits", dict(self.layer_bits or {}))
        for name, bits in self.layer_bits.items():
            check_bits(bits, f"layer_bits[{name!r}]")

    def with_(self, **changes: Any) -> "QuantOptions":
        """A copy with ``changes`` applied (checked like a new one)."""
        return replace(self, **changes)

    def bits_for(self, name: str) -> int:
        """Weight bits of layer ``name``: its ``layer_bits`` override, else ``weight_bits``."""
        return int(self.layer_bits.get(name, self.weight_bits)) if self.layer_bits else self.weight_bits


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
