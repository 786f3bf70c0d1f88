"""Sensitivity analysis: nbopt (cached fp32 activations, bit widths batched) vs naive full re-evaluation.

Both compute the same table on resnet18 (random weights: speed does not depend on the values); the naive
method copies the model per trial and runs every calibration batch through all of it. Prints wall-clock
and CPU seconds of each and their ratios, measured alternately in this run (``--rounds``, the fastest round
of each counts, so neither pays the process's first-call costs alone), and checks the numbers.

``--calib 2x2,4x1,1x8`` runs several calibration sets (batches x batch size) in one go. The naive method
runs the model as given (contiguous NCHW); ``--naive-channels-last`` also times it with the model and
inputs in channels-last, to show how much of nbopt's gain is the memory layout.

Usage: python benchmarks/sensitivity_speed.py [--calib 2x2] [--bits 8,6,4] [--size 224] [--rounds 2]
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
import torchvision

import nbopt


def timed(fn):
    """(result, wall seconds, CPU seconds of this process)."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def differences(fast, slow) -> tuple[float, float]:
    """Largest |difference| of the drop columns and of the SQNR columns of two tables."""
    drops = [c for c in fast.columns if c.startswith("drop_")]
    sqnrs = [c for c in fast.columns if c.startswith("sqnr_")]
    return (float((fast[drops] - slow[drops]).abs().max().max()),
            float((fast[sqnrs] - slow[sqnrs]).abs().max().max()))


def one_setting(model, calib, bits, rounds: int, naive_cl: bool) -> None:
    """Time the methods alternately ``rounds`` times on one calibration set; print the best round of each."""
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    calib_cl = [x.contiguous(memory_format=torch.channels_last) for x in calib]
    runs = {"naive": lambda: nbopt.sensitivity(model, calib, bits=bits, method="naive", progress=False),
            "nbopt": lambda: nbopt.sensitivity(model, calib, bits=bits, progress=False)}
    if naive_cl:
        runs["naive, channels-last"] = lambda: nbopt.sensitivity(model_cl, calib_cl, bits=bits, method="naive",
                                                                  progress=False)
    best: dict[str, tuple] = {}
    for _ in range(rounds):
        for name, fn in runs.items():
            res = timed(fn)
            if name not in best or res[1] < best[name][1]:
                best[name] = res
    fast = best["nbopt"][0]
    print(f"calib {len(calib)} x {tuple(calib[0].shape)}; nbopt: {fast.attrs['method']}, {fast.attrs['layout']}, "
          f"batched {fast.attrs['batched']}")
    for name, (table, wall, cpu) in best.items():
        ratio = "" if name == "nbopt" else \
            f"  nbopt is {wall / best['nbopt'][1]:.2f}x faster (wall), {cpu / best['nbopt'][2]:.2f}x (CPU)"
        drop, sqnr = differences(fast, table)
        print(f"  {name:22s} {wall:6.1f} s wall {cpu:6.1f} s CPU{ratio}  | max diff vs nbopt: drop {drop:.1e}, "
              f"sqnr {sqnr:.1e} dB")
        assert drop <= 1e-6 and sqnr <= 1e-2, f"nbopt and {name} sensitivity tables differ"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calib", default="2x2", help="comma-separated BATCHESxBATCH_SIZE calibration sets")
    ap.add_argument("--bits", default="8,6,4")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--naive-channels-last", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    bits = tuple(int(b) for b in args.bits.split(","))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; resnet18, bits {bits}, "
          f"{args.size}x{args.size}, best of {args.rounds} alternating rounds")
    for setting in args.calib.split(","):
        batches, size = (int(v) for v in setting.split("x"))
        calib = [torch.randn(size, 3, args.size, args.size) for _ in range(batches)]
        one_setting(model, calib, bits, args.rounds, args.naive_channels_last)


if __name__ == "__main__":
    main()
