"""Quantization-aware training: fine-tune with fake-quantized weights (straight-through gradients)."""
from __future__ import annotations

import warnings
from dataclasses import fields
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import NboptError, PartialResultWarning, check_on_interrupt
from ..inputs import check_module, check_not_meta
from ..layers import weighted_layers
from ..model_state import working_copy
from .api import _finish, _Job, _prepare, _simulated, _simulated_note, _simulated_sizes, _with_latency_note
from .options import QuantOptions, check_finite_weights, check_layer_names
from .report import layer_report
from .result import QuantResult
from .simulate import attach, bake, calibrate, layer_qparams

OPTION_NAMES = frozenset(f.name for f in fields(QuantOptions))
REPEAT = 9  # timed calls per model for the latency comparison: 3 blocks of 3, enough for quartiles (QAT results
#            are about accuracy; a fake-quantized model is not faster)


def _labelled(train_data: Any):
    for batch in train_data:
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise NboptError("train_data must yield (inputs, targets) pairs, e.g. a DataLoader of a TensorDataset.")
        yield batch


def qat(model: nn.Module, train_data: Any, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *,
        epochs: int = 2, lr: float = 1e-3, calib: Any = None, progress: bool = True,
        on_interrupt: str = "return", **quantize_options: Any) -> QuantResult:
    """Fine-tune a BN-folded copy with fake quantization and return its :class:`QuantResult` (``mode="qat"``).

    Args:
        model: the float model; never modified, even if training is interrupted.
        train_data: iterable of ``(inputs, targets)`` batches (e.g. a DataLoader), iterated once per epoch.
        loss_fn: ``loss_fn(outputs, targets) -> scalar tensor`` to minimize.
        epochs: passes over ``train_data`` (Adam optimizer).
        lr: Adam learning rate.
        calib: calibration data for activation ranges (before and after training) and for the measured
            fidelity and latency; default: the inputs of ``train_data``.
        progress: show progress bars.
        on_interrupt: "return" (a partial result, see below) or "raise".
        quantize_options: :func:`nbopt.quantize`'s weight_bits, act_bits, granularity, symmetric, observer,
            layer_bits, percentile, and ``evaluate(model) -> accuracy``.

    The result's sizes, latency (vs fp32), fidelity, report and ``accuracy["quantized"]`` are those of the
    QAT model; with ``evaluate``, ``accuracy["post_training_quantized"]`` is the same settings without QAT.

    Interrupting training (Ctrl-C, the notebook's stop button) with ``on_interrupt="return"`` (default),
    once at least one optimizer step has finished, converts the weights reached so far and returns a
    result with ``partial=True`` and a :class:`PartialResultWarning` (press stop again to stop the
    conversion too). Before the first step, with ``on_interrupt="raise"``, or during conversion, the
    KeyboardInterrupt propagates.
    """
    check_module(model)
    check_not_meta(model, "qat")
    evaluate = quantize_options.pop("evaluate", None)
    unknown = set(quantize_options) - OPTION_NAMES
    if unknown:
        raise NboptError(f"unknown option(s) {sorted(unknown)} for qat; allowed: {sorted(OPTION_NAMES)} and "
                         "evaluate.")
    opts = QuantOptions(**quantize_options)
    if epochs < 1 or lr <= 0:
        raise NboptError(f"epochs={epochs} and lr={lr} must be positive (e.g. epochs=3, lr=1e-3).")
    check_on_interrupt(on_interrupt)
    check_layer_names(model, opts.layer_bits)
    check_finite_weights(model)
    calib = calib if calib is not None else [x for x, _ in _labelled(train_data)]
    job = _prepare(model, calib, opts, evaluate, progress, REPEAT)
    trained, stopped = _train(working_copy(job.folded), train_data, loss_fn, opts, epochs, lr, calib,
                              progress, on_interrupt)
    result = _result(job, trained)
    if stopped is not None:
        result.partial = True
        result.notes.append(f"PARTIAL: QAT was interrupted; the model has the weights after {stopped[0]} of "
                            f"{epochs} epochs ({stopped[1]} steps).")
    return result


def _train(folded: nn.Module, train_data, loss_fn, opts: QuantOptions, epochs: int, lr: float, calib,
           progress: bool, on_interrupt: str) -> tuple[nn.Module, tuple[int, int] | None]:
    """Fine-tune, bake and recalibrate ``folded``; returns it and (epochs, steps) done when interrupted."""
    attach(folded, opts, trainable=True)
    calibrate(folded, calib, progress=progress)
    optimizer = torch.optim.Adam(folded.parameters(), lr=lr)
    folded.train()
    done = [0, 0]  # epochs, steps finished
    stopped = None
    try:
        for _ in tqdm(range(epochs), desc="QAT epochs", disable=not progress, leave=False):
            _epoch(folded, train_data, loss_fn, optimizer, progress, done)
            done[0] += 1
    except KeyboardInterrupt:
        if on_interrupt == "raise" or done[1] == 0:
            raise
        stopped = (done[0], done[1])
        warnings.warn(f"QAT was interrupted after {done[0]} of {epochs} epochs ({done[1]} steps); converting the "
                      "weights reached so far (result.partial is True).", PartialResultWarning, stacklevel=3)
    folded.eval()
    bake(folded)
    calibrate(folded, calib, progress=progress)
    return folded, stopped


def _epoch(model: nn.Module, train_data, loss_fn, optimizer, progress: bool, done: list[int]) -> None:
    for x, y in tqdm(_labelled(train_data), desc="QAT steps", disable=not progress, leave=False):
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
        done[1] += 1


def _result(job: _Job, trained: nn.Module) -> QuantResult:
    """The QAT model measured like :func:`nbopt.quantize` measures a simulated one; with ``evaluate``, also
    the accuracy of post-training quantization with the same settings."""
    opts = job.opts
    layers = weighted_layers(trained)
    bits = {n: opts.bits_for(n) for n in layers}
    qparams = {n: layer_qparams(m, bits[n], opts) for n, m in layers.items()}
    result = _finish(job, trained, report=layer_report(trained, None, qparams, opts, None), mode="qat",
                     backend="simulate", real=False, sizes=_simulated_sizes(job, trained, bits))
    if job.evaluate is not None:
        result.accuracy["post_training_quantized"] = float(job.evaluate(_simulated(job)[0]))
    result.notes += [_simulated_note(result.speedup_text(), bits),
                     "QAT: weights fine-tuned with fake quantization (straight-through gradients); "
                     "'post_training_quantized' accuracy is the same settings without QAT."]
    return _with_latency_note(result)
