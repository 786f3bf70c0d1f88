"""Sensitivity analysis: cached fp32 activations vs naive full re-evaluation (same numbers) on resnet18.

Usage: python benchmarks/sensitivity_speed.py [--batches 2] [--batch-size 2] [--bits 8,4]
"""
from __future__ import annotations

import argparse
import time

import torch
import torchvision

import nbopt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--bits", default="8,4")
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    calib = [torch.randn(args.batch_size, 3, 224, 224) for _ in range(args.batches)]
    bits = tuple(int(b) for b in args.bits.split(","))
    out, secs = {}, {}
    for method in ("cached", "naive"):
        t0 = time.perf_counter()
        out[method] = nbopt.sensitivity(model, calib, bits=bits, method=method, progress=False)
        secs[method] = time.perf_counter() - t0
    cols = [c for c in out["cached"].columns if c.startswith(("drop_", "sqnr_"))]
    diff = (out["cached"][cols] - out["naive"][cols]).abs().max().max()
    print(f"resnet18, {len(out['cached'])} layers x bits {bits}, calib {args.batches}x{args.batch_size}x3x224x224")
    print(f"  naive  {secs['naive']:.1f} s | cached {secs['cached']:.1f} s | speed-up {secs['naive'] / secs['cached']:.2f}x"
          f" | max |difference| {diff:.2e}")


if __name__ == "__main__":
    main()
