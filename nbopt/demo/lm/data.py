"""Token streams of the demo corpus, calibration batches, an example input and held-out perplexity."""
from __future__ import annotations

import functools
import math

import torch

from ...distillation import logits_of  # one helper for every caller; re-exported by demo.lm
from .corpus import text
from .model import SEQ_LEN
from .tokenizer import tokenizer

#: a fixed prompt from the held-out style of text
PROMPT = "The built-in function len() returns the number of items in a container. "
EVAL_CHUNKS = 64  # perplexity's default: 64 evenly spaced windows of SEQ_LEN held-out bytes (16k tokens)


@functools.lru_cache(maxsize=2)
def tokens(split: str = "train") -> torch.Tensor:
    """The whole split as one 1-D stream of byte tokens (int64)."""
    return torch.frombuffer(bytearray(text(split).encode("utf-8")), dtype=torch.uint8).long()


def windows(split: str, n: int | None, seq_len: int = SEQ_LEN) -> torch.Tensor:
    """``(n, seq_len)`` non-overlapping windows of ``split``, evenly spaced (all of them when ``n`` is None)."""
    stream = tokens(split)
    total = stream.numel() // seq_len
    if n is None or n >= total:
        idx = torch.arange(total)
    else:
        idx = torch.linspace(0, total - 1, n).round().long()
    return stream[: total * seq_len].reshape(total, seq_len)[idx].clone()


def calibration_data(n: int = 32, seq_len: int = 128, batch_size: int = 8) -> list[torch.Tensor]:
    """``n`` training windows of ``seq_len`` tokens, in batches of ``(batch_size, seq_len)`` input ids."""
    return list(torch.split(windows("train", n, seq_len), batch_size))


def example_input(batch: int = 1) -> torch.Tensor:
    """A fixed English prompt as ``(batch, T)`` input ids (BOS first)."""
    return tokenizer(PROMPT).repeat(batch, 1)


@torch.no_grad()
def nll(model: torch.nn.Module, split: str = "heldout", chunks: int | None = EVAL_CHUNKS,
        seq_len: int = SEQ_LEN, batch_size: int = 16) -> float:
    """Mean next-token negative log-likelihood (nats) over ``chunks`` windows of ``split``."""
    data = windows(split, chunks, seq_len)
    total, count = 0.0, 0
    for batch in torch.split(data, batch_size):
        kwargs = {"use_cache": False} if _is_hf(model) else {}
        logits = logits_of(model(batch, **kwargs)).float()
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                 batch[:, 1:].reshape(-1), reduction="sum")
        total += float(loss)
        count += batch[:, 1:].numel()
    return total / count


def perplexity(model: torch.nn.Module, split: str = "heldout", chunks: int | None = EVAL_CHUNKS,
               seq_len: int = SEQ_LEN) -> float:
    """Perplexity per byte token on ``split`` (held-out by default; ``chunks=None`` uses all of it)."""
    was_training = model.training
    model.eval()
    try:
        return math.exp(nll(model, split, chunks, seq_len))
    finally:
        model.train(was_training)


def unigram_perplexity(split: str = "heldout") -> float:
    """The baseline a model must beat: byte frequencies of the training text (add-one smoothed) on ``split``."""
    counts = torch.bincount(tokens("train"), minlength=256).double() + 1
    logp = (counts / counts.sum()).log()
    return math.exp(float(-logp[tokens(split)].mean()))


def _is_hf(model: torch.nn.Module) -> bool:
    return any(type(c).__module__.startswith("transformers") for c in (model, *list(model.children())[:1]))
