"""nbopt.quantize: simulated any-bit quantization or a real int8 model, with report, sizes, speed, fidelity."""
from __future__ import annotations

from typing import Any, Callable, Mapping

from torch import nn

from ..errors import NboptError
from ..inputs import call, check_finite, check_module
from ..layers import eval_folded, weighted_layers
from ..model_state import disk_bytes, size_bytes, working_copy
from ..timing import compare
from .calibration import first_input, run_batches
from .int8 import BUILDERS, Int8Program
from .metrics import fidelity
from .options import BACKENDS, MODES, QuantOptions, check_choice, check_finite_weights, check_layer_names
from .report import layer_report
from .result import QuantResult
from .simulate import attach, calibrate, weight_qparams
from .sizes import deployable_bytes, fp32_sizes


def quantize(model: nn.Module, calib: Any = None, *, weight_bits: int = 8, act_bits: int | None = 8,
             granularity: str = "per_channel", symmetric: bool = True, observer: str = "minmax",
             mode: str = "simulate", layer_bits: Mapping[str, int] | None = None,
             evaluate: Callable[[nn.Module], float] | None = None, backend: str = "auto",
             percentile: float = 99.99, progress: bool = True, repeat: int = 20) -> QuantResult:
    """Quantize a copy of ``model`` and measure what it costs and gains.

    mode="simulate": fake quantization at any width 2-16 (float compute: not faster; predicts accuracy).
    mode="int8": real int8 kernels (torchao PT2E + torch.compile, or onnxruntime QDQ; backend="auto"
    measures both and keeps the faster). mode="dynamic": int8 weights, activations quantized on the fly.
    ``calib``: tensor, DataLoader or iterable of batches; ``evaluate(model) -> accuracy`` optional.
    """
    check_module(model)
    opts = QuantOptions(weight_bits, act_bits, granularity, symmetric, observer, dict(layer_bits or {}),
                        percentile).validate()
    check_choice(mode, MODES, "mode")
    check_choice(backend, BACKENDS, "backend")
    check_layer_names(model, opts.layer_bits)
    check_finite_weights(model)
    _check_mode(mode, opts, calib)
    example = first_input(calib) if calib is not None else None
    if example is not None:
        check_finite(example, "calibration inputs")
    reference = working_copy(model).eval()
    folded = eval_folded(working_copy(model))
    if mode == "simulate":
        return _simulate(reference, folded, calib, example, opts, evaluate, progress, repeat)
    return _real(reference, folded, calib, example, opts, mode, backend, evaluate, progress, repeat)


def _check_mode(mode: str, opts: QuantOptions, calib: Any) -> None:
    if mode in ("int8", "dynamic") and (opts.weight_bits != 8 or opts.layer_bits):
        raise NboptError(f"mode={mode!r} runs 8-bit kernels; for weight_bits={opts.weight_bits} or layer_bits "
                         "use mode='simulate' (accuracy study; not faster).")
    if mode == "int8" and opts.act_bits != 8:
        raise NboptError(f"mode='int8' quantizes activations to 8 bits (act_bits={opts.act_bits} given); "
                         "use mode='dynamic' for int8 weights with float activations, or mode='simulate'.")
    if mode == "int8" and calib is None:
        raise NboptError("static int8 needs calibration data to fix activation ranges: pass calib=... "
                         "(a few hundred representative inputs), or use mode='dynamic' which needs only an "
                         "example input.")
    if mode == "dynamic" and calib is None:
        raise NboptError("mode='dynamic' needs an example input to export the model: pass calib=example_batch.")
    if mode == "simulate" and opts.act_bits is not None and calib is None:
        raise NboptError(f"act_bits={opts.act_bits} needs calibration data to fix activation ranges: pass "
                         "calib=..., or act_bits=None to quantize weights only.")


def _simulate(reference, folded, calib, example, opts, evaluate, progress, repeat) -> QuantResult:
    sim = working_copy(folded)
    qparams = attach(sim, opts)
    if calib is not None:
        calibrate(sim, calib, progress=progress)
    bits = {n: opts.bits_for(n) for n in qparams}
    sizes = {"fp32": fp32_sizes(reference),
             "quantized": {"dense": size_bytes(sim), "disk": disk_bytes(sim),
                           "deployable": deployable_bytes(folded, bits, symmetric=opts.symmetric,
                                                          per_channel=opts.granularity == "per_channel")}}
    result = _finish(reference, sim, calib, example, evaluate, progress, repeat,
                     report=layer_report(folded, sim, qparams, opts, example), mode="simulate",
                     backend="simulate", real=False, sizes=sizes, opts=opts)
    result.notes.append(
        f"Simulated quantization: float32 compute on rounded values. It predicts accuracy but is not faster "
        f"(measured {result.speedup:.2f}x) nor smaller in memory; 'deployable' is the size a runtime with "
        f"{sorted(set(bits.values()))}-bit weights would need. Use mode='int8' for a real, faster model.")
    return result


def _real(reference, folded, calib, example, opts, mode, backend, evaluate, progress, repeat) -> QuantResult:
    dynamic = mode == "dynamic"
    names = list(BUILDERS) if backend == "auto" else [backend]
    programs, errors = {}, {}
    for name in names:
        try:
            programs[name] = BUILDERS[name](reference, calib, example, dynamic=dynamic, progress=progress)
        except NboptError as exc:
            if backend != "auto":
                raise
            errors[name] = str(exc)
    if not programs:
        raise NboptError(" | ".join(f"{k}: {v}" for k, v in errors.items()))
    program, reason = _pick(programs, errors, example, repeat)
    w8 = opts.with_(weight_bits=8, granularity="per_channel", symmetric=True, observer="minmax", layer_bits={})
    qparams = {n: weight_qparams(m.weight, 8, w8) for n, m in weighted_layers(folded).items()}
    sizes = {"fp32": fp32_sizes(reference),
             "quantized": {"dense": program.dense_bytes, "disk": program.disk_bytes,
                           "deployable": deployable_bytes(folded, {n: 8 for n in qparams})}}
    result = _finish(reference, program.model, calib, example, evaluate, progress, repeat,
                     report=layer_report(folded, None, qparams, w8.with_(act_bits=None if dynamic else 8), None,
                                         real=True),
                     mode=mode, backend=program.backend, real=True, sizes=sizes, opts=opts)
    result.backend_reason = reason
    result.notes.append(f"Real int8 ({program.backend}): {reason}. Per-layer output SQNR is not observable "
                        "inside the compiled program; see the end-to-end fidelity.")
    return result


def _pick(programs: dict[str, Int8Program], errors: dict[str, str], example: Any,
          repeat: int) -> tuple[Int8Program, str]:
    """The faster program on the user's example input, with the measured reason."""
    failed = "".join(f"; {k} was unavailable ({v.split(':')[0]})" for k, v in errors.items())
    if len(programs) == 1:
        prog = next(iter(programs.values()))
        return prog, f"backend {prog.backend} chosen{failed or ' as requested'}"
    t = compare({k: (lambda p=p: call(p.model, example)) for k, p in programs.items()}, warmup=3,
                **_steady(repeat))
    best = min(t, key=lambda k: t[k].median_ms)
    detail = ", ".join(f"{k} {t[k].median_ms:.3f} ms" for k in t)
    return programs[best], f"backend='auto' measured both on your input ({detail}, median) and kept {best}"


def _steady(repeat: int) -> dict[str, int]:
    """About ``repeat`` timed calls per program in blocks of 3 (steady state; see :func:`nbopt.timing.compare`)."""
    return {"repeat": max(1, repeat // 3), "block": 3, "settle_ms": 100} if repeat >= 3 else {"repeat": repeat}


def _finish(reference, qmodel, calib, example, evaluate, progress, repeat, *, report, mode, backend, real,
            sizes, opts) -> QuantResult:
    fid, latency = {}, {}
    if calib is not None:
        ref_out = run_batches(reference, calib, progress=progress, desc="fp32 outputs")
        q_out = run_batches(qmodel, calib, progress=progress, desc="quantized outputs")
        fid = fidelity(ref_out, q_out)
        t = compare({"fp32": lambda: call(reference, example), "quantized": lambda: call(qmodel, example)},
                    warmup=3, **_steady(repeat))
        latency = {k: v.median_ms for k, v in t.items()}
    acc = {"fp32": float(evaluate(reference)), "quantized": float(evaluate(qmodel))} if evaluate else None
    return QuantResult(model=qmodel, report=report, mode=mode, backend=backend, real=real, size_bytes=sizes,
                       latency_ms=latency, fidelity=fid, accuracy=acc, options=opts.__dict__.copy())
