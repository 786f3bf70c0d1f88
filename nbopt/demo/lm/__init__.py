"""A small trained language model, offline: a byte-level Llama trained on Python's own documentation.

>>> from nbopt.demo import lm
>>> model = lm.load()                      # transformers LlamaForCausalLM, trained weights, eval mode
>>> lm.perplexity(model)                   # measured on the held-out documents
>>> lm.calibration_data(), lm.example_input(), lm.tokenizer.decode(ids)

Needs ``transformers`` (``pip install "nbopt[transformers]"``).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .corpus import corpus_matches, corpus_sha256, documents, is_heldout, text
from .data import (PROMPT, calibration_data, example_input, logits_of, nll, perplexity, tokens,
                   unigram_perplexity, windows)
from .model import CONFIG, SEQ_LEN, build
from .tokenizer import ByteTokenizer, tokenizer

WEIGHTS = Path(__file__).with_name("demo_lm.pt")
RECORD = Path(__file__).with_name("demo_lm.json")


def load(path: Path | str = WEIGHTS) -> torch.nn.Module:
    """The demo LM with its shipped trained weights (stored in fp16, loaded as fp32), in eval mode."""
    model = build()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval()


def record() -> dict:
    """What the training run measured (perplexities, corpus hash, Python version, steps)."""
    return json.loads(RECORD.read_text())


__all__ = ["load", "record", "build", "perplexity", "nll", "unigram_perplexity", "calibration_data",
           "example_input", "tokenizer", "ByteTokenizer", "tokens", "windows", "text", "documents",
           "is_heldout", "corpus_sha256", "corpus_matches", "logits_of", "CONFIG", "SEQ_LEN", "PROMPT",
           "WEIGHTS", "RECORD"]
