"""Quantization-aware training: fine-tune with fake-quantized weights (straight-through gradients)."""
from __future__ import annotations

import warnings
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import NboptError, PartialResultWarning, check_on_interrupt
from ..inputs import check_module
from ..layers import eval_folded, weighted_layers
from ..model_state import working_copy
from .api import quantize
from .options import QuantOptions, check_finite_weights, check_layer_names
from .simulate import act_quantizers, attach, bake, calibrate


def _labelled(train_data: Any):
    for batch in train_data:
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise NboptError("train_data must yield (inputs, targets) pairs, e.g. a DataLoader of a TensorDataset.")
        yield batch


def qat(model: nn.Module, train_data: Any, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *,
        epochs: int = 2, lr: float = 1e-3, calib: Any = None, progress: bool = True,
        on_interrupt: str = "return", **quantize_options: Any) -> Any:
    """Fine-tune a BN-folded copy with fake quantization, then return ``quantize(...)``'s QuantResult.

    ``quantize_options``: weight_bits, act_bits, granularity, symmetric, observer, layer_bits, evaluate.
    Activation ranges are calibrated on ``calib`` (default: the training inputs) before and after.
    The user's model is never modified, even if training is interrupted.

    Interrupting training (Ctrl-C, the notebook's stop button) with ``on_interrupt="return"`` (default),
    once at least one optimizer step has finished, converts the weights reached so far and returns a
    result with ``partial=True`` and a :class:`PartialResultWarning` (press stop again to stop the
    conversion too). Before the first step, with ``on_interrupt="raise"``, or during conversion, the
    KeyboardInterrupt propagates.
    """
    check_module(model)
    evaluate = quantize_options.pop("evaluate", None)
    keys = {"weight_bits", "act_bits", "granularity", "symmetric", "observer", "layer_bits", "percentile"}
    unknown = set(quantize_options) - keys
    if unknown:
        raise NboptError(f"unknown option(s) {sorted(unknown)} for qat; allowed: {sorted(keys)} and evaluate.")
    opts = QuantOptions(**{**quantize_options, "layer_bits": dict(quantize_options.get("layer_bits") or {})}).validate()
    if epochs < 1 or lr <= 0:
        raise NboptError(f"epochs={epochs} and lr={lr} must be positive (e.g. epochs=3, lr=1e-3).")
    check_on_interrupt(on_interrupt)
    check_layer_names(model, opts.layer_bits)
    check_finite_weights(model)
    calib = calib if calib is not None else [x for x, _ in _labelled(train_data)]
    trained, stopped = _train(eval_folded(working_copy(model)), train_data, loss_fn, opts, epochs, lr, calib,
                              progress, on_interrupt)
    result = quantize(model, calib, **{k: getattr(opts, k) for k in keys - {"layer_bits"}},
                      layer_bits=opts.layer_bits or None, evaluate=evaluate, progress=progress, repeat=3)
    result = _replace_model(result, trained, model, calib, opts, evaluate, progress)
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


def _replace_model(result, trained: nn.Module, model: nn.Module, calib, opts: QuantOptions, evaluate, progress):
    """Swap the post-training quantized model of ``result`` for the QAT one and re-measure."""
    from .calibration import run_batches
    from .metrics import fidelity
    from .report import layer_report
    from .simulate import weight_qparams

    reference = working_copy(model).eval()
    result.model = trained
    result.fidelity = fidelity(run_batches(reference, calib, progress=progress, desc="fp32 outputs"),
                               run_batches(trained, calib, progress=progress, desc="QAT outputs"))
    if evaluate is not None:
        result.accuracy["post_training_quantized"] = result.accuracy["quantized"]
        result.accuracy["quantized"] = float(evaluate(trained))
    qparams = {n: weight_qparams(m.weight, opts.bits_for(n), opts) for n, m in weighted_layers(trained).items()}
    result.report = layer_report(trained, None, qparams, opts, None)
    result.notes.append("QAT: weights fine-tuned with fake quantization (straight-through gradients); "
                        "'post_training_quantized' accuracy is the same settings without QAT.")
    result.mode = "qat"
    return result
