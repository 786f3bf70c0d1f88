"""The demo LM's architecture: a small Llama (transformers' LlamaForCausalLM) over byte tokens."""
from __future__ import annotations

from ...errors import require
from .tokenizer import BOS, EOS, VOCAB_SIZE

#: the architecture of the shipped weights; in-dims 128 and 512 are multiples of every group size (32/64/128)
CONFIG = dict(vocab_size=VOCAB_SIZE, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rope_theta=10000.0,
              rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=BOS, eos_token_id=EOS,
              pad_token_id=EOS)
SEQ_LEN = 256


def build(**overrides):
    """A fresh, randomly initialised demo LM (``overrides`` change the config)."""
    transformers = require("transformers", extra="transformers", purpose="the demo language model")
    cfg = transformers.LlamaConfig(**{**CONFIG, **overrides})
    cfg._attn_implementation = "sdpa"
    return transformers.LlamaForCausalLM(cfg)
