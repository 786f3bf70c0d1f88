"""Batch-1 decode tokens/s and prefill time of a Llama: fp32 eager vs fp32 torch.compile vs bf16 vs each nbopt
program (int8 and int4 weight-only on PyTorch's aten CPU kernels, eager and compiled; on onnxruntime's MatMulNBits
per layer; the whole decode step as one onnxruntime graph, ``nbopt.export_decoder``, fp32 and MatMulNBits;
torchao's int8 weight-only and int8 dynamic), side by side in one run.

Two models: a ~200M-parameter Llama config with random weights (decode speed does not depend on the values) and
the trained demo LM. A greedy loop with transformers' KV cache: prefill a ``--prompt``-token prompt, then decode
``--tokens`` tokens one at a time. Eager programs use a ``DynamicCache``; compiled ones (``torch.compile`` of the
model's forward, default inductor) a ``StaticCache`` so every decode step has the same shapes, with the prefill run
eager. All programs are built first, then timed in ``--repeat`` interleaved rounds (medians, and the min-max of
the rounds), so a change of machine load hits every program alike. 2 threads by default. The header names the
CPU capability as torch reports it (AVX2 / AVX512 / VNNI) and the load average before and after.
Decoding on a CPU is bound by the bytes of weights read per token where the kernels keep up: the ceiling is ~4x
(int8) and ~8x (int4) over fp32.
"(onnxruntime graph)" programs run prefill and steps through ``OnnxDecoder`` (numpy in, numpy out, the cache as
the session's inputs and outputs).
Usage: python benchmarks/llm_decode.py [--models big,demo] [--tokens 16] [--prompt 32] [--repeat 3]
       [--no-compile] [--threads 2] [--programs "int8,int4 g128"] [--skip torchao]
"""
from __future__ import annotations

import argparse
import copy
import gc
import os
import statistics
import time
import warnings
from typing import Callable

import torch

from nbopt.model_state import size_bytes
from nbopt.quantization.weight_only import dynamic_int8, quantize_weights

BIG = dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=12,
           num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=2048)
REFS = ("fp32 eager", "bf16 eager", "fp32 torch.compile", "fp32 (onnxruntime graph)")
GRAPH = "(onnxruntime graph)"  # the whole decode step as one onnxruntime session (nbopt.deployment.export_decoder)


def big_llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**BIG)).eval()


class Program:
    """A model to time: eager (DynamicCache) or with a compiled decode step (StaticCache)."""

    def __init__(self, model: torch.nn.Module | None, nbytes: int, compiled: bool = False, decoder=None) -> None:
        self.model, self.nbytes, self.compiled, self.decoder = model, nbytes, compiled, decoder
        self.step: Callable = torch.compile(model.forward, dynamic=False) if compiled else model

    def cache(self, length: int):
        from transformers import DynamicCache, StaticCache
        return StaticCache(config=self.model.config, max_cache_len=length) if self.compiled else DynamicCache()


@torch.no_grad()
def decode(prog: Program, prompt: torch.Tensor, tokens: int) -> tuple[float, float, list[int]]:
    """(prefill seconds, decode tokens/s, greedy tokens) of one generation with a KV cache."""
    if prog.decoder is not None:
        return _decode_graph(prog.decoder, prompt, tokens)
    n = prompt.shape[1]
    cache = prog.cache(n + tokens)
    t0 = time.perf_counter()
    out = prog.model(input_ids=prompt, past_key_values=cache, use_cache=True, cache_position=torch.arange(n))
    nxt = out.logits[:, -1:].argmax(-1)
    t1 = time.perf_counter()
    seen = []
    for i in range(tokens):
        out = prog.step(input_ids=nxt, past_key_values=cache, use_cache=True, cache_position=torch.tensor([n + i]))
        nxt = out.logits[:, -1:].argmax(-1)
        seen.append(int(nxt))
    t2 = time.perf_counter()
    return t1 - t0, tokens / (t2 - t1), seen


def _decode_graph(dec, prompt: torch.Tensor, tokens: int) -> tuple[float, float, list[int]]:
    """The same greedy loop on an exported decoder: one onnxruntime call per step, the cache as its in/outputs."""
    t0 = time.perf_counter()
    logits, cache = dec.prefill(prompt)
    nxt = logits.argmax(-1)[:, None]
    t1 = time.perf_counter()
    seen = []
    for _ in range(tokens):
        logits, cache = dec.step(nxt, cache)
        nxt = logits.argmax(-1)[:, None]
        seen.append(int(nxt[0, 0]))
    t2 = time.perf_counter()
    return t1 - t0, tokens / (t2 - t1), seen


def _graph(model: torch.nn.Module, bits: int | None = None, group: int | None = None) -> Program:
    """The whole decode step exported to one onnxruntime session: fp32, or the MatMulNBits program."""
    from nbopt.deployment import export_decoder
    if bits is None:
        return Program(None, size_bytes(model), decoder=export_decoder(model))
    r = quantize_weights(model, bits, group, kernel="onnxruntime", progress=False)
    return Program(None, r.size_bytes, decoder=export_decoder(r.model))


def variants(model: torch.nn.Module, compile_: bool):
    """(name, builder) of each program; built one at a time."""
    yield "fp32 eager", lambda: Program(model, size_bytes(model))
    yield "bf16 eager", lambda: Program(copy.deepcopy(model).to(torch.bfloat16), size_bytes(model) // 2)
    if compile_:
        yield "fp32 torch.compile", lambda: Program(model, size_bytes(model), compiled=True)
    yield f"fp32 {GRAPH}", lambda: _graph(model)
    for bits, group, tag in ((8, None, "int8"), (4, 128, "int4 g128"), (4, 32, "int4 g32")):
        yield f"{tag} (aten)", lambda b=bits, g=group: _q(model, b, g, "aten")
        if compile_:
            yield f"{tag} (aten) torch.compile", lambda b=bits, g=group: _q(model, b, g, "aten", compiled=True)
        yield f"{tag} (onnxruntime MatMulNBits)", lambda b=bits, g=group: _q(model, b, g, "onnxruntime")
        if compile_:
            yield f"{tag} (onnxruntime MatMulNBits) torch.compile", \
                lambda b=bits, g=group: _q(model, b, g, "onnxruntime", compiled=True)
        yield f"{tag} MatMulNBits {GRAPH}", lambda b=bits, g=group: _graph(model, b, g)
    yield "int8 (torchao Int8WeightOnlyConfig)", lambda: _q(model, 8, None, "torchao")
    yield "int8 dynamic (torchao Int8DynamicActivationInt8WeightConfig)", \
        lambda: _r(dynamic_int8(model))


def _q(model, bits, group, kernel, compiled=False) -> Program:
    r = quantize_weights(model, bits, group, kernel=kernel, progress=False)
    prog = Program(r.model, r.size_bytes)
    if compiled:  # the program's own compiled decode step (nbopt's WeightOnlyResult.decode_step)
        prog.compiled, prog.step = True, r.decode_step()
    return prog


def _r(result) -> Program:
    return Program(result.model, result.size_bytes)


def _selected(label: str, args) -> bool:
    wanted = [p.strip() for p in args.programs.split(",") if p.strip()]
    skip = [p.strip() for p in args.skip.split(",") if p.strip()]
    if label == "fp32 eager":
        return True
    if any(s in label for s in skip):
        return False
    return not wanted or any(w in label for w in wanted) or (label in REFS and not args.only)


def run(name: str, model: torch.nn.Module, args) -> None:
    prompt = torch.randint(0, model.config.vocab_size - 2, (1, args.prompt), generator=torch.Generator().manual_seed(0))
    n = sum(p.numel() for p in model.parameters())
    load0 = os.getloadavg()
    print(f"\n### {name}: {n / 1e6:.1f}M parameters, prompt {args.prompt}, {args.tokens} new tokens, "
          f"{torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{os.cpu_count()} CPUs, load average {load0[0]:.1f} / {load0[1]:.1f} / {load0[2]:.1f} (1/5/15 min) "
          f"at start\n", flush=True)
    progs: dict[str, Program] = {}
    build_s: dict[str, float] = {}
    failed: list[str] = []
    for label, build in variants(model, args.compile):
        if not _selected(label, args):
            continue
        t = time.perf_counter()
        try:
            progs[label] = build()
            decode(progs[label], prompt, 2)  # warm up (and compile)
        except Exception as exc:  # a program that does not build or run here is reported, not hidden
            progs.pop(label, None)
            failed.append(f"| {label} | - | failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]} |")
        build_s[label] = time.perf_counter() - t
    # interleaved: each round times every program once, so a change of machine load hits all of them
    runs: dict[str, list[tuple[float, float, list[int]]]] = {k: [] for k in progs}
    for _ in range(args.repeat):
        for label, prog in progs.items():
            runs[label].append(decode(prog, prompt, args.tokens))
    load1 = os.getloadavg()
    print("| program | weights (MiB) | build+warm-up (s) | prefill (ms) | decode tokens/s | min-max tokens/s | "
          "vs fp32 eager | vs bf16 | vs compile fp32 | vs fp32 onnxruntime graph | tokens = fp32 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    tps = {label: statistics.median(r[1] for r in rs) for label, rs in runs.items()}
    ref_tokens = runs["fp32 eager"][0][2] if "fp32 eager" in runs else None
    for label, prog in progs.items():
        rs = runs[label]
        pre = statistics.median(r[0] for r in rs) * 1e3
        lo, hi = min(r[1] for r in rs), max(r[1] for r in rs)
        ratios = [_ratio(tps[label], tps.get(k)) for k in REFS]
        same = sum(a == b for a, b in zip(rs[0][2], ref_tokens)) if ref_tokens else 0
        print(f"| {label} | {prog.nbytes / 2 ** 20:.1f} | {build_s[label]:.0f} | {pre:.1f} | {tps[label]:.2f} | "
              f"{lo:.2f}-{hi:.2f} | " + " | ".join(ratios) + f" | {same}/{len(rs[0][2])} |", flush=True)
    for line in failed:
        print(line)
    print(f"\nload average {load1[0]:.1f} / {load1[1]:.1f} / {load1[2]:.1f} (1/5/15 min) at the end; "
          f"{args.repeat} interleaved rounds of {args.tokens} tokens", flush=True)
    progs.clear()
    gc.collect()


def _ratio(tps: float, base: float | None) -> str:
    return f"{tps / base:.2f}x" if base else "-"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="big,demo")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="skip the torch.compile programs (their compile takes minutes on 2 cores)")
    parser.add_argument("--programs", default="", help="comma-separated substrings: time only matching programs "
                        "(fp32 eager is always timed, as the reference; bf16 and compiled fp32 too unless --only)")
    parser.add_argument("--only", action="store_true", help="with --programs: do not add bf16 / compiled fp32")
    parser.add_argument("--skip", default="", help="comma-separated substrings of programs not to time, "
                        "e.g. 'torchao' (its dequantizing kernels take minutes per round here)")
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
