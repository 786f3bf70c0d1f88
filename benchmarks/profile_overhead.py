"""Counting overhead: time of one profile call divided by one plain forward pass, side by side.

    python benchmarks/profile_overhead.py [--repeat 7] [--threads 2] [--models resnet50,...]

nbopt.profile(latency=False) counting on meta tensors (shapes only, execution="meta") and with a real
run (execution="real"), beside thop.profile, fvcore's FlopCountAnalysis and torch's FlopCounterMode, on
resnet50, mobilenet_v3_large and vit_b_16 (random weights) at batch 1, 224x224. The baseline is one plain
forward under ``torch.no_grad()`` (nbopt, thop and FlopCounterMode here all run without grad). Calls are
interleaved (A, B, C, ... A, B, C) so machine load affects all alike; the table shows median ratios from
this one run and the load average before and after, so a loaded machine is visible in the output.
"""
from __future__ import annotations

import argparse
import copy
import os
import warnings

import torch
import torchvision

import nbopt
from nbopt.timing import compare

warnings.filterwarnings("ignore")


def _flop_counter(model: torch.nn.Module, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    with torch.no_grad(), FlopCounterMode(display=False) as mode:
        model(x)
    return mode.get_total_flops()


def _forward(model: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        model(x)


def tools(model: torch.nn.Module, x: torch.Tensor) -> dict:
    """name -> zero-argument callable; "forward" is the baseline."""
    fns = {
        "forward": lambda: _forward(model, x),
        "nbopt meta": lambda: nbopt.profile(model, x, latency=False, execution="meta"),
        "nbopt real": lambda: nbopt.profile(model, x, latency=False, execution="real"),
        "FlopCounterMode": lambda: _flop_counter(model, x),
    }
    try:
        import thop
        thop_model = copy.deepcopy(model)  # thop attaches counters to the model it profiles
        fns["thop"] = lambda: thop.profile(thop_model, inputs=(x,), verbose=False)
    except ImportError:
        pass
    try:
        from fvcore.nn import FlopCountAnalysis
        fns["fvcore"] = lambda: (FlopCountAnalysis(model, x).unsupported_ops_warnings(False)
                                 .uncalled_modules_warnings(False).total())
    except ImportError:
        pass
    return fns


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="resnet50,mobilenet_v3_large,vit_b_16")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeat} interleaved runs")
    print(f"load average before: {_load()}")
    print("ratio = tool time / one plain no_grad forward (lower is better; goal: nbopt meta < 1x, real <= 1.2x)\n")
    rows = []
    for name in args.models.split(","):
        model = torchvision.models.get_model(name).eval()
        timings = compare(tools(model, torch.randn(1, 3, 224, 224)), warmup=1, repeat=args.repeat)
        base = timings.pop("forward").median_ms
        rows.append((name, base, {k: t.median_ms / base for k, t in timings.items()}))
    cols = list(rows[0][2])
    print(f"| model | forward ms | {' | '.join(cols)} |")
    print(f"|---|---:|{'---:|' * len(cols)}")
    for name, base, ratios in rows:
        print(f"| {name} | {base:.1f} | {' | '.join(f'{ratios[c]:.2f}x' for c in cols)} |")
    print(f"\nload average after: {_load()}")


if __name__ == "__main__":
    main()
