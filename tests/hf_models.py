"""Small Hugging Face models built from configs (random weights, no download), shared by the tests.

Every builder returns ``(model, config)`` in eval mode; ``ids(config, batch, seq)`` makes token ids. The sizes
keep one forward to a fraction of a second on two cores. Tests that use them start with
``pytest.importorskip("transformers")``.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

SMALL = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, max_position_embeddings=1024)


def _eval(model: torch.nn.Module, cfg: Any) -> tuple[torch.nn.Module, Any]:
    torch.manual_seed(0)
    return model.eval(), cfg


def llama(num_key_value_heads: int = 2, **kw: Any) -> tuple[torch.nn.Module, Any]:
    """A Llama decoder with grouped-query attention (4 query heads, 2 key/value heads by default)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(**{**SMALL, "num_key_value_heads": num_key_value_heads, **kw})
    return _eval(LlamaForCausalLM(cfg), cfg)


def qwen2(**kw: Any) -> tuple[torch.nn.Module, Any]:
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    cfg = Qwen2Config(**{**SMALL, "num_key_value_heads": 2, **kw})
    return _eval(Qwen2ForCausalLM(cfg), cfg)


def mistral(sliding_window: int = 32, **kw: Any) -> tuple[torch.nn.Module, Any]:
    """A Mistral decoder with GQA and a sliding window shorter than the test sequences."""
    from transformers import MistralConfig, MistralForCausalLM
    torch.manual_seed(0)
    cfg = MistralConfig(**{**SMALL, "num_key_value_heads": 2, "sliding_window": sliding_window, **kw})
    return _eval(MistralForCausalLM(cfg), cfg)


def bert(**kw: Any) -> tuple[torch.nn.Module, Any]:
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    cfg = BertConfig(**{"vocab_size": 128, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "max_position_embeddings": 1024, **kw})
    return _eval(BertModel(cfg), cfg)


def gpt2(**kw: Any) -> tuple[torch.nn.Module, Any]:
    """GPT-2: its projections are ``transformers.pytorch_utils.Conv1D`` (weight shape (in, out))."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    cfg = GPT2Config(**{"vocab_size": 128, "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 1024, "bos_token_id": 0, "eos_token_id": 0, **kw})
    return _eval(GPT2LMHeadModel(cfg), cfg)


def t5(**kw: Any) -> tuple[torch.nn.Module, Any]:
    from transformers import T5Config, T5Model
    torch.manual_seed(0)
    cfg = T5Config(**{"vocab_size": 128, "d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2,
                      "num_decoder_layers": 2, "num_heads": 4, **kw})
    return _eval(T5Model(cfg), cfg)


def mixtral(**kw: Any) -> tuple[torch.nn.Module, Any]:
    """A Mixtral MoE decoder: 4 experts, 2 per token."""
    from transformers import MixtralConfig, MixtralForCausalLM
    torch.manual_seed(0)
    cfg = MixtralConfig(**{**SMALL, "num_key_value_heads": 2, "num_local_experts": 4, "num_experts_per_tok": 2,
                           **kw})
    return _eval(MixtralForCausalLM(cfg), cfg)


def qwen2_moe(**kw: Any) -> tuple[torch.nn.Module, Any]:
    """A Qwen2-MoE decoder: 4 routed experts (2 per token) and a shared expert."""
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM
    torch.manual_seed(0)
    cfg = Qwen2MoeConfig(**{**SMALL, "num_key_value_heads": 2, "num_experts": 4, "num_experts_per_tok": 2,
                            "moe_intermediate_size": 64, "shared_expert_intermediate_size": 128, **kw})
    return _eval(Qwen2MoeForCausalLM(cfg), cfg)


BUILDERS: dict[str, Callable[..., tuple[torch.nn.Module, Any]]] = {
    "llama": llama, "qwen2": qwen2, "mistral": mistral, "bert": bert, "gpt2": gpt2, "t5": t5,
    "mixtral": mixtral, "qwen2_moe": qwen2_moe,
}


def ids(cfg: Any, batch: int = 1, seq: int = 16, seed: int = 0) -> torch.Tensor:
    """Token ids of shape (batch, seq) within the config's vocabulary."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (batch, seq), generator=g)
