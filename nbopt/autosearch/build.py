"""Build one Config into a model (prune -> recover -> fold/quantize, or the fp32 graph in onnxruntime) and measure
it (accuracy, latency, size)."""
from __future__ import annotations

import contextlib
import fcntl
import math
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..inputs import call
from ..layers import eval_folded
from ..model_state import disk_bytes, working_copy
from .space import Config

TIMING_NOTE = ("latency timed one trial at a time per machine (a file lock around the timing phase); other "
               "trials may still be building or evaluating on the machine's other cores meanwhile")


def build_config(model: nn.Module, example_input: Any, cfg: Config, *, calib: Any, train_data: Any = None,
                 recover_epochs: int = 2, seed: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """The compressed model ``cfg`` describes (a new model; ``model`` is untouched) and what was done."""
    from ..pruning import Pruner

    info: dict[str, Any] = {}
    built = working_copy(model).eval()
    if cfg.amount or any(cfg.overrides.values()):
        pruner = Pruner(built, example_input, progress=False)
        pruner.set(cfg.amount, structured=True, overrides={k: v for k, v in cfg.overrides.items()})
        built = pruner.export().eval()
    if cfg.recover != "none" and train_data is not None:
        built = _recover(built, model, cfg.recover, train_data, cfg.epochs or recover_epochs, seed, cfg.lr)
    if cfg.quant == "int8":
        from ..quantization.backends import BUILDERS
        from ..quantization.calibration import first_input

        program = BUILDERS[cfg.backend](eval_folded(working_copy(built)), calib, first_input(calib),
                                        dynamic=False, progress=False)
        info["size_bytes"] = program.disk_bytes
        return program.model, info
    if cfg.quant == "mixed":
        from ..quantization import quantize

        q = quantize(built, calib, mode="simulate", weight_bits=8, act_bits=8, layer_bits=dict(cfg.bits),
                     progress=False, repeat=1)
        info["size_bytes"] = q.size_bytes["quantized"]["deployable"]
        return q.model, info
    built = eval_folded(working_copy(built))
    if cfg.runtime == "onnxruntime":
        from ..quantization.backends.onnxruntime import build_fp32
        program = build_fp32(built, example_input)
        info["size_bytes"] = len(program.onnx_bytes)
        return program, info
    info["size_bytes"] = disk_bytes(built)
    return built, info


def _recover(pruned: nn.Module, teacher: nn.Module, how: str, data: Any, epochs: int, seed: int,
             lr: float | None = None) -> nn.Module:
    """Fine-tune or distill; a DataLoader's own shuffling generator is put back as it was afterwards, so every trial
    (and ``SearchResult.build``) sees the same batch order and the user's loader is left unchanged."""
    from ..distillation import recover

    gen = getattr(data, "generator", None)
    state = gen.get_state() if isinstance(gen, torch.Generator) else None
    try:
        rate = {} if lr is None else {"lr": lr}
        return recover(pruned, teacher, how, data, epochs=epochs, seed=seed, progress=False, **rate)
    finally:
        if state is not None:
            gen.set_state(state)


def lock_path() -> Path:
    """The per-machine timing lock: one file in this machine's temp dir, shared by every process on it."""
    return Path(tempfile.gettempdir()) / f"nbopt-timing-{socket.gethostname()}.lock"


@contextlib.contextmanager
def timing_lock() -> Iterator[float]:
    """Hold the machine's timing lock (waiting for it); yields the seconds waited."""
    t0 = time.perf_counter()
    with open(lock_path(), "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield time.perf_counter() - t0
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def latency_ms(model: nn.Module, example_input: Any, repeat: int = 20) -> dict[str, float]:
    """Median and quartiles (ms) of ``model(example_input)`` with ``nbopt.timing``, under the timing lock."""
    from ..timing import measure

    with timing_lock() as waited, torch.no_grad():
        t = measure(lambda: call(model, example_input), warmup=3, repeat=repeat)
    return {"latency_ms": t.median_ms, "latency_q1_ms": t.q1_ms, "latency_q3_ms": t.q3_ms,
            "timing_wait_s": waited, "timing_noisy": bool(t.noisy)}


def measure_config(model: nn.Module, example_input: Any, cfg: Config, *, calib: Any,
                   evaluate: Callable[[nn.Module], float] | None, objectives: tuple[str, ...], train_data: Any,
                   recover_epochs: int, seed: int, repeat: int) -> dict[str, Any]:
    """Build ``cfg`` and measure what ``objectives`` need (accuracy always when ``evaluate`` is given)."""
    t0 = time.perf_counter()
    built, info = build_config(model, example_input, cfg, calib=calib, train_data=train_data,
                               recover_epochs=recover_epochs, seed=seed)
    out: dict[str, Any] = {"build_s": time.perf_counter() - t0, "size_bytes": float(info["size_bytes"]),
                           "params": float(sum(p.numel() for p in built.parameters())), "pid": os.getpid()}
    out["accuracy"] = float(evaluate(built)) if evaluate is not None else math.nan
    if "latency" in objectives:
        out.update(latency_ms(built, example_input, repeat))
    return out
