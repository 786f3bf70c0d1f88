"""``optimize``: profile -> fuse -> prune -> quantize -> export -> verify, one measured row per step."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import pandas as pd
import torch
from torch import nn

from .deployment.export import ExportResult, check_format, export
from .deployment.fuse import fuse
from .distillation import RECOVERY_METHODS as RECOVER
from .deployment.runtime import RuntimeModule
from .errors import NboptError, UnsupportedModelError
from .inputs import batch_inputs, batches, call, check_device, check_module, tensors_in
from .model_state import disk_bytes, working_copy
from .profiling import profile
from .pruning import Pruner
from .quantization import quantize
from .quantization.metrics import fidelity
from .table import as_table
from .timing import compare_pair

STEPS = ("profile", "fuse", "prune", "quantize", "export", "verify")
COLUMNS = ["step", "status", "params", "macs", "file_bytes", "latency_ms", "original_latency_ms", "speedup",
           "accuracy", "top1_agreement", "max_abs_diff", "note", "latency_q1_ms", "latency_q3_ms",
           "original_latency_q1_ms", "original_latency_q3_ms", "speedup_q1", "speedup_q3", "latency_calls", "noisy"]
SHOWN = ("status", "params", "macs", "file_bytes", "latency_ms", "original_latency_ms", "speedup", "accuracy",
         "top1_agreement", "max_abs_diff", "note")  # what a notebook shows (the quartiles stay in the table)
BRIEF = ("status", "params", "file_bytes", "latency_ms", "speedup", "top1_agreement")  # a terminal's columns
# every latency_*, original_latency_* and speedup* value of a row comes from ONE interleaved timing of the step's
# model and the original; speedup == original_latency_ms / latency_ms exactly


@dataclass
class OptimizeResult:
    """One row per pipeline step (``table``), the final runtime model and the export.

    Each row's ``latency_ms``, ``original_latency_ms`` and ``speedup`` (their ratio) come from one interleaved
    timing of that step's model and the original, with quartiles (``*_q1_ms``/``*_q3_ms``; ``speedup_q1``/
    ``speedup_q3`` of the per-round ratios), ``latency_calls`` timed calls each and a ``noisy`` flag; compare a
    row's latency with its own ``original_latency_ms``, not with another row's. ``notes`` says which rows
    were noisy.
    """

    table: pd.DataFrame
    model: nn.Module | None = None             # the exported program in its runtime (or the last torch model)
    export: ExportResult | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        """Original eager latency / final latency, measured interleaved in the last step."""
        return float(self.table["speedup"].iloc[-1]) if len(self.table) else math.nan

    @property
    def noisy(self) -> bool:
        """Whether any measured row's timing was noisy (see ``notes``)."""
        return bool("noisy" in self.table and any(_flag(v) for v in self.table["noisy"]))

    def _speedup_text(self) -> str:
        if not len(self.table) or "speedup_q1" not in self.table:
            return f"{self.speedup:.2f}x"
        last = self.table.iloc[-1]
        calls = int(last["latency_calls"]) if last["latency_calls"] == last["latency_calls"] else 0
        return (f"{self.speedup:.3g}x (IQR {last['speedup_q1']:.3g}-{last['speedup_q3']:.3g}x, n={calls})"
                + (", NOISY" if _flag(last["noisy"]) else ""))

    def _repr_html_(self) -> str:
        from .display.results import optimize_html  # front-end imported on demand

        return optimize_html(self)

    def __repr__(self) -> str:
        from .display.results import optimize_text

        return optimize_text(self)


def _flag(value: Any) -> bool:
    """A table cell as a flag: NaN (a skipped row) and None are False."""
    return value is not None and value == value and bool(value)


@dataclass
class _State:
    model: nn.Module
    params: float = math.nan
    macs: float = math.nan
    file_bytes: float = math.nan


def check_steps(steps: Iterable[str]) -> list[str]:
    """Steps in pipeline order, or an error listing the valid names."""
    names = [str(s).lower() for s in steps]
    bad = [s for s in names if s not in STEPS]
    if bad:
        raise NboptError(f"unknown pipeline step(s) {bad}; valid steps, in order: {', '.join(STEPS)}.")
    return [s for s in STEPS if s in names]


def count(model: nn.Module, inputs: Any) -> tuple[float, float]:
    """(params, MACs) from nbopt.profile."""
    p = profile(model, inputs, latency=False)
    return float(p.total_params), float(p.total_macs)


def outputs_on(model: nn.Module, calib: Any, limit: int) -> list[torch.Tensor]:
    """Model outputs on up to ``limit`` calibration batches: the first tensor of each output, whatever its
    structure (a tensor, a tuple/list, a dict, nested)."""
    outs = []
    with torch.no_grad():
        for i, batch in enumerate(batches(calib)):
            if i >= limit:
                break
            out = call(model, batch_inputs(batch))
            first = next(tensors_in(out), None)
            if first is None:
                raise NboptError(f"{type(model).__name__} returned no tensor ({type(out).__name__}); optimize "
                                 "measures fidelity on the model's first output tensor.")
            outs.append(first.detach().float())
    return outs


class _Run:
    """Shared context of one optimize() call: the original model, inputs, measurements."""

    def __init__(self, original, inputs, calib, evaluate, repeat, fidelity_batches):
        self.original, self.inputs, self.calib, self.evaluate = original, inputs, calib, evaluate
        self.repeat, self.limit = repeat, fidelity_batches
        self.reference = outputs_on(original, calib, fidelity_batches)
        self.rows: list[dict[str, Any]] = []
        self.noise: list[str] = []  # one note per noisy row

    def row(self, step: str, state: _State, measured: nn.Module, note: str = "", status: str = "done") -> None:
        pair = compare_pair(lambda: call(self.original, self.inputs), lambda: call(measured, self.inputs),
                            names=("original", "step"), warmup=3, repeat=self.repeat)
        fid = fidelity(self.reference, outputs_on(measured, self.calib, self.limit))
        agree, diff = fid.get("top1_agreement", math.nan), fid["max_abs_diff"]
        if fid.get("note"):  # e.g. outputs fidelity had to skip (empty detections)
            note = f"{note}; {fid['note']}" if note else str(fid["note"])
        orig, t, r = pair.baseline, pair.other, pair.speedup
        self.rows.append({"step": step, "status": status, "params": state.params, "macs": state.macs,
                          "file_bytes": state.file_bytes, "latency_ms": t.median_ms,
                          "original_latency_ms": orig.median_ms, "speedup": r.value,
                          "accuracy": float(self.evaluate(measured)) if self.evaluate else math.nan,
                          "top1_agreement": agree, "max_abs_diff": diff, "note": note,
                          "latency_q1_ms": t.q1_ms, "latency_q3_ms": t.q3_ms, "original_latency_q1_ms": orig.q1_ms,
                          "original_latency_q3_ms": orig.q3_ms, "speedup_q1": r.q1, "speedup_q3": r.q3,
                          "latency_calls": t.n, "noisy": pair.noisy})
        if pair.noisy:
            self.noise.append(f"{step}: {pair.note('speedup over the original')}")

    def skip(self, step: str, reason: str) -> None:
        self.rows.append({"step": step, "status": "skipped", "note": reason})


def optimize(model: nn.Module, example_inputs: Any, *, calib: Any, evaluate: Callable[[nn.Module], float] | None = None,
             steps: Iterable[str] = STEPS, prune_amount: float = 0.5, finetune: Callable[[nn.Module], Any] | None = None,
             recover: str | None = None, recover_data: Any = None, recover_epochs: int = 2,
             quant_backend: str = "onnxruntime", format: str = "onnx", path: Any = None, repeat: int = 20,
             fidelity_batches: int = 4, progress: bool = True) -> OptimizeResult:
    """Run the deployment pipeline on a copy of ``model``; every step is measured against the original.

    ``calib``: calibration batches (quantization, and the fidelity columns). ``evaluate(model) -> accuracy``
    adds an accuracy column. ``prune_amount``: fraction of channels removed (structured, ``nbopt.Pruner``);
    ``finetune(model)`` trains the pruned model (in place or returning it) before quantization.
    ``recover="finetune"|"distill"`` does that with nbopt: ``finetune`` (cross-entropy) or ``distill`` from the
    original model, ``recover_epochs`` over ``recover_data`` (labelled ``(x, y)`` batches).
    ``quant_backend``: nbopt.quantize int8 backend ("onnxruntime", "pt2e" or "auto"). ``format``: export
    target. Each row times the step's model interleaved with the original, ``repeat`` calls each in blocks of
    3: ``speedup`` is exactly that row's ``original_latency_ms / latency_ms``, with the quartiles of the
    per-round ratios (``speedup_q1``/``speedup_q3``); a noisy row is flagged (``noisy``) and named in ``notes``.
    The speedups depend on this machine's CPU, threads and load.
    """
    check_module(model)
    check_device(model, example_inputs)
    names = check_steps(steps)
    fmt = check_format(format)
    if calib is None:
        raise NboptError("optimize needs calib= (a few calibration batches, e.g. demo.calibration_data()); "
                         "it calibrates int8 and measures fidelity against the original.")
    if "quantize" in names and quant_backend == "onnxruntime" and fmt != "onnx" and "export" in names:
        raise NboptError(f"an onnxruntime int8 model exports only to ONNX; use format='onnx' or "
                         f"quant_backend='pt2e' for format={fmt!r}.")
    finetune = _recovery(recover, recover_data, recover_epochs, model, finetune, progress)
    original = working_copy(model).eval()
    run = _Run(original, example_inputs, calib, evaluate, repeat, fidelity_batches)
    state = _State(working_copy(model).eval())
    result = OptimizeResult(pd.DataFrame())
    from tqdm.auto import tqdm

    for step in tqdm(names, desc="optimize", disable=not progress, leave=False):
        try:
            _STEP_FUNCS[step](run, state, result, prune_amount=prune_amount, finetune=finetune,
                              backend=quant_backend, fmt=fmt, path=path, progress=progress)
        except UnsupportedModelError as exc:  # a step this model cannot take: record it, go on with the model as is
            run.skip(step, f"skipped, the model is kept as it was: {exc}")
    result.table = as_table(pd.DataFrame(run.rows, columns=COLUMNS).set_index("step"), columns=SHOWN, brief=BRIEF)
    result.notes.extend(run.noise)
    result.model = result.model or state.model
    return result


def _profile(run: _Run, state: _State, result: OptimizeResult, **_: Any) -> None:
    state.params, state.macs = count(state.model, run.inputs)
    state.file_bytes = disk_bytes(state.model)
    run.row("profile", state, state.model, "original model, eager PyTorch fp32")


def _fuse(run: _Run, state: _State, result: OptimizeResult, **_: Any) -> None:
    fused = fuse(state.model, run.inputs)
    state.model = fused.model
    state.params, state.macs = count(state.model, run.inputs)
    state.file_bytes = disk_bytes(state.model)
    run.row("fuse", state, state.model, f"{len(fused.fused)} BatchNorms folded, {len(fused.removed)} "
                                        f"training-only modules removed (max |diff| {fused.max_abs_diff:.1e})")


def _prune(run: _Run, state: _State, result: OptimizeResult, *, prune_amount: float, finetune: Any,
           progress: bool, **_: Any) -> None:
    if not prune_amount:
        run.skip("prune", "prune_amount=0")
        return
    pruner = Pruner(state.model, run.inputs, progress=progress).set(amount=prune_amount, structured=True)
    before = sum(p.numel() for p in state.model.parameters())
    state.model = pruner.export().eval()
    after = sum(p.numel() for p in state.model.parameters())
    note = (f"structured: {prune_amount:.0%} of channels removed" if after < before else
            f"structured at {prune_amount:.0%}: no channel was removed, the model is unchanged")
    if finetune is not None:
        tuned = finetune(state.model)
        state.model = (tuned if isinstance(tuned, nn.Module) else state.model).eval()
        note += f", {getattr(finetune, 'label', 'fine-tuned')}"
    state.params, state.macs = count(state.model, run.inputs)
    state.file_bytes = disk_bytes(state.model)
    run.row("prune", state, state.model, note)


def _quantize(run: _Run, state: _State, result: OptimizeResult, *, backend: str, progress: bool, **_: Any) -> None:
    q = quantize(state.model, run.calib, mode="int8", backend=backend, progress=progress, repeat=3)
    state.model = q.model
    state.file_bytes = q.size_bytes["quantized"]["disk"]
    run.row("quantize", state, state.model, f"{q.label}; params and MACs as before (same layers, int8 kernels)")


def _export(run: _Run, state: _State, result: OptimizeResult, *, fmt: str, path: Any, **_: Any) -> None:
    ex = export(state.model, run.inputs, fmt, path, latency=False)
    result.export = ex
    state.file_bytes = ex.file_bytes
    result.model = RuntimeModule.from_export(ex, run.inputs)  # returns what the model returned (dict, ModelOutput)
    run.row("export", state, result.model, f"{ex.path.name} in {ex.runtime}; {sum(ex.operators.values())} "
                                           f"operators; max |diff| vs the step before {ex.max_abs_diff:.1e}")


def _verify(run: _Run, state: _State, result: OptimizeResult, **_: Any) -> None:
    final = result.model or state.model
    where = f"{result.export.runtime}" if result.export else "eager PyTorch (no export step)"
    run.row("verify", state, final, f"final model in {where} vs the original eager fp32 model; "
                                    "accuracy on the evaluate() data")


def _recovery(recover: str | None, data: Any, epochs: int, teacher: nn.Module, finetune: Any,
              progress: bool) -> Any:
    """optimize's ``recover=``: a ``finetune(model)`` callable running nbopt.finetune or nbopt.distill."""
    if recover is None:
        return finetune
    if recover not in RECOVER:
        raise NboptError(f"recover must be one of {RECOVER} (or None), got {recover!r}")
    if finetune is not None:
        raise NboptError("give either finetune= (your own training function) or recover=, not both")
    if data is None:
        raise NboptError(f"recover={recover!r} needs recover_data= (labelled (x, y) batches, e.g. "
                         "demo.train_loader())")

    def run(pruned: nn.Module) -> nn.Module:
        from .distillation import recover as recover_fn

        return recover_fn(pruned, teacher, recover, data, epochs=epochs, progress=progress)

    run.label = f"recovered by {'distillation from the original' if recover == 'distill' else 'fine-tuning'} " \
                f"({epochs} epochs)"
    return run


_STEP_FUNCS = {"profile": _profile, "fuse": _fuse, "prune": _prune, "quantize": _quantize, "export": _export,
               "verify": _verify}
