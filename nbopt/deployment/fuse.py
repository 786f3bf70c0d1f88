"""Graph preparation for deployment: fold BatchNorm into the layer before it, drop training-only modules."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from ..inputs import call, channels_last, check_device, check_module, check_not_meta, tensors_in
from ..layers import drop_training_only, fold_batchnorm
from ..model_state import working_copy
from ..timing import Ratio, compare_pair



@dataclass
class FuseResult:
    """The fused model and what was done to it."""

    model: nn.Module
    fused: list[tuple[str, str]] = field(default_factory=list)   # (conv/linear, batchnorm) pairs folded
    removed: list[str] = field(default_factory=list)             # training-only modules replaced by Identity
    max_abs_diff: float = float("nan")                            # fused vs original on the example inputs
    method: str = "fx"                                            # how pairs were found: "fx" or "sequential"
    channels_last: bool = False
    latency_ms: dict[str, float] = field(default_factory=dict)   # measured when channels_last was asked
    # from the same interleaved timing: "contiguous"/"channels_last" -> Timing.summary()
    latency: dict[str, dict[str, float]] = field(default_factory=dict)
    channels_last_speedup: Ratio | None = None  # contiguous / channels_last latency, with its per-round quartiles
    noisy: bool = False                          # that timing was noisy: the ratio is not a finding
    notes: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        lat = ""
        for k, v in self.latency_ms.items():
            t = self.latency.get(k)
            lat += f", {k}={v:.3f} ms" + (f" (IQR {t['q1_ms']:.3g}-{t['q3_ms']:.3g}, n={t['n']})" if t else "")
        if self.channels_last_speedup is not None:
            lat += f", channels_last speedup {self.channels_last_speedup.describe()}"
            lat += ", NOISY" if self.noisy else ""
        notes = "".join(f"\n{n}" for n in self.notes)
        return (f"FuseResult(fused={len(self.fused)} pairs, removed={len(self.removed)}, "
                f"max_abs_diff={self.max_abs_diff:.2e}, method={self.method!r}{lat}){notes}")


def max_abs_diff(a: Any, b: Any) -> float:
    """Largest absolute difference between two (nested) outputs of the same structure."""
    ta, tb = list(tensors_in(a)), list(tensors_in(b))
    if len(ta) != len(tb):
        return float("inf")
    diffs = [(x.detach().float() - y.detach().float()).abs().max().item() for x, y in zip(ta, tb) if x.numel()]
    return max(diffs, default=0.0)


def to_channels_last(model: nn.Module, inputs: Any) -> Any:
    """Move ``model`` (in place) and 4-D ``inputs`` to NHWC memory format; returns the converted inputs."""
    model.to(memory_format=torch.channels_last)
    return channels_last(inputs)


def fuse(model: nn.Module, example_inputs: Any, *, channels_last: bool = False,
         measure: bool = True, repeat: int = 20) -> FuseResult:
    """Fold BatchNorm into the preceding conv/linear and remove Dropout, on a copy of ``model``.

    Pairs are found on a ``torch.fx`` trace (a BN is folded only when it is the sole consumer of the
    layer's output); models that cannot be traced fall back to adjacent layers inside ``nn.Sequential``.
    ``channels_last=True`` also converts the copy to NHWC and (``measure=True``) times both layouts,
    in one interleaved timing (``result.latency_ms`` medians, ``result.latency`` quartiles and calls,
    ``result.channels_last_speedup`` their ratio with its spread, ``result.noisy``). Conv+ReLU fusion is left to the runtimes (onnxruntime, XNNPACK) that do it.
    """
    check_module(model)
    check_not_meta(model, "fuse")
    check_device(model, example_inputs)
    fused_model = working_copy(model).eval()
    with torch.no_grad():
        reference = call(fused_model, example_inputs)
        pairs, method = fold_batchnorm(fused_model)
        removed = drop_training_only(fused_model)
        result = FuseResult(fused_model, pairs, removed, method=method)
        result.max_abs_diff = max_abs_diff(reference, call(fused_model, example_inputs))
        if channels_last:
            contiguous = working_copy(fused_model) if measure else None
            nhwc_inputs = to_channels_last(fused_model, example_inputs)
            result.channels_last = True
            if measure:
                pair = compare_pair(lambda: call(contiguous, example_inputs),
                                    lambda: call(fused_model, nhwc_inputs), names=("contiguous", "channels_last"),
                                    repeat=repeat)
                result.latency_ms = {k: t.median_ms for k, t in pair.timings.items()}
                result.latency, result.channels_last_speedup = pair.summaries(), pair.speedup
                result.noisy = pair.noisy
                note = pair.note("channels_last speedup")
                if note:
                    result.notes.append(note)
    return result
