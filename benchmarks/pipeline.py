"""Deployment pipeline benchmark: nbopt.optimize on resnet50 and mobilenet_v3_large (random weights) at batch 1,
2 threads, plus the accuracy the same settings cost on the trained demo model.

One run per model; every latency in a row comes from one interleaved timing (nbopt.timing.compare):
  original eager fp32 | best fp32 baseline (onnxruntime fp32, torch.compile fp32) | final exported model
Settings (the same for all models): fuse -> 50% structured channel pruning -> int8 (onnxruntime QDQ) -> ONNX.
The demo model is fine-tuned 10 epochs after pruning (the torchvision models have random weights and no data).

    .venv/bin/python benchmarks/pipeline.py [--models resnet50,mobilenet_v3_large] [--compile] [--repeat 10]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F
import torchvision

import nbopt
from nbopt import demo
from nbopt.deployment.export import export
from nbopt.deployment.runtime import RuntimeModule
from nbopt.timing import compare

PRUNE = 0.5
STEPS = ("fuse", "prune", "quantize", "export", "verify")


def demo_accuracy() -> dict[str, float]:
    """The pipeline's settings on the trained demo CNN: held-out accuracy before and after (in onnxruntime)."""
    model, x = demo.load_model(), demo.example_input(1)
    tune = lambda m: nbopt.finetune(m, demo.train_loader(), F.cross_entropy, epochs=10, lr=1e-3, progress=False)  # noqa: E731
    res = nbopt.optimize(model, x, calib=demo.calibration_data(), evaluate=demo.evaluate, steps=STEPS,
                         prune_amount=PRUNE, finetune=tune, repeat=5, progress=False)
    before = demo.evaluate(model)
    after = float(res.table.loc["verify", "accuracy"])
    print(res.table[["status", "params", "macs", "file_bytes", "latency_ms", "speedup", "accuracy"]].to_string())
    return {"before": before, "after": after}


def baselines(model: torch.nn.Module, x: torch.Tensor, compile_: bool) -> dict[str, object]:
    """fp32 baselines: onnxruntime on the exported original, and torch.compile (inductor)."""
    out: dict[str, object] = {}
    ex = export(model, x, "onnx", tempfile.mkdtemp(prefix="nbopt-bench-"), check=False, latency=False)
    out["onnxruntime fp32"] = RuntimeModule(ex.path, "onnx", x)
    if compile_:
        compiled = torch.compile(model)
        with torch.no_grad():
            compiled(x)  # compile outside the timing
        out["torch.compile fp32"] = compiled
    return out


def bench(name: str, compile_: bool, repeat: int) -> None:
    model = getattr(torchvision.models, name)(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    calib = [torch.randn(4, 3, 224, 224) for _ in range(2)]
    t0 = time.perf_counter()
    res = nbopt.optimize(model, x, calib=calib, steps=STEPS, prune_amount=PRUNE, repeat=3, progress=False)
    pipeline_s = time.perf_counter() - t0
    fns = {"eager fp32": lambda: model(x)}
    fns.update({k: (lambda m=m: m(x)) for k, m in baselines(model, x, compile_).items()})
    fns["final (pruned int8, onnxruntime)"] = lambda: res.model(x)
    t = compare(fns, warmup=3, repeat=repeat)
    eager = t["eager fp32"].median_ms
    best = min((k for k in t if "fp32" in k and k != "eager fp32"), key=lambda k: t[k].median_ms)
    final = t["final (pruned int8, onnxruntime)"].median_ms
    print(f"\n== {name} (batch 1, {torch.get_num_threads()} threads; pipeline took {pipeline_s:.0f} s)")
    print(res.table[["status", "params", "macs", "file_bytes", "latency_ms", "speedup", "top1_agreement"]].to_string())
    for k, v in t.items():
        print(f"  {k:34s} {v.median_ms:9.2f} ms   {eager / v.median_ms:5.2f}x vs eager")
    print(f"  final vs eager fp32: {eager / final:.2f}x; vs best fp32 baseline ({best}): {t[best].median_ms / final:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet50,mobilenet_v3_large")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--compile", action="store_true", help="add the torch.compile fp32 baseline (minutes to build)")
    ap.add_argument("--no-demo", action="store_true", help="skip the demo accuracy run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if not args.no_demo:
        acc = demo_accuracy()
        print(f"demo accuracy: {acc['before']:.4f} -> {acc['after']:.4f} "
              f"({100 * (acc['before'] - acc['after']):.2f} points lost)")
    for name in args.models.split(","):
        bench(name.strip(), args.compile, args.repeat)


if __name__ == "__main__":
    main()
