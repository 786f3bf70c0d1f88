"""Does pruning make models faster? Structured vs unstructured against the dense model, one interleaved run.

    python benchmarks/prune_speedup.py                 # resnet50 + mobilenet_v2 at 224, 2 threads
    python benchmarks/prune_speedup.py --threads 1     # the same with one thread
    python benchmarks/prune_speedup.py --models mobilenet_v2 --size 160 --repeat 3 --no-int8

Prints, per model and batch size, the MACs ratio (profiler count, dense / pruned) and the measured latency
ratio (median of interleaved runs), and the latency ratio as a fraction of the MACs ratio. Every variant,
dense included, is timed in its deployment form: BatchNorm folded into the convolutions
(``nbopt.deployment.fuse``), in whichever memory format is faster for it (contiguous or channels_last; the
table says which); ``--compile`` adds a third form, ``torch.compile`` with inductor's freezing (weights
prepacked, BatchNorm and activations fused), given to every variant alike. Timings are steady-state blocks
(``nbopt.timing.compare(block=3, settle_ms=100)``), interleaved across variants. Unstructured variants
keep dense kernels, so they are shown to be no faster. At batch 1 the structured 50% model is also
quantized to int8 (``nbopt.quantize(..., mode="int8")``) and timed against the dense fp32 model, both in
its best form and as given (eager, BatchNorm unfolded, contiguous: the baseline of int8_speedup.py). ``--ort`` adds a row per batch with the dense and the structured 50% model both
exported to ONNX and run in onnxruntime fp32 (less per-op overhead than eager: what pruning buys once the
framework's fixed cost per op is gone). ``Pruner.set`` timing lives in ``benchmarks/pruner_set_speed.py``.
Random weights: speed does not depend on the values, and no pretrained weights can be downloaded here.
"""
from __future__ import annotations

import argparse
import copy

import torch
import torchvision

from nbopt.deployment.fuse import fuse
from nbopt.profiling import profile
from nbopt.pruning import Pruner
from nbopt.quantization import quantize
from nbopt.timing import compare

from int8_speedup import compiled_fp32, ort_fp32  # benchmarks/ is on sys.path when a script here runs


def variants(model: torch.nn.Module, x: torch.Tensor, round_to: int) -> dict[str, torch.nn.Module]:
    """dense, structured 30/50% of channels, unstructured 50/90% of weights; BatchNorm folded, eval mode."""
    pruner = Pruner(model, x, round_to=round_to, progress=False)
    out = {"dense": model}
    for a in (0.3, 0.5):
        out[f"structured {a:.0%}"] = pruner.set(amount=a, structured=True, scope="layer").export()
    for a in (0.5, 0.9):
        out[f"unstructured {a:.0%}"] = pruner.set(amount=a).export()
    return {k: fuse(m.eval(), x, measure=False).model for k, m in out.items()}


def int8_variant(model: torch.nn.Module, x: torch.Tensor, backend: str) -> torch.nn.Module:
    """``model`` quantized to int8 with real int8 kernels, calibrated on a few random images."""
    calib = [torch.randn_like(x) for _ in range(4)]
    return quantize(model, calib, mode="int8", backend=backend, progress=False, repeat=3).model


def best_format_timings(models: dict[str, torch.nn.Module], x: torch.Tensor, repeat: int,
                        extra: dict[str, torch.nn.Module] | None = None,
                        compile_too: bool = False) -> dict[str, tuple[float, str]]:
    """Median ms of every model in each form (memory format, compiled or not), interleaved in steady-state
    blocks; keep each model's fastest form. ``extra`` models are timed as they are."""
    fns = {(name, "as given"): (lambda m=m: m(x)) for name, m in (extra or {}).items()}
    x_cl = x.contiguous(memory_format=torch.channels_last)
    for name, m in models.items():
        m_cl = copy.deepcopy(m).to(memory_format=torch.channels_last)  # same weights, NHWC
        forms = {"contiguous": (m, x), "channels_last": (m_cl, x_cl)}
        if compile_too:
            forms.update({"compiled": (compiled_fp32(m), x), "compiled, channels_last": (compiled_fp32(m_cl), x_cl)})
        for form, (fn, inp) in forms.items():
            fns[(name, form)] = (lambda fn=fn, inp=inp: fn(inp))
    timings = compare(fns, warmup=1, repeat=repeat, block=3, settle_ms=100)
    best = {}
    for (name, fmt), t in timings.items():
        if name not in best or t.median_ms < best[name][0]:
            best[name] = (t.median_ms, fmt)
    return best


def ort_rows(name: str, models: dict[str, torch.nn.Module], x: torch.Tensor, macs: dict[str, float],
             repeat: int) -> None:
    """Dense vs structured 50%, both in onnxruntime fp32 (steady-state blocks: spinning pools settle)."""
    progs = {k: ort_fp32(models[k], x)[0] for k in ("dense", "structured 50%")}
    t = compare({k: (lambda p=p: p(x)) for k, p in progs.items()}, warmup=1, repeat=repeat, block=3, settle_ms=100)
    d, p = t["dense"].median_ms, t["structured 50%"].median_ms
    mr = macs["dense"] / macs["structured 50%"]
    print(f"| {name} | {x.shape[0]} | structured 50%, dense and pruned both in onnxruntime fp32 | "
          f"{macs['structured 50%'] / 1e9:.2f} | {mr:.2f}x | {p:.1f} vs {d:.1f} | {d / p:.2f}x | {d / p / mr:.0%} |",
          flush=True)


def speed_table(name: str, size: int, batches: list[int], repeat: int, round_to: int, int8: str | None,
                ort: bool = False, compile_too: bool = False) -> None:
    """One table row per variant and batch size (printed as it is measured)."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval()
    x1 = torch.randn(1, 3, size, size)
    models = variants(model, x1, round_to)
    quantized = int8_variant(models["structured 50%"], x1, int8) if int8 else None
    for b in batches:
        x = torch.randn(b, 3, size, size)
        macs = {k: profile(m, x, latency=False).total_macs for k, m in models.items()}
        extra = {"int8": quantized, "dense as given": model} if quantized is not None and b == 1 else None
        with torch.no_grad():
            best = best_format_timings(models, x, repeat, extra, compile_too)
        base_ms = best["dense"][0]
        for k in models:
            mr, lr = macs["dense"] / macs[k], base_ms / best[k][0]
            eff = "— (dense kernels)" if k.startswith("unstructured") else f"{lr / mr:.0%}"
            print(f"| {name} | {b} | {k} | {macs[k] / 1e9:.2f} | {mr:.2f}x | {best[k][0]:.1f} ({best[k][1]}) "
                  f"| {lr:.2f}x | {eff} |", flush=True)
        if "int8" in best:
            mr, lr = macs["dense"] / macs["structured 50%"], base_ms / best["int8"][0]
            given = best["dense as given"][0] / best["int8"][0]
            print(f"| {name} | {b} | structured 50% + int8 vs dense fp32 | {macs['structured 50%'] / 1e9:.2f} "
                  f"| {mr:.2f}x | {best['int8'][0]:.1f} (int8 program) | {lr:.2f}x vs best dense form, {given:.2f}x "
                  f"vs dense as given ({best['dense as given'][0]:.1f} ms) | (goal 7x) |", flush=True)
        if ort:
            ort_rows(name, models, x, macs, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v2"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (1 gives steadier ratios on a shared, loaded machine)")
    parser.add_argument("--round-to", type=int, default=8, help="kept channel counts rounded up to multiples of this")
    parser.add_argument("--int8-backend", default="auto", choices=["auto", "pt2e", "onnxruntime"])
    parser.add_argument("--no-int8", action="store_true", help="skip the structured 50%% + int8 row")
    parser.add_argument("--ort", action="store_true", help="add dense vs structured 50%% both in onnxruntime fp32")
    parser.add_argument("--compile", action="store_true",
                        help="also time every variant torch.compile'd (inductor, freezing) and keep its fastest form")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, input {args.size}x{args.size}, "
          f"channel counts rounded to multiples of {args.round_to}, BatchNorm folded in every variant")
    print("| model | batch | variant | GMACs | MACs ratio | latency ms (format) | latency ratio | latency/MACs |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        speed_table(name, args.size, args.batches, args.repeat, args.round_to,
                    None if args.no_int8 else args.int8_backend, args.ort, args.compile)
    print("Unstructured rows: the zeros are still multiplied by dense kernels, so expect ~1.00x (any spread is noise).")


if __name__ == "__main__":
    main()
