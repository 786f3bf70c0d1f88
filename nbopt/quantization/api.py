"""nbopt.quantize: simulated any-bit quantization or a real int8 model, with report, sizes, speed, fidelity."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from torch import nn

from ..errors import InputError, NboptError
from ..graph import CACHE_NOTE, cache_off
from ..inputs import call, check_finite, check_module, check_not_meta
from ..layers import eval_folded, skipped_layers, warn_skipped, weighted_layers
from ..model_state import disk_bytes, size_bytes, working_copy
from ..timing import STEADY_BLOCK, STEADY_SETTLE_MS, Pair, compare, compare_pair, is_noisy, machine_load
from .calibration import first_input, reusable, run_batches
from .backends import BUILDERS, Int8Program
from .metrics import fidelity
from .metrics import lower_is_better, score_name
from .options import (LAYER_KINDS, MODES, QuantOptions, check_choice, check_finite_weights, check_layer_names,
                      check_weight_only, group_granularity)
from .report import layer_report
from .result import QuantResult
from .simulate import attach, calibrate, layer_qparams
from .sizes import deployable_bytes, fp32_sizes

if TYPE_CHECKING:
    import pandas as pd


class _DefaultBits(int):
    """``act_bits``'s default (8): an ``int`` that tells "not given" apart from an explicit 8 (weight-only refuses
    the explicit one)."""

    def __repr__(self) -> str:
        return "8"


_ACT_DEFAULT = _DefaultBits(8)


def quantize(model: nn.Module, calib: Any = None, *, weight_bits: int = 8, act_bits: int | None = _ACT_DEFAULT,
             granularity: str = "per_channel", group_size: int | None = None, symmetric: bool | None = None,
             observer: str = "minmax", mode: str = "simulate", method: str = "rtn",
             layer_bits: Mapping[str, int] | None = None,
             evaluate: Callable[[nn.Module], float] | None = None, backend: str = "auto",
             percentile: float = 99.99, progress: bool = True, repeat: int = 20) -> QuantResult:
    """Quantize a copy of ``model`` and measure what it costs and gains; ``model`` is never modified.

    Args:
        model: the float model (BatchNorm is folded into the copy first).
        calib: calibration data (tensor, DataLoader or iterable of batches): fixes activation ranges and
            is what fidelity and latency are measured on. Needed unless ``act_bits=None`` in simulate mode.
            It is read several times; a one-shot iterator (a generator) is read once into a list first, so
            all its batches are held in memory: pass a list or a DataLoader to avoid that.
        weight_bits: bits of every Conv/linear-like weight (``Conv1D`` included), an integer 2-16 (8 for the int8 modes;
            8 or 4 for ``mode="weight_only"``).
        act_bits: bits of each layer's input activations (2-16), or None to keep them in float (default 8;
            ``mode="weight_only"`` keeps them in bfloat16 and refuses an explicit value other than None).
        granularity: "per_channel" (one scale per output channel), "per_tensor", or "per_group32/64/128"
            (one scale per group of that many input values of each output channel) weight scales.
        group_size: 32, 64 or 128: group-wise weight scales (the same as ``granularity="per_group{N}"``);
            None: per output channel. With ``mode="weight_only"`` and 4 bits it defaults to 128.
        symmetric: symmetric weight grid (zero point 0); activations are always asymmetric. None (default):
            symmetric, except 4-bit ``mode="weight_only"`` (asymmetric, as torchao's int4 weight-only).
        observer: how ranges are chosen: "minmax", "percentile" or "mse" (least squared error).
        mode: "simulate": fake quantization at any width (float compute: predicts accuracy, not faster);
            "int8": real int8 kernels; "dynamic": int8 weights, activations quantized on the fly;
            "weight_only": real int8 (per channel) or int4 (group-wise) weights in every linear layer,
            activations in bfloat16 (:func:`nbopt.quantization.weight_only.quantize_weights`: the language-model
            path, bound by weight bytes when decoding).
        method: how weight-only codes are found: "rtn" (round to nearest) or "gptq" (error-compensating; needs
            ``calib``). ``mode="weight_only"`` only.
        layer_bits: per-layer weight bits by layer name, overriding ``weight_bits`` (simulate only).
        evaluate: ``evaluate(model) -> score``; when given, the fp32 and quantized scores are in ``accuracy``
            (an accuracy, or a perplexity such as ``nbopt.demo.lm.perplexity``: ``options["evaluate"]`` names it,
            from the function's name, and ``options["lower_is_better"]`` says which way is better).
        backend: int8 runtime: "pt2e" (torchao PT2E + torch.compile), "onnxruntime" (QDQ), or "auto"
            (builds both, times them on your input and keeps the faster). With ``mode="weight_only"``: "auto"
            (times PyTorch's aten int8/int4 kernels and onnxruntime's ``MatMulNBits`` at batch 1 and keeps the
            faster; ``result.notes`` has both timings), "aten", "onnxruntime", or "torchao" (its
            ``Int8WeightOnlyConfig``, 8-bit round-to-nearest only).
        percentile: the range percentile of ``observer="percentile"``, in (50, 100].
        progress: show progress bars.
        repeat: about how many timed calls per model for the latency comparison (both models interleaved in
            blocks of 3; the result reports medians, quartiles, the call count and the speedup's spread).

    For a language model (outputs of shape (N, T, V)) ``fidelity["top1_agreement"]`` is per token (the most likely
    next token agrees with fp32's) and ``fidelity["kl_div"]`` the mean KL(fp32 || quantized) of the next-token
    distributions (nats).

    The speedup is measured against the fp32 model in eager PyTorch on this machine: it depends on the CPU,
    its threads and its load, and for a real int8 model also includes the change of runtime. When the timing
    is noisy or the machine busy, ``result.noisy`` is True and ``result.latency_note`` says so.
    """
    check_module(model)
    check_not_meta(model, "quantize")
    check_choice(mode, MODES, "mode")
    if mode == "weight_only":
        bits, group, kernel = check_weight_only(
            model, weight_bits=weight_bits, group_size=group_size, method=method, act_bits=act_bits,
            act_bits_given=act_bits is not _ACT_DEFAULT, granularity=granularity, observer=observer,
            layer_bits=layer_bits, symmetric=symmetric, backend=backend, calib=calib)
        check_finite_weights(model)
        return _with_latency_note(_weight_only(model, reusable(calib), bits, group, kernel, method, symmetric,
                                               evaluate, progress, repeat))
    if method != "rtn":
        raise InputError(f"method={method!r} finds weight-only codes: use it with mode='weight_only' "
                         f"(e.g. weight_bits=4, method={method!r}), or leave method out for mode={mode!r}.")
    granularity = group_granularity(granularity, group_size)
    symmetric = True if symmetric is None else symmetric
    opts = QuantOptions(weight_bits, act_bits, granularity, symmetric, observer, layer_bits, percentile)
    check_choice(backend, ("auto", *BUILDERS), "backend")
    check_layer_names(model, opts.layer_bits)
    check_finite_weights(model)
    _check_mode(mode, opts, calib)
    _check_quantizable(model, mode)
    calib = reusable(calib)
    job = _prepare(model, calib, opts, evaluate, progress, repeat, capture=mode != "simulate")
    if mode == "simulate":
        return _with_latency_note(_simulate(job))
    return _with_latency_note(_real(job, dynamic=mode == "dynamic", backend=backend))


@dataclass(frozen=True)
class _Job:
    """What one quantization run measures against: fp32 copies of the model, the data and the settings."""

    reference: nn.Module  # eval copy of the user's model: the fp32 baseline
    folded: nn.Module  # BN-folded eval copy the quantized weights come from
    calib: Any
    example: Any  # first calibration batch (export and timing input), None without calib
    opts: QuantOptions
    evaluate: Callable[[nn.Module], float] | None
    progress: bool
    repeat: int
    notes: tuple[str, ...] = ()  # what was changed on the copies (a KV cache turned off)


def _prepare(model: nn.Module, calib: Any, opts: QuantOptions, evaluate: Callable[[nn.Module], float] | None,
             progress: bool, repeat: int, capture: bool = False, fold: bool = True) -> _Job:
    """Check the calibration inputs and make the fp32 copies every mode starts from.

    ``capture`` (the int8 modes, which capture a graph): a Hugging Face model's KV cache is turned off on the
    copies (a ``DynamicCache`` cannot be a graph output), said in the job's notes; the fp32 baseline is that
    same cache-free copy, so both sides are timed and compared alike. ``fold=False`` (weight-only: no BatchNorm to
    fold into linears) makes one copy, used as both.
    """
    example = first_input(calib) if calib is not None else None
    if example is not None:
        check_finite(example, "calibration inputs")
    reference = working_copy(model).eval()
    folded = eval_folded(working_copy(model)) if fold else reference
    notes = ()
    if capture and cache_off(reference) | cache_off(folded):
        notes = (CACHE_NOTE.format(what="the int8 model"),)
    return _Job(reference=reference, folded=folded, calib=calib, example=example, opts=opts, evaluate=evaluate,
                progress=progress, repeat=repeat, notes=notes)


def _check_quantizable(model: nn.Module, mode: str) -> None:
    """Simulation quantizes Conv/Linear modules: refuse a model with none rather than report a perfect score."""
    if mode == "simulate" and not weighted_layers(model):
        raise InputError(
            f"mode='simulate' has nothing to quantize: the model ({type(model).__name__}) has no {LAYER_KINDS} "
            "module, and those are the layers simulated quantization rounds (weights held as parameters and used "
            "through functional calls such as F.conv2d are not seen), so its result would be the fp32 model. "
            "Use mode='dynamic' or mode='int8', which quantize the captured graph, functional ops included.")


def _check_mode(mode: str, opts: QuantOptions, calib: Any) -> None:
    """Reject settings a mode cannot run, saying which mode or argument would."""
    if mode in ("int8", "dynamic") and opts.group_size:
        raise NboptError(f"mode={mode!r} runs per-channel int8 kernels; group-wise scales "
                         f"({opts.granularity}) run with mode='weight_only' (weight_bits=4) or mode='simulate'.")
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


def _simulated(job: _Job) -> tuple[nn.Module, dict]:
    """A fake-quantized copy of ``job.folded`` (activation ranges calibrated) and its weight qparams."""
    sim = working_copy(job.folded)
    qparams = attach(sim, job.opts)
    if job.calib is not None:
        calibrate(sim, job.calib, progress=job.progress)
    return sim, qparams


def _simulated_sizes(job: _Job, sim: nn.Module, bits: dict[str, int]) -> dict[str, dict[str, int]]:
    """fp32 sizes vs the simulated model's (dense, disk) and what a ``bits``-bit runtime would deploy."""
    opts = job.opts
    return {"fp32": fp32_sizes(job.reference),
            "quantized": {"dense": size_bytes(sim), "disk": disk_bytes(sim),
                          "deployable": deployable_bytes(job.folded, bits, symmetric=opts.symmetric,
                                                         per_channel=opts.granularity == "per_channel",
                                                         group_size=opts.group_size)}}


def _simulated_note(speedup: str, bits: dict[str, int]) -> str:
    """The caveat every simulated result carries: float compute, so only ``deployable`` is smaller."""
    return (f"Simulated quantization: float32 compute on rounded values. It predicts accuracy but is not faster "
            f"(measured {speedup}) nor smaller in memory; 'deployable' is the size a runtime with "
            f"{'/'.join(str(b) for b in sorted(set(bits.values())))}-bit weights would need. Use mode='int8' for a "
            "real, faster model.")


def _simulate(job: _Job) -> QuantResult:
    sim, qparams = _simulated(job)
    bits = {n: job.opts.bits_for(n) for n in qparams}
    result = _finish(job, sim, report=layer_report(job.folded, sim, qparams, job.opts, job.example),
                     mode="simulate", backend="simulate", real=False, sizes=_simulated_sizes(job, sim, bits))
    result.notes.append(_simulated_note(result.speedup_text(), bits))
    skipped = warn_skipped(skipped_layers(job.folded), "simulated quantization", stacklevel=4)
    if skipped:
        result.notes.append(skipped)
    return result


def _real(job: _Job, *, dynamic: bool, backend: str) -> QuantResult:
    program, reason = _build(job, dynamic=dynamic, backend=backend)
    w8 = job.opts.with_(weight_bits=8, granularity="per_channel", symmetric=True, observer="minmax", layer_bits={})
    qparams = {n: layer_qparams(m, 8, w8) for n, m in weighted_layers(job.folded).items()}
    sizes = {"fp32": fp32_sizes(job.reference),
             "quantized": {"dense": program.dense_bytes, "disk": program.disk_bytes,
                           "deployable": deployable_bytes(job.folded, {n: 8 for n in qparams})}}
    report = layer_report(job.folded, None, qparams, w8.with_(act_bits=None if dynamic else 8), None, real=True)
    result = _finish(job, program.model, report=report, mode="dynamic" if dynamic else "int8",
                     backend=program.backend, real=True, sizes=sizes)
    result.backend_reason = reason
    result.cpu = program.cpu_note
    result.notes.extend(job.notes)
    result.notes.append(f"Real int8 ({program.backend}): {reason}. Per-layer output SQNR is not observable "
                        "inside the compiled program; see the end-to-end fidelity.")
    if program.cpu_note:
        result.notes.append(program.cpu_note)
    result.notes.extend(program.notes)  # what the backend changed to build it (a dtype, a compile fallback)
    if result.latency_ms:
        result.notes.append(f"Speedup {result.speedup_text()} is over the fp32 model in eager PyTorch on this CPU, "
                            f"timed interleaved on the first calibration batch: it also counts the change of "
                            f"runtime ({program.backend}; for small models and batches mostly eager PyTorch's "
                            "per-layer overhead), and it depends on the CPU's int8 instructions, threads and load.")
    return result


def _weight_only(model: nn.Module, calib: Any, bits: int, group_size: int | None, kernel: str, method: str,
                 symmetric: bool | None, evaluate: Callable[[nn.Module], float] | None, progress: bool,
                 repeat: int) -> QuantResult:
    """``mode="weight_only"``: :func:`~nbopt.quantization.weight_only.quantize_weights` on a copy, measured like
    every mode (fidelity per token and KL for language models, interleaved latency, ``evaluate``)."""
    from .weight_only import quantize_weights
    from .weight_only_report import weight_only_report

    sym = True if bits == 8 else bool(symmetric)
    opts = QuantOptions(weight_bits=bits, act_bits=None, symmetric=sym,
                        granularity=f"per_group{group_size}" if group_size else "per_channel")
    job = _prepare(model, calib, opts, evaluate, progress, repeat, fold=False)
    wo = quantize_weights(job.reference, bits, group_size, kernel=kernel, method=method, calib=calib,
                          symmetric=sym, progress=progress)
    report = weight_only_report(job.reference, wo.model, list(wo.layers), bits=bits, group_size=wo.group_size,
                                symmetric=sym, method=method, kernel=wo.kernel, weight_dtypes=wo.weight_dtypes,
                                example=job.example)
    sizes = {"fp32": fp32_sizes(job.reference),
             "quantized": {"dense": wo.size_bytes, "disk": disk_bytes(wo.model), "deployable": wo.size_bytes}}
    result = _finish(job, wo.model, report=report, mode="weight_only", backend=wo.kernel, real=True, sizes=sizes)
    result.options.update(group_size=wo.group_size, method=method, kernel=wo.kernel, kernel_asked=kernel)
    what = f"int{bits}" + (f" in groups of {wo.group_size}" if wo.group_size else " per output channel")
    result.backend_reason = (f"weight-only {what} on the {wo.kernel} kernels" +
                             (" (backend='auto' timed aten and onnxruntime at batch 1 and kept the faster; see "
                              "the notes)" if kernel == "auto" else ""))
    stored = ", ".join(sorted(set(wo.weight_dtypes.values()))) or "no"
    result.notes.append(f"Real weight-only {what} ({'GPTQ' if method == 'gptq' else 'round-to-nearest'}, "
                        f"{wo.kernel} kernels): {len(wo.layers)} linear layers store {stored} weights; "
                        f"{wo.fp32_bytes / 2**20:.2f} MiB -> {wo.size_bytes / 2**20:.2f} MiB in memory.")
    result.notes.extend(wo.notes)
    if result.latency_ms:
        result.notes.append(f"Speedup {result.speedup_text()} is one forward of the first calibration batch (a "
                            "prefill) against fp32 eager; decoding reads every weight once per token, which is "
                            "where fewer weight bytes pay off (benchmarks/llm_decode.py measures tokens/s).")
    if wo.kernel == "onnxruntime" and hasattr(getattr(wo.model, "config", None), "num_hidden_layers"):
        result.notes.append("For generation: nbopt.export_decoder(result.model) runs the whole decode step (KV cache "
                            "in and out, these MatMulNBits layers) in one onnxruntime session.")
    return result


def _build(job: _Job, *, dynamic: bool, backend: str) -> tuple[Int8Program, str]:
    """The int8 program of ``backend`` (with "auto": every one that builds, then the faster) and why."""
    names = list(BUILDERS) if backend == "auto" else [backend]
    programs, errors = {}, {}
    for name in names:
        try:
            programs[name] = BUILDERS[name](job.reference, job.calib, job.example, dynamic=dynamic,
                                            progress=job.progress)
        except NboptError as exc:
            if backend != "auto":
                raise
            errors[name] = str(exc)
    if not programs:
        raise NboptError(" | ".join(f"{k}: {v}" for k, v in errors.items()))
    return _pick(programs, errors, job.example, job.repeat)


def _pick(programs: dict[str, Int8Program], errors: dict[str, str], example: Any,
          repeat: int) -> tuple[Int8Program, str]:
    """The faster program on the user's example input, with the measured reason (medians, IQRs, calls)."""
    failed = "".join(f"; {k} was unavailable ({v.split(':')[0]})" for k, v in errors.items())
    if len(programs) == 1:
        prog = next(iter(programs.values()))
        return prog, f"backend {prog.backend} chosen{failed or ' as requested'}"
    load = machine_load()
    t = compare({k: (lambda p=p: call(p.model, example)) for k, p in programs.items()}, warmup=3,
                **_steady(repeat))
    best = min(t, key=lambda k: t[k].median_ms)
    detail = ", ".join(f"{k} {t[k].describe()}" for k in t)
    close = [k for k in t if k != best and _overlap(t[k], t[best])]
    if close or is_noisy(t, load):
        within = f"{', '.join(close)} within the spread of {best}" if close else "the timing was noisy"
        close_note = f" ({within}: on this machine the choice is not clear-cut)"
    else:
        close_note = ""
    which = "both" if len(t) == 2 else f"all {len(t)}"
    return programs[best], (f"backend='auto' measured {which} on your input, interleaved ({detail}) and kept "
                            f"{best}{close_note}{failed}")


def _steady(repeat: int) -> dict[str, Any]:
    """About ``repeat`` timed calls per program in steady-state blocks (see :func:`nbopt.timing.compare_pair`)."""
    if repeat < STEADY_BLOCK:
        return {"repeat": max(1, repeat)}
    return {"repeat": max(1, round(repeat / STEADY_BLOCK)), "block": STEADY_BLOCK, "settle_ms": STEADY_SETTLE_MS}


def _overlap(a: Any, b: Any) -> bool:
    """Whether two timings' interquartile ranges overlap."""
    return a.q1_ms <= b.q3_ms and b.q1_ms <= a.q3_ms


def _finish(job: _Job, qmodel: nn.Module, *, report: pd.DataFrame, mode: str, backend: str, real: bool,
            sizes: dict[str, dict[str, int]]) -> QuantResult:
    """Measure ``qmodel`` against ``job.reference`` (fidelity and interleaved latency on ``calib``, accuracy).

    Both models have already run on every calibration batch (the fidelity outputs) before they are timed, so
    a lazily built session or a compiled program's first-batch compile is never inside the timing.
    """
    fid, pair, fid_note = {}, None, None
    if job.calib is not None:
        ref_out = run_batches(job.reference, job.calib, progress=job.progress, desc="fp32 outputs")
        q_out = run_batches(qmodel, job.calib, progress=job.progress, desc="quantized outputs")
        fid = fidelity(ref_out, q_out)
        fid_note = fid.pop("note", None)
        pair = compare_pair(lambda: call(job.reference, job.example), lambda: call(qmodel, job.example),
                            names=("fp32", "quantized"), warmup=3, repeat=job.repeat)
    acc = None
    if job.evaluate is not None:
        acc = {"fp32": float(job.evaluate(job.reference)), "quantized": float(job.evaluate(qmodel))}
    options = asdict(job.opts)
    if job.evaluate is not None:
        options.update(evaluate=score_name(job.evaluate), lower_is_better=lower_is_better(job.evaluate))
    result = QuantResult(model=qmodel, report=report, mode=mode, backend=backend, real=real, size_bytes=sizes,
                         latency_ms={}, fidelity=fid, accuracy=acc, options=options)
    if fid_note:
        result.notes.append(fid_note)
    if pair is not None:
        _record_latency(result, pair)
    return result


def _record_latency(result: QuantResult, pair: Pair) -> None:
    """The medians, spreads, speedup and noise check of one interleaved fp32/quantized timing."""
    result.latency_ms = {k: t.median_ms for k, t in pair.timings.items()}
    result.latency = pair.summaries()
    result.speedup_spread = pair.speedup
    result.noisy = pair.noisy
    result.latency_note = pair.note("speedup over fp32")


def _with_latency_note(result: QuantResult) -> QuantResult:
    """Append the noise note last to ``result.notes`` (after the mode's own notes)."""
    if result.latency_note:
        result.notes.append(result.latency_note)
    return result
