"""A causal language model's generation as one onnxruntime program: the forward with its KV cache exported once
(``torch.onnx``, dynamo), so a decode step is one session call instead of transformers' Python around every layer.

The graph's inputs are ``input_ids`` (batch, new tokens) and the cache of every layer (``past.{i}.key`` /
``past.{i}.value``: batch, kv heads, past tokens, head dim); its outputs the last position's ``logits`` and the
grown cache (``present.{i}.key`` / ``.value``, the optimum / onnxruntime-genai convention). Batch, new and past
lengths are symbolic, so the same program runs the prefill (past length 0) and every decode step. Weight-only
layers made by ``quantize_weights(kernel="onnxruntime")`` export as ``com.microsoft::MatMulNBits`` nodes holding
the same packed codes (RTN or GPTQ), so the whole step runs in onnxruntime's MLAS kernels. No attention mask:
prompts of one batch have equal lengths (no padding).
"""
from __future__ import annotations

import shutil
import tempfile
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError, require
from ..inputs import check_module
from ..model_state import preserved, working_copy

MOE_EXPORT = "batched_mm"  # transformers' experts implementation that exports (grouped_mm is a custom op)
_SAMPLE = dict(batch=2, new=3, past=5)  # distinct, > 1: the exporter keeps every length symbolic


class _Step(nn.Module):
    """``(input_ids, *past) -> (last logits, *present)`` of a transformers causal LM, the cache as tensors."""

    def __init__(self, model: nn.Module, layers: int) -> None:
        super().__init__()
        self.model, self.layers = model, layers

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for i in range(self.layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        present = [t for layer in cache.layers[: self.layers] for t in (layer.keys, layer.values)]
        return (out.logits[:, -1], *present)


def cache_names(layers: int, prefix: str) -> list[str]:
    """``{prefix}.{i}.key`` / ``.value`` for every layer, in the graph's input (``past``) or output
    (``present``) order."""
    return [f"{prefix}.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]


def cache_shape(config: Any) -> tuple[int, int, int]:
    """(layers, kv heads, head dim) of a transformers decoder config."""
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, kv, dim


@dataclass
class OnnxDecoder:
    """An exported causal LM: ``prefill`` a prompt, ``step`` one token at a time, or ``generate`` greedily.

    ``path``: the ONNX file (weights in a ``.data`` file beside it); ``onnx_bytes``: both files' size;
    ``matmul_nbits``: the count of ``MatMulNBits`` nodes (weight-only layers) in the graph; ``max_abs_error``:
    the largest difference of its logits from the torch model's on a check prompt (prefill and two steps).
    """

    session: Any
    layers: int
    kv_heads: int
    head_dim: int
    path: Path
    onnx_bytes: int
    matmul_nbits: int
    max_abs_error: float = float("nan")
    notes: list[str] = field(default_factory=list)

    def empty_cache(self, batch: int = 1) -> list[np.ndarray]:
        shape = (batch, self.kv_heads, 0, self.head_dim)
        return [np.zeros(shape, np.float32) for _ in range(2 * self.layers)]

    def run(self, input_ids: Any, cache: list[Any]) -> tuple[np.ndarray, list[Any]]:
        """(last-position logits, grown cache) for ``input_ids`` (batch, new tokens) after ``cache``."""
        feed = {"input_ids": _ids(input_ids), **dict(zip(self._past_names, cache))}
        logits, *present = self.session.run(None, feed)
        return logits, present

    def prefill(self, input_ids: Any) -> tuple[np.ndarray, list[Any]]:
        """Logits after the prompt ``input_ids`` (batch, length) and its cache."""
        ids = _ids(input_ids)
        return self.run(ids, self.empty_cache(ids.shape[0]))

    def step(self, token: Any, cache: list[Any]) -> tuple[np.ndarray, list[Any]]:
        """One decode step: ``token`` (batch, 1)."""
        return self.run(_ids(token), cache)

    def generate(self, input_ids: Any, max_new_tokens: int = 16) -> torch.Tensor:
        """Greedy continuation: ``input_ids`` followed by ``max_new_tokens`` new tokens (batch, length + new)."""
        ids = _ids(input_ids)
        logits, cache = self.prefill(ids)
        out = [ids]
        for _ in range(max_new_tokens):
            nxt = logits.argmax(-1)[:, None].astype(np.int64)
            out.append(nxt)
            logits, cache = self.step(nxt, cache)
        return torch.from_numpy(np.concatenate(out, 1))

    def __post_init__(self) -> None:
        self._past_names = cache_names(self.layers, "past")

    def __repr__(self) -> str:
        return (f"OnnxDecoder({self.layers} layers, {self.matmul_nbits} MatMulNBits, "
                f"{self.onnx_bytes / 2**20:.1f} MiB, {self.path.name})")


def _ids(value: Any) -> np.ndarray:
    a = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.integer):
        raise InputError(f"input_ids must be integer token ids of shape (batch, length); got {a.dtype} of shape "
                         f"{a.shape}. Pass e.g. tokenizer(text, return_tensors='pt').input_ids.")
    return np.ascontiguousarray(a, dtype=np.int64)  # no copy when it already is


def _check(model: nn.Module) -> Any:
    check_module(model)
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "num_hidden_layers") or not hasattr(model, "generation_config"):
        raise InputError(f"export_decoder needs a transformers causal language model (…ForCausalLM); got "
                         f"{type(model).__name__}. Export other models with nbopt.export(model, inputs).")
    from ..quantization.weight_only import Int4WeightOnlyLinear, Int8WeightOnlyLinear

    unexportable = sorted({type(m).__name__ for m in model.modules()
                           if isinstance(m, (Int8WeightOnlyLinear, Int4WeightOnlyLinear))})
    if unexportable:
        raise InputError(f"the model holds {', '.join(unexportable)} layers (PyTorch's aten kernels), which ONNX "
                         "cannot express: quantize with quantize_weights(..., kernel='onnxruntime') (MatMulNBits), "
                         "then export that model.")
    return config


def export_decoder(model: nn.Module, path: str | Path | None = None, *, threads: int | None = None
                   ) -> OnnxDecoder:
    """Export a transformers causal LM (fp32, or weight-only from ``quantize_weights(kernel="onnxruntime")``)
    for generation in one onnxruntime session; ``model`` is not changed. ``path``: where the ONNX file goes
    (a temporary directory, removed with the decoder, when None); ``threads``: onnxruntime's intra-op threads
    (torch's count when None)."""
    config = _check(model)
    require("onnxruntime", extra="int8", purpose="the onnxruntime decoder")
    require("onnxscript", extra="int8", purpose="exporting the decoder to ONNX")
    onnx = require("onnx", extra="int8", purpose="exporting the decoder to ONNX")
    from ..graph import export_error, ort_session, quiet
    from ..quantization.weight_only import onnx_translations

    layers, kv, dim = cache_shape(config)
    tmp = None
    if path is None:
        tmp = Path(tempfile.mkdtemp(prefix="nbopt-decoder-"))
        path = tmp / "decoder.onnx"
    path = Path(path)
    copy = working_copy(model).eval().float()
    if hasattr(copy, "set_experts_implementation") and getattr(config, "_experts_implementation", None):
        copy.set_experts_implementation(MOE_EXPORT)  # every expert on every token: no data-dependent routing
    step = _Step(copy, layers).eval()
    b, s, t = _SAMPLE["batch"], _SAMPLE["new"], _SAMPLE["past"]
    ids = torch.randint(0, int(config.vocab_size), (b, s))
    past = [torch.zeros(b, kv, t, dim) for _ in range(2 * layers)]
    dims = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("past", min=0, max=1 << 20)
    new = torch.export.Dim("new", min=1, max=1 << 20)
    shapes = ({0: dims[0], 1: new}, tuple({0: dims[0], 2: dims[1]} for _ in past))  # *past: one entry
    names, outs = ["input_ids", *cache_names(layers, "past")], ["logits", *cache_names(layers, "present")]
    try:
        with quiet(), torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*The axis name.*will not be used")  # exporter's own notice
            torch.onnx.export(step, (ids, *past), str(path), dynamo=True, dynamic_shapes=shapes, input_names=names,
                              output_names=outs, custom_translation_table=onnx_translations(), optimize=True,
                              external_data=True, verbose=False)
    except Exception as exc:  # noqa: BLE001 - worded for the user, with the module at fault
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise export_error(exc, model, "decoder ONNX") from exc
    graph = onnx.load(str(path), load_external_data=False).graph
    nbits = sum(n.op_type == "MatMulNBits" for n in graph.node)
    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    dec = OnnxDecoder(ort_session(path, threads=threads, extra="int8", purpose="the onnxruntime decoder"),
                      layers, kv, dim, path, size, nbits)
    if tmp is not None:
        weakref.finalize(dec, shutil.rmtree, tmp, True)
    dec.max_abs_error = verify(dec, model, int(config.vocab_size))
    dec.notes.append(f"logits within {dec.max_abs_error:.2g} of the torch model's (prefill of 8 tokens, then 2 "
                     f"decode steps); {nbits} MatMulNBits layers, {size / 2**20:.1f} MiB on disk")
    return dec


@torch.no_grad()
def verify(dec: OnnxDecoder, model: nn.Module, vocab: int, prompt: int = 8, steps: int = 2) -> float:
    """Largest |logit| difference between ``dec`` and ``model`` over a prefill and ``steps`` decode steps."""
    ids = torch.randint(0, vocab, (1, prompt + steps), generator=torch.Generator().manual_seed(0))
    with preserved(model, eval_mode=True):
        ref = model(input_ids=ids).logits[0, prompt - 1:].float().numpy()
    logits, cache = dec.prefill(ids[:, :prompt])
    worst = float(np.abs(logits[0] - ref[0]).max())
    for i in range(steps):
        logits, cache = dec.step(ids[:, prompt + i:prompt + i + 1], cache)
        worst = max(worst, float(np.abs(logits[0] - ref[i + 1]).max()))
    return worst
