"""Sensitivity analysis: nbopt (cached fp32 activations, bit widths batched) vs naive full re-evaluation.

Both compute the same table on resnet18 (random weights: speed does not depend on the values); the naive
method copies the model per trial and runs every calibration batch through all of it. Prints wall-clock
and CPU seconds of each and their ratios, measured one after the other in this run, and checks the numbers.

Usage: python benchmarks/sensitivity_speed.py [--batches 2] [--batch-size 2] [--bits 8,6,4] [--size 224]
"""
from __future__ import annotations

import argparse
import time

import torch
import torchvision

import nbopt


def timed(fn):
    """(result, wall seconds, CPU seconds of this process)."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--bits", default="8,6,4")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    calib = [torch.randn(args.batch_size, 3, args.size, args.size) for _ in range(args.batches)]
    bits = tuple(int(b) for b in args.bits.split(","))
    run = {m: (lambda m=m: nbopt.sensitivity(model, calib, bits=bits, method=m, progress=False))
           for m in ("cached", "naive")}
    out, wall, cpu = {}, {}, {}
    for method, fn in run.items():
        out[method], wall[method], cpu[method] = timed(fn)
    fast, slow = out["cached"], out["naive"]
    drops = [c for c in fast.columns if c.startswith("drop_")]
    sqnrs = [c for c in fast.columns if c.startswith("sqnr_")]
    drop_diff = float((fast[drops] - slow[drops]).abs().max().max())
    sqnr_diff = float((fast[sqnrs] - slow[sqnrs]).abs().max().max())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; resnet18, {len(fast)} layers x bits {bits}, "
          f"calib {args.batches} x ({args.batch_size}, 3, {args.size}, {args.size}); nbopt method: {fast.attrs['method']}")
    print(f"  naive   {wall['naive']:7.1f} s wall {cpu['naive']:7.1f} s CPU")
    print(f"  nbopt   {wall['cached']:7.1f} s wall {cpu['cached']:7.1f} s CPU")
    print(f"  speed-up {wall['naive'] / wall['cached']:.2f}x wall, {cpu['naive'] / cpu['cached']:.2f}x CPU | "
          f"max |difference|: drop {drop_diff:.2e}, sqnr {sqnr_diff:.2e} dB")
    assert drop_diff <= 1e-6 and sqnr_diff <= 1e-2, "nbopt and naive sensitivity tables differ"


if __name__ == "__main__":
    main()
