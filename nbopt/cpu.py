"""The CPU's instruction set, detected once, and the int8 settings that stay accurate on it.

x86 int8 kernels multiply u8 activations by s8 weights. With VNNI (``avx512_vnni``, ``avx_vnni``) or
AMX (``amx_int8``) the products accumulate in 32 bits in one instruction. Without it (AVX2-only CPUs,
AVX-512 before Cascade Lake) kernels use ``vpmaddubsw``, whose 16-bit intermediate sums two u8 x s8
products and saturates at 32767: large activations times large weights come out clipped. onnxruntime,
oneDNN and torchao document the same fix for such CPUs: ``reduce_range`` (7-bit activations in
[0, 127]), so that two products never exceed 2 * 127 * 128 < 32767.

``NBOPT_CPU_VNNI=0`` / ``=1`` (or ``cpu_info(vnni=...)``) overrides the detection, e.g. to exercise both
branches on any machine.
"""
from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass

#: /proc/cpuinfo flags that give 32-bit int8 dot products (no 16-bit saturation)
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
ENV = "NBOPT_CPU_VNNI"


@dataclass(frozen=True)
class CpuInfo:
    """What the int8 kernels can use on this CPU."""

    capability: str  # torch.backends.cpu.get_cpu_capability(): "AVX2", "AVX512", "DEFAULT", ...
    x86: bool
    vnni: bool  # 32-bit int8 dot products (VNNI or AMX)
    flags: tuple[str, ...] = ()  # the VNNI/AMX flags found in /proc/cpuinfo
    source: str = "detected"  # "detected", or how it was overridden

    @property
    def saturates(self) -> bool:
        """True where u8 x s8 int8 kernels accumulate in 16 bits (x86 without VNNI/AMX)."""
        return self.x86 and not self.vnni

    @property
    def label(self) -> str:
        """E.g. ``"AVX2, no VNNI"`` or ``"AVX512, VNNI (avx512_vnni, amx_int8)"``."""
        vnni = (f"VNNI ({', '.join(self.flags)})" if self.flags else "VNNI") if self.vnni else "no VNNI"
        return f"{self.capability}, {vnni if self.x86 else 'not x86'}" + \
            ("" if self.source == "detected" else f" [{self.source}]")


@dataclass(frozen=True)
class Int8Settings:
    """Quantizer settings for the int8 backends on one CPU."""

    cpu: CpuInfo
    #: one bit less against vpmaddubsw saturation: 7-bit activations in PT2E (torchao's X86 quantizer),
    #: 7-bit weights in onnxruntime (its ``reduce_range``)
    reduce_range: bool

    @property
    def label(self) -> str:
        """The choice in a few words, for notes and benchmark tables."""
        return "reduce_range (7-bit, no VNNI)" if self.reduce_range else "full 8-bit range"

    @property
    def note(self) -> str:
        """One sentence for a result's notes."""
        return f"CPU {self.cpu.label}: int8 with {self.label}."


@functools.lru_cache(maxsize=1)
def _detect() -> CpuInfo:
    import torch

    try:
        capability = str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001 - an old or unusual build: the flags below still tell
        capability = "unknown"
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:  # not Linux: torch's capability only
        pass
    found = tuple(f for f in VNNI_FLAGS if f in flags)
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")
    # without /proc/cpuinfo (macOS, Windows) VNNI is not assumed: the 7-bit settings are accurate on every
    # x86 CPU, merely unneeded with VNNI (NBOPT_CPU_VNNI=1 says otherwise)
    return CpuInfo(capability, x86, bool(found), found)


def cpu_info(vnni: bool | None = None) -> CpuInfo:
    """This CPU (detected once per process); ``vnni`` or ``NBOPT_CPU_VNNI=0/1`` override the VNNI flag."""
    info = _detect()
    source = "vnni=" + str(vnni)
    if vnni is None:
        env = os.environ.get(ENV, "").strip().lower()
        if env in ("0", "1", "false", "true", "no", "yes"):
            vnni, source = env in ("1", "true", "yes"), f"{ENV}={env}"
    if vnni is None:
        return info
    return CpuInfo(info.capability, True if vnni is False else info.x86, bool(vnni), info.flags, source)


def int8_settings(cpu: CpuInfo | None = None) -> Int8Settings:
    """The settings that keep int8 accurate on ``cpu`` (default: this one)."""
    cpu = cpu or cpu_info()
    return Int8Settings(cpu, reduce_range=cpu.saturates)
