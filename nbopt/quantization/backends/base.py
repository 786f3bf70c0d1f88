"""What every real int8 backend returns (:class:`Int8Program`) and the helpers they share."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ...cpu import Int8Settings
from ...errors import InputError, require
from ...inputs import describe_shapes


@dataclass
class Int8Program:
    """What a backend builds: the converted model (called with torch tensors) and what it weighs."""

    backend: str
    model: nn.Module
    dense_bytes: int
    disk_bytes: int
    cpu: str = ""  # the CPU it was quantized for, e.g. "AVX2, no VNNI" (nbopt.cpu.CpuInfo.label)
    settings: str = ""  # the quantizer choice made for that CPU (nbopt.cpu.Int8Settings.label)
    notes: list[str] = field(default_factory=list)  # what the backend changed to build it (e.g. a dtype)

    @property
    def cpu_note(self) -> str:
        """One sentence for the result's notes: the CPU and the int8 choice made for it."""
        return f"CPU {self.cpu}: int8 with {self.settings}." if self.cpu else ""


def for_cpu(program: Int8Program, settings: Int8Settings) -> Int8Program:
    program.cpu, program.settings = settings.cpu.label, settings.label
    return program


def need(module: str) -> None:
    require(module, extra="int8", purpose="the int8 path")


def tensor_bytes(tensors: Any) -> int:
    """Bytes held by ``tensors``."""
    return sum(t.numel() * t.element_size() for t in tensors)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def free_batch(shape: tuple[int, ...]) -> str:
    """``(N, 3, 32, 32)``: a shape with its batch dimension free."""
    return "(N" + "".join(f", {d}" for d in shape[1:]) + ")" if shape else "()"


def check_program_inputs(backend: str, built: list[tuple[tuple[int, ...], torch.dtype]] | None,
                         values: list[torch.Tensor], given: Any, cast_from: torch.dtype | None = None) -> None:
    """Inputs of the shape (dim 0 free) and dtype an int8 program was ``built`` for, else a clear InputError
    (instead of onnxruntime's INVALID_ARGUMENT or a compiled graph's failed guard). ``cast_from``: the float
    dtype the program takes when it was built from a converted (bfloat16/float16) model."""
    if built is None:
        return
    listed = ", ".join(f"{free_batch(s)} {dtype_name(d)}" for s, d in built)
    if len(values) != len(built):
        raise InputError(f"this {backend} int8 program takes {len(built)} tensor input(s) ({listed}); "
                         f"it was given {len(values)}: {describe_shapes(given)}.")
    for i, (v, (shape, dtype)) in enumerate(zip(values, built)):
        wanted = cast_from if cast_from is not None and dtype.is_floating_point else dtype
        if v.dtype != wanted:
            raise InputError(
                f"input {i} is {dtype_name(v.dtype)} but this {backend} int8 program was built for "
                f"{dtype_name(wanted)} ({listed}): pass {dtype_name(wanted)} tensors (x.to({wanted})), or quantize "
                f"again with calibration data of that dtype.")
        if v.dim() != len(shape) or tuple(v.shape[1:]) != tuple(shape[1:]):
            raise InputError(
                f"input {i} has shape {tuple(v.shape)} but this {backend} int8 program was built for "
                f"{free_batch(shape)} (any batch size; the other dims are fixed in the captured graph): "
                f"resize the input to that shape, or quantize again with calibration data of shape "
                f"{free_batch(tuple(v.shape))}.")
