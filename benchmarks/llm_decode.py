"""Batch-1 decode tokens/s and prefill time of a Llama: fp32 eager vs bf16 vs torch.compile fp32 vs each nbopt
program (int8 and int4 weight-only on PyTorch's CPU kernels, torchao's int8 weight-only and int8 dynamic), side by
side in one run.

Two models: a ~200M-parameter Llama config with random weights (decode speed does not depend on the values) and
the trained demo LM. A greedy loop with transformers' KV cache: prefill a ``--prompt``-token prompt, then decode
``--tokens`` tokens one at a time; all programs are built first, then timed in ``--repeat`` interleaved rounds
(medians), so a change of machine load hits every program alike. 2 threads by default.
Decoding on a CPU is bound by the bytes of weights read per token: the ceiling is ~4x (int8) and ~8x (int4)
over fp32. The table names the CPU's capability (AVX2 / VNNI / AVX512) as torch reports it.
Usage: python benchmarks/llm_decode.py [--models big,demo] [--tokens 16] [--prompt 32] [--repeat 3]
       [--no-compile] [--threads 2] [--programs "int8 weight-only (aten),int4"]
"""
from __future__ import annotations

import argparse
import gc
import statistics
import time
import warnings

import torch

from nbopt.model_state import size_bytes
from nbopt.quantization.weight_only import dynamic_int8, quantize_weights

BIG = dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=12,
           num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=2048)


def big_llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**BIG)).eval()


@torch.no_grad()
def decode(model: torch.nn.Module, prompt: torch.Tensor, tokens: int) -> tuple[float, float]:
    """(prefill seconds, decode tokens/s) of one greedy generation with a KV cache."""
    from transformers import DynamicCache
    cache = DynamicCache()
    t0 = time.perf_counter()
    out = model(input_ids=prompt, past_key_values=cache, use_cache=True)
    nxt = out.logits[:, -1:].argmax(-1)
    t1 = time.perf_counter()
    for _ in range(tokens):
        out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
        nxt = out.logits[:, -1:].argmax(-1)
    t2 = time.perf_counter()
    return t1 - t0, tokens / (t2 - t1)


def variants(model: torch.nn.Module, compile_: bool):
    """(name, builder) of each program; built one at a time so only one copy is held."""
    yield "fp32 eager", lambda: (model, size_bytes(model))
    yield "bf16 eager", lambda: (_bf16(model), size_bytes(model) // 2)
    if compile_:
        yield "fp32 torch.compile", lambda: (torch.compile(model, dynamic=True), size_bytes(model))
    yield "int8 weight-only (aten)", lambda: _r(quantize_weights(model, 8, progress=False))
    yield "int4 weight-only g128 (aten)", lambda: _r(quantize_weights(model, 4, 128, progress=False))
    yield "int4 weight-only g32 (aten)", lambda: _r(quantize_weights(model, 4, 32, progress=False))
    yield "int8 weight-only (torchao Int8WeightOnlyConfig)", \
        lambda: _r(quantize_weights(model, 8, kernel="torchao", progress=False))
    yield "int8 dynamic (torchao Int8DynamicActivationInt8WeightConfig)", lambda: _r(dynamic_int8(model))


def _bf16(model):
    import copy
    return copy.deepcopy(model).to(torch.bfloat16)


def _r(result):
    return result.model, result.size_bytes


def run(name: str, model: torch.nn.Module, args) -> None:
    prompt = torch.randint(0, model.config.vocab_size - 2, (1, args.prompt), generator=torch.Generator().manual_seed(0))
    n = sum(p.numel() for p in model.parameters())
    print(f"\n### {name}: {n / 1e6:.1f}M parameters, prompt {args.prompt}, {args.tokens} new tokens, "
          f"{torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}\n")
    print("| program | weights (MiB) | prefill (ms) | decode tokens/s | vs fp32 eager | vs bf16 | vs compile fp32 |")
    print("|---|---|---|---|---|---|---|")
    wanted = [p.strip() for p in args.programs.split(",") if p.strip()]
    progs: dict[str, tuple[torch.nn.Module, int]] = {}
    for label, build in variants(model, args.compile):
        if wanted and label != "fp32 eager" and not any(w in label for w in wanted):
            continue
        try:
            progs[label] = build()
            decode(progs[label][0], prompt, 2)  # warm up (and compile)
        except Exception as exc:  # a program that does not build or run here is reported, not hidden
            progs.pop(label, None)
            print(f"| {label} | - | failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]} | | | | |")
    # interleaved: each round times every program once, so a change of machine load hits all of them
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in progs}
    for _ in range(args.repeat):
        for label, (prog, _n) in progs.items():
            runs[label].append(decode(prog, prompt, args.tokens))
    ref: dict[str, float] = {}
    for label, (prog, nbytes) in progs.items():
        pre = statistics.median(r[0] for r in runs[label]) * 1e3
        tps = statistics.median(r[1] for r in runs[label])
        ref.setdefault(label, tps)
        ratios = [_ratio(tps, ref.get(k)) for k in ("fp32 eager", "bf16 eager", "fp32 torch.compile")]
        print(f"| {label} | {nbytes / 2 ** 20:.1f} | {pre:.1f} | {tps:.2f} | " + " | ".join(ratios) + " |", flush=True)
    progs.clear()
    gc.collect()


def _ratio(tps: float, base: float | None) -> str:
    return f"{tps / base:.2f}x" if base else "-"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="big,demo")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--programs", default="", help="comma-separated substrings: time only matching programs "
                        "(fp32 eager is always timed, as the reference)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated")
    for key in args.models.split(","):
        if key == "big":
            model = big_llama()
            run("random Llama (hidden 1024, 12 layers, GQA 16/4, vocab 32000)", model, args)
        else:
            from nbopt.demo import lm
            model = lm.load()
            run("demo LM (trained, byte-level)", model, args)
        del model
        gc.collect()


if __name__ == "__main__":
    main()
