"""Fidelity of a quantized model's outputs against fp32: top-1 agreement, cosine similarity, SQNR; for language
models (logits of shape (N, T, V)) also the KL divergence of the next-token distributions (:func:`lm_fidelity`)."""
from __future__ import annotations

import math
from typing import Any

import torch

from ..inputs import tensors_in
from .observers import sqnr_db


def _first(output: Any) -> torch.Tensor | None:
    """The first tensor of one batch's output (detached, float32), None when it holds no tensor."""
    t = next(tensors_in(output), None)
    return None if t is None else t.detach().float()


def _per_sample(t: torch.Tensor) -> torch.Tensor:
    """``t`` as (N, features): one row per sample (a 0-d output is one sample of one value)."""
    return t.reshape(t.shape[0], -1) if t.dim() > 0 else t.reshape(1, 1)


def class_positions(t: torch.Tensor) -> torch.Tensor | None:
    """``t`` as (positions, classes) for top-1 agreement, or None when it has no class dimension.

    (N, C): one position per sample, classes C (dim 1). (N, T, V): one position per token, classes V (the
    last dim). (N, C, *spatial) with 2+ spatial dims: one position per sample and pixel/voxel, classes C
    (dim 1). A 0-d or (N,) output, or a class dimension of size 1, has no classes to agree on.
    """
    if t.dim() < 2:
        return None
    if t.dim() == 3:  # sequence logits: (N, T, V), classes on the last dim
        return t.reshape(-1, t.shape[-1]) if t.shape[-1] > 1 else None
    if t.shape[1] <= 1:
        return None
    return t.movedim(1, -1).reshape(-1, t.shape[1])  # (N, C) or (N, C, H, W, ...): classes on dim 1


def fidelity(reference: list[Any], quantized: list[Any]) -> dict[str, Any]:
    """Agreement of quantized outputs with fp32 outputs over the same batches (the first tensor of each output).

    Returns ``cosine`` (mean over samples of the cosine between each sample's flattened outputs), ``sqnr_db``
    (over every value), ``max_abs_diff`` and, when the output has a class dimension, ``top1_agreement``: the
    fraction of positions whose argmax agrees. Which dimension holds the classes is decided by the rank:

    * (N, C): one prediction per sample, argmax over C (dim 1): classifiers.
    * (N, T, V): one prediction per token, argmax over the last dim V: sequence logits.
    * (N, C, H, W, ...) (4-D and up): one prediction per position (pixel, voxel), argmax over C (dim 1):
      segmentation maps. So deeplab's agreement is the fraction of pixels whose class agrees.
    * (N,) or 0-d, or a class dimension of size 1: no ``top1_agreement``.

    For (N, T, V) logits ``kl_div`` is also reported: the mean over tokens of KL(fp32 || quantized) of the
    softmax distributions, in nats.

    A batch whose output is empty (0 elements, e.g. a detector that found nothing) or whose quantized output
    has another shape than the fp32 one (e.g. another number of detections) is left out, and a ``note`` key
    (a string) says how many; when no batch is left, every metric is NaN.
    """
    refs, qs, empty, mismatched = [], [], 0, 0
    for r_out, q_out in zip(reference, quantized):
        r, q = _first(r_out), _first(q_out)
        if r is None or q is None or r.numel() == 0 or q.numel() == 0:
            empty += 1
        elif r.shape != q.shape:
            mismatched += 1
        else:
            refs.append(r)
            qs.append(q)
    skipped = []
    if empty:
        skipped.append(f"{empty} with an empty output (0 elements)")
    if mismatched:
        skipped.append(f"{mismatched} whose quantized output shape differs from fp32's")
    if not refs:
        out: dict[str, Any] = {"cosine": math.nan, "sqnr_db": math.nan, "max_abs_diff": math.nan,
                               "top1_agreement": math.nan}
        out["note"] = (f"fidelity not measured: no batch had comparable outputs ({'; '.join(skipped)} of "
                       f"{len(reference)}).")
        return out
    cos = torch.cat([torch.nn.functional.cosine_similarity(_per_sample(r), _per_sample(q), dim=1)
                     for r, q in zip(refs, qs)])
    out = {
        "cosine": float(cos.mean()),
        "sqnr_db": sqnr_db(torch.cat([r.reshape(-1) for r in refs]), torch.cat([q.reshape(-1) for q in qs])),
        "max_abs_diff": max(float((r - q).abs().max()) for r, q in zip(refs, qs)),
    }
    agree = []
    for r, q in zip(refs, qs):
        rc, qc = class_positions(r), class_positions(q)
        if rc is not None:
            agree.append(rc.argmax(1) == qc.argmax(1))
    if agree:
        out["top1_agreement"] = float(torch.cat(agree).float().mean())
    if all(r.dim() == 3 and r.shape[-1] > 1 for r in refs):  # sequence logits: next-token distributions
        out["kl_div"] = kl_divergence(refs, qs)
    if skipped:
        out["note"] = (f"fidelity measured on {len(refs)} of {len(reference)} batches; left out: "
                       f"{'; '.join(skipped)}.")
    return out


def kl_divergence(reference: list[torch.Tensor], quantized: list[torch.Tensor]) -> float:
    """Mean over positions of KL(softmax(ref) || softmax(q)) in nats; logits (..., V) per batch."""
    total, count = 0.0, 0
    for r, q in zip(reference, quantized):
        lp = torch.log_softmax(r.float().reshape(-1, r.shape[-1]), -1)
        lq = torch.log_softmax(q.float().reshape(-1, q.shape[-1]), -1)
        total += float((lp.exp() * (lp - lq)).sum())
        count += lp.shape[0]
    return total / max(1, count)


def lm_fidelity(reference: torch.nn.Module, model: torch.nn.Module, data: Any, *,
                perplexity: Any = None) -> dict[str, float]:
    """A (quantized or pruned) language model against its fp32 ``reference`` on ``data`` (batches of input ids).

    ``token_top1``: fraction of positions whose most likely next token agrees with fp32's; ``kl_div``: mean
    KL(fp32 || model) of the next-token distributions (nats); with ``perplexity`` (``perplexity(model) -> float``,
    e.g. ``nbopt.demo.lm.perplexity``) also ``perplexity`` and ``fp32_perplexity``. Neither model is changed.
    """
    from ..inputs import batches, call
    refs, qs = [], []
    with torch.no_grad():
        for batch in batches(data):
            refs.append(_first(call(reference, batch)))
            qs.append(_first(call(model, batch)))
    agree = torch.cat([(r.argmax(-1) == q.argmax(-1)).reshape(-1) for r, q in zip(refs, qs)])
    out = {"token_top1": float(agree.float().mean()), "kl_div": kl_divergence(refs, qs)}
    if perplexity is not None:
        out["perplexity"] = float(perplexity(model))
        out["fp32_perplexity"] = float(perplexity(reference))
    return out


#: words in an evaluator's name that mean "lower is better" (perplexity, loss, NLL, error rate)
LOWER_IS_BETTER = ("perplexity", "ppl", "loss", "nll", "error")


def score_name(evaluate: Any) -> str:
    """The name of what ``evaluate(model)`` returns, from the function's name (a ``functools.partial``'s
    function's): ``nbopt.demo.lm.perplexity`` -> ``"perplexity"``; ``"accuracy"`` when it names nothing known."""
    fn = getattr(evaluate, "func", evaluate)  # functools.partial
    name = str(getattr(fn, "__name__", "") or type(fn).__name__).lower()
    return next((w for w in LOWER_IS_BETTER if w in name), "accuracy")


def lower_is_better(evaluate: Any) -> bool:
    """Whether ``evaluate``'s score improves downwards (perplexity, a loss); decided by :func:`score_name`."""
    return score_name(evaluate) != "accuracy"
