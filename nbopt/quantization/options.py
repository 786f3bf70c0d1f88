"""Validated quantization settings shared by quantize(), sensitivity() and qat()."""
from __future__ import annotations

import difflib
import operator
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import InputError, NboptError
from ..inputs import check_finite_weights as _check_finite_weights
from ..layers import is_linear_like, linear_weight_view, weighted_layers
from .backends import BUILDERS

GROUP_SIZES = (32, 64, 128)
#: weight scales: per output channel, per tensor, or per group of 32/64/128 input values of each output channel
GRANULARITIES = ("per_channel", "per_tensor", *(f"per_group{g}" for g in GROUP_SIZES))
OBSERVERS = ("minmax", "percentile", "mse")
#: simulate: fake quantization at any width; int8 / dynamic: real int8 programs (pt2e, onnxruntime);
#: weight_only: real int8/int4 weight-only linears for language models (:mod:`.weight_only`)
MODES = ("simulate", "int8", "dynamic", "weight_only")
WEIGHT_ONLY_BITS = (4, 8)  # the widths PyTorch's weight-only CPU kernels store
WEIGHT_ONLY_DEFAULT_GROUP = 128  # int4's default group size (as torchao's Int4WeightOnlyConfig)
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


def group_granularity(granularity: str, group_size: int | None) -> str:
    """``granularity`` with a ``group_size`` folded in (``group_size=32`` -> ``"per_group32"``); both given must agree."""
    if group_size is None:
        return granularity
    if group_size not in GROUP_SIZES:
        raise InputError(f"group_size={group_size!r} is not one of {', '.join(map(str, GROUP_SIZES))}; pick one of "
                         "those (or group_size=None for one scale per output channel).")
    if granularity not in ("per_channel", f"per_group{group_size}"):
        raise InputError(f"granularity={granularity!r} and group_size={group_size} disagree: give one of them "
                         f"(group_size={group_size} is granularity='per_group{group_size}').")
    return f"per_group{group_size}"


def check_weight_only(model: nn.Module, *, weight_bits: Any, group_size: int | None, method: str,
                      act_bits_given: bool, act_bits: Any, granularity: str, observer: str,
                      layer_bits: Mapping[str, int] | None, symmetric: bool | None, backend: str,
                      calib: Any) -> tuple[int, int | None, str]:
    """Validate ``quantize(mode="weight_only", ...)``; returns (bits, group size or None, kernel).

    Every refusal names the argument and the setting that would run.
    """
    from .weight_only import KERNELS, METHODS

    bits = check_bits(weight_bits, "weight_bits")
    if bits not in WEIGHT_ONLY_BITS:
        raise InputError(f"mode='weight_only' runs PyTorch's int8 and int4 CPU kernels: weight_bits={bits} has no "
                         "kernel; use weight_bits=8 or weight_bits=4 (other widths: mode='simulate', an accuracy "
                         "study that is not faster).")
    if act_bits_given and act_bits is not None:
        raise InputError(f"mode='weight_only' quantizes weights only (activations run in bfloat16 inside the "
                         f"kernels), so act_bits={act_bits} cannot apply: pass act_bits=None (or leave it out); "
                         "for int8 activations use mode='dynamic' or mode='int8'.")
    if layer_bits:
        raise InputError("layer_bits (mixed precision) is simulate-only; with mode='weight_only' every linear gets "
                         "weight_bits: leave layer_bits out, or use mode='simulate'.")
    if observer != "minmax":
        raise InputError(f"observer={observer!r} picks simulated ranges; mode='weight_only' takes min/max ranges "
                         "(method='rtn') or error-compensating codes (method='gptq'): use observer='minmax' (the default).")
    if method not in METHODS:
        raise InputError(f"method={method!r} is not one of {', '.join(map(repr, METHODS))}: 'rtn' rounds to nearest, "
                         "'gptq' compensates rounding errors (needs calib).")
    if granularity == "per_tensor":
        raise InputError("granularity='per_tensor' has no weight-only kernel: use group_size=None (per channel, "
                         "int8) or group_size=32/64/128 (int4), or mode='simulate'.")
    group_size = group_size_of(group_granularity(granularity, group_size))
    if bits == 8 and group_size is not None:
        raise InputError(f"the int8 weight-only kernel keeps one scale per output channel: group_size={group_size} "
                         "needs weight_bits=4 (or group_size=None for int8; group-wise 8-bit: mode='simulate').")
    if bits == 8 and symmetric is False:
        raise InputError("the int8 weight-only kernel is symmetric (zero point 0): asymmetric weights need "
                         "weight_bits=4 (asymmetric by default), or keep int8 symmetric.")
    if bits == 4 and group_size is None:
        group_size = WEIGHT_ONLY_DEFAULT_GROUP
    kernel = backend
    if kernel not in KERNELS:
        raise InputError(f"backend={backend!r} is an int8 runtime; mode='weight_only' takes backend='auto' (times the "
                         f"aten and onnxruntime kernels, keeps the faster) or "
                         f"{' or '.join(f'backend={k!r}' for k in KERNELS if k != 'auto')}.")
    if kernel == "torchao" and (bits != 8 or method != "rtn"):
        raise InputError("backend='torchao' runs 8-bit round-to-nearest weights only; use backend='auto', 'aten' or "
                         "'onnxruntime' for weight_bits=4 or method='gptq'.")
    if method == "gptq" and calib is None:
        raise InputError("method='gptq' needs calibration data: pass calib=... (a few batches of input ids, e.g. "
                         "nbopt.demo.lm.calibration_data()), or use method='rtn', which needs none.")
    _check_linear_layers(model, group_size)
    return bits, group_size, kernel


def _check_linear_layers(model: nn.Module, group_size: int | None) -> None:
    """There are linear layers, and ``group_size`` divides every one's in_features."""
    linears = {n: m for n, m in model.named_modules() if n and is_linear_like(m)}
    if not linears:
        raise InputError(f"mode='weight_only' quantizes linear layers and the model ({type(model).__name__}) has "
                         "none; use mode='simulate', 'int8' or 'dynamic' for convolutions.")
    if group_size is None:
        return
    ins = {n: int(linear_weight_view(m).shape[1]) for n, m in linears.items()}
    bad = {n: k for n, k in ins.items() if k % group_size}
    if bad:
        fits = [g for g in GROUP_SIZES if all(k % g == 0 for k in ins.values())]
        fix = (f"use group_size={fits[-1]}" if fits else "no group size 32/64/128 divides them all: use "
               "weight_bits=8 (per channel) or mode='simulate'")
        shown = ", ".join(f"{n} ({k})" for n, k in list(bad.items())[:3]) + (" ..." if len(bad) > 3 else "")
        raise InputError(f"group_size={group_size} does not divide in_features of {len(bad)} linear layer(s): "
                         f"{shown}; {fix}.")
