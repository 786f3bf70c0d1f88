"""Demo-LM quality under compression: held-out perplexity of fp32, int8/int4 weight-only (RTN and GPTQ, groups 32
and 128), Wanda vs magnitude at 50% and 2:4, and 2:4 + 4-bit, side by side in one run, with sizes and agreement.

Every number is measured on nbopt.demo.lm's held-out documents (64 windows of 256 bytes by default; ``--all`` uses
all of them). Calibration: 32 training windows of 128 tokens.
Usage: python benchmarks/llm_quality.py [--all] [--threads 2]
"""
from __future__ import annotations

import argparse

import torch

from nbopt.demo import lm
from nbopt.model_state import size_bytes
from nbopt.pruning.llm import prune_llm
from nbopt.quantization.metrics import lm_fidelity
from nbopt.quantization.weight_only import quantize_weights


def variants(model, calib):
    """(name, model, bytes) of each compressed variant."""
    yield "fp32", model, size_bytes(model)
    for bits, g in [(8, None), (4, 128), (4, 32)]:
        for method in ("rtn", "gptq"):
            r = quantize_weights(model, bits, g, method=method, calib=calib, progress=False)
            yield f"int{bits}{f' g{g}' if g else ''} {method.upper()}", r.model, r.size_bytes
    for pattern, sparsity in [(None, 0.5), ("2:4", None)]:
        for crit in ("magnitude", "wanda"):
            p = prune_llm(model, calib, sparsity=sparsity or 0.5, pattern=pattern, criterion=crit, progress=False)
            yield f"{crit} {pattern or '50%'}", p.model, size_bytes(p.model)
    p = prune_llm(model, calib, pattern="2:4", criterion="wanda", progress=False)
    r = quantize_weights(p.model, 4, 128, progress=False)
    yield "wanda 2:4 + int4 g128 RTN", r.model, r.size_bytes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--all", action="store_true", help="perplexity on all held-out windows")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    chunks = None if args.all else lm.data.EVAL_CHUNKS
    model = lm.load()
    calib = lm.calibration_data(32, 128)
    probe = lm.windows("heldout", 8, 128)
    base = lm.perplexity(model, chunks=chunks)
    print(f"demo LM: {sum(p.numel() for p in model.parameters()):,} params; unigram perplexity "
          f"{lm.unigram_perplexity():.2f}; held-out windows: {chunks or 'all'}")
    print("| variant | perplexity | vs fp32 | token top-1 vs fp32 | KL (nats) | size (MiB) |")
    print("|---|---|---|---|---|---|")
    for name, m, nbytes in variants(model, calib):
        ppl = lm.perplexity(m, chunks=chunks)
        f = lm_fidelity(model, m, list(torch.split(probe, 4)))
        print(f"| {name} | {ppl:.3f} | {ppl / base - 1:+.2%} | {f['token_top1']:.3f} | {f['kl_div']:.4f} | "
              f"{nbytes / 2 ** 20:.2f} |", flush=True)


if __name__ == "__main__":
    main()
