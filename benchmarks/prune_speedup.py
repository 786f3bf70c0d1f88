"""Does pruning make models faster? Structured vs unstructured against the dense model, one interleaved run.

    python benchmarks/prune_speedup.py                 # resnet50 + mobilenet_v2 at 224, a few minutes on 2 cores
    python benchmarks/prune_speedup.py --models mobilenet_v2 --size 160 --repeat 3

Prints, per model and batch size, the MACs ratio (profiler count, dense / pruned) and the measured latency
ratio (median of interleaved runs, each model in its faster memory format: contiguous or channels_last),
and the latency ratio as a fraction of the MACs ratio. Then the time a ``Pruner.set`` call takes on resnet50.
Random weights: speed does not depend on the values, and no pretrained weights can be downloaded here.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torchvision

from nbopt.profiling import profile
from nbopt.pruning import Pruner
from nbopt.timing import compare


def variants(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.nn.Module]:
    """dense, structured 30/50% of channels, unstructured 50/90% of weights (all eval mode)."""
    pruner = Pruner(model, x, progress=False)
    out = {"dense": model}
    for a in (0.3, 0.5):
        out[f"structured {a:.0%}"] = pruner.set(amount=a, structured=True, scope="layer").export().eval()
    for a in (0.5, 0.9):
        out[f"unstructured {a:.0%}"] = pruner.set(amount=a).export().eval()
    return out


def best_format_timings(models: dict[str, torch.nn.Module], x: torch.Tensor, repeat: int) -> dict[str, tuple[float, str]]:
    """Median ms of every model in both memory formats, interleaved; keep each model's faster one."""
    fns = {}
    for name, m in models.items():
        fns[(name, "contiguous")] = (lambda m=m: m(x))
        m_cl = copy.deepcopy(m).to(memory_format=torch.channels_last)  # same weights, NHWC
        x_cl = x.contiguous(memory_format=torch.channels_last)
        fns[(name, "channels_last")] = (lambda m=m_cl, x=x_cl: m(x))
    timings = compare(fns, warmup=1, repeat=repeat)
    best = {}
    for (name, fmt), t in timings.items():
        if name not in best or t.median_ms < best[name][0]:
            best[name] = (t.median_ms, fmt)
    return best


def speed_table(name: str, size: int, batches: list[int], repeat: int) -> list[str]:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval()
    models = variants(model, torch.randn(1, 3, size, size))
    lines = []
    for b in batches:
        x = torch.randn(b, 3, size, size)
        macs = {k: profile(m, x, latency=False).total_macs for k, m in models.items()}
        with torch.no_grad():
            best = best_format_timings(models, x, repeat)
        base_ms = best["dense"][0]
        for k in models:
            mr, lr = macs["dense"] / macs[k], base_ms / best[k][0]
            lines.append(f"| {name} | {b} | {k} | {macs[k] / 1e9:.2f} | {mr:.2f}x | {best[k][0]:.1f} ({best[k][1]}) "
                         f"| {lr:.2f}x | {lr / mr:.0%} |")
            print(lines[-1], flush=True)
    return lines


def set_timing(size: int) -> list[str]:
    """Wall time of Pruner.set on resnet50 while sliding through amounts (what a slider does)."""
    model = torchvision.models.resnet50().eval()
    t0 = time.perf_counter()
    pruner = Pruner(model, torch.randn(1, 3, size, size), progress=False)
    prep = time.perf_counter() - t0
    lines = [f"Pruner(resnet50) preparation: {prep:.1f} s (sorts 25.5M weight magnitudes once)"]
    amounts = [0.05 * i for i in range(1, 19)] + [0.5, 0.45, 0.0]
    for label, kw in [("unstructured global", {}), ("unstructured layer", {"scope": "layer"}),
                      ("structured layer", {"structured": True, "scope": "layer"})]:
        pruner.set(amount=0.1, **kw)  # first structured call traces the dependency groups once
        ms, cpu = [], []
        for a in amounts:
            t0, c0 = time.perf_counter(), time.process_time()
            pruner.set(amount=a, **kw)
            ms.append((time.perf_counter() - t0) * 1e3)
            cpu.append((time.process_time() - c0) * 1e3)
        lines.append(f"Pruner.set({label}) over {len(amounts)} slider steps: wall median {statistics.median(ms):.1f} ms "
                     f"(max {max(ms):.1f}), CPU time median {statistics.median(cpu):.1f} ms (all threads)")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v2"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (1 gives steadier ratios on a shared, loaded machine)")
    parser.add_argument("--no-set-timing", action="store_true", help="skip the Pruner.set timing")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, input {args.size}x{args.size}")
    print("| model | batch | variant | GMACs | MACs ratio | latency ms (format) | latency ratio | latency/MACs |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        speed_table(name, args.size, args.batches, args.repeat)
    if not args.no_set_timing:
        set_timing(args.size)


if __name__ == "__main__":
    main()
