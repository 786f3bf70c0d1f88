"""Counting overhead: time of one profile call divided by one plain forward pass, side by side.

    python benchmarks/profile_overhead.py [--repeat 5]

nbopt (shapes only: meta tensors; and a real run) vs thop.profile, fvcore's FlopCountAnalysis and
torch's FlopCounterMode, on resnet50, mobilenet_v3_large and vit_b_16 (random weights) at batch 1.
Calls are interleaved (A, B, C, ... A, B, C) so machine load affects all alike.
"""
from __future__ import annotations

import argparse
import copy
import warnings

import torch
import torchvision

import nbopt
from nbopt.timing import compare

warnings.filterwarnings("ignore")


def tools(model: torch.nn.Module, x: torch.Tensor) -> dict:
    fns = {
        "forward": lambda: model(x),
        "nbopt (meta)": lambda: nbopt.profile(model, x, latency=False, execution="meta"),
        "nbopt (real)": lambda: nbopt.profile(model, x, latency=False, execution="real"),
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


def _flop_counter(model: torch.nn.Module, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as mode:
        model(x)
    return mode.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--models", default="resnet50,mobilenet_v3_large,vit_b_16")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ratio = tool time / one plain forward")
    for name in args.models.split(","):
        model = torchvision.models.get_model(name).eval()
        x = torch.randn(1, 3, 224, 224)
        fns = tools(model, x)
        timings = compare(fns, warmup=1, repeat=args.repeat)
        base = timings["forward"].median_ms
        cells = "  ".join(f"{k} {t.median_ms / base:.2f}x" for k, t in timings.items() if k != "forward")
        print(f"{name:20s} forward {base:7.1f} ms  {cells}", flush=True)


if __name__ == "__main__":
    main()
