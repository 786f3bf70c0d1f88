"""Fidelity of a quantized model's outputs against fp32: top-1 agreement, cosine similarity, SQNR."""
from __future__ import annotations

from typing import Any

import torch

from ..inputs import tensors_in
from .observers import sqnr_db


def _flat_outputs(outputs: list[Any]) -> torch.Tensor:
    """First tensor of each batch's output, as (N, features) float32."""
    firsts = [next(tensors_in(o)).detach().float() for o in outputs]
    return torch.cat([t.reshape(t.shape[0], -1) if t.dim() > 0 else t.reshape(1, 1) for t in firsts])


def fidelity(reference: list[Any], quantized: list[Any]) -> dict[str, float]:
    """Agreement of quantized outputs with fp32 outputs over the same batches."""
    ref, q = _flat_outputs(reference), _flat_outputs(quantized)
    out = {
        "cosine": float(torch.nn.functional.cosine_similarity(ref, q, dim=1).mean()),
        "sqnr_db": sqnr_db(ref, q),
        "max_abs_diff": float((ref - q).abs().max()),
    }
    if ref.shape[1] > 1:
        out["top1_agreement"] = float((ref.argmax(1) == q.argmax(1)).float().mean())
    return out
