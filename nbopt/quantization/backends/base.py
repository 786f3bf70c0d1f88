"""What every real int8 backend returns (:class:`Int8Program`) and the helpers they share."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ...cpu import Int8Settings
from ...errors import require


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
