"""int8 speed-up: torch fp32 (eager and torch.compile) and onnxruntime fp32 vs int8 (PT2E+compile, onnxruntime
QDQ, and nbopt's backend="auto" pick), with file sizes.

Random-weight torchvision models (speed does not depend on the values) at batch 1 and 8, 2 threads; every
latency of one model/batch comes from one interleaved timing (medians), ratios vs torch fp32 eager and vs the
best fp32 baseline (the fastest of eager, compiled and onnxruntime fp32).
Every table names the CPU (torch's capability, VNNI or not) and the int8 settings nbopt chose for it
(``reduce_range`` without VNNI, see nbopt.cpu): int8 speed-ups differ by CPU, quote them with it.
Usage: python benchmarks/int8_speedup.py [--models resnet18,mobilenet_v2,resnet50] [--batches 1,8] [--repeat 10]
       [--vnni auto|0|1]   (0/1: force the settings of a CPU without/with VNNI, as NBOPT_CPU_VNNI does)
"""
from __future__ import annotations

import argparse
import os
import tempfile

import torch
import torchvision

from nbopt.cpu import int8_settings
from nbopt.quantization.api import _pick
from nbopt.quantization.backends.onnxruntime import OrtModule, build_onnx, export_onnx
from nbopt.quantization.backends.pt2e import STATIC_BATCH_SIZES, build_pt2e
from nbopt.model_state import disk_bytes
from nbopt.timing import compare


def ort_fp32(model: torch.nn.Module, example: torch.Tensor) -> tuple[OrtModule, int]:
    """``model`` exported to ONNX (batch dynamic) and run by onnxruntime fp32; the file's size in bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "fp32.onnx")
        export_onnx(model, example, path)
        data = open(path, "rb").read()
    return OrtModule(data), len(data)


def compiled_fp32(model: torch.nn.Module) -> torch.nn.Module:
    """torch.compile with inductor freezing: the fastest torch fp32 baseline on CPU."""
    import torch._inductor.config as inductor_config

    compiled = torch.compile(model, dynamic=False)

    def run(x):
        with torch.no_grad(), inductor_config.patch(freezing=True):
            return compiled(x)
    return run


def run(name: str, batches: list[int], repeat: int) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval()
    calib = [torch.randn(4, 3, 224, 224) for _ in range(4)]
    pt2e = build_pt2e(model, calib, calib[0], progress=False)
    ort8 = build_onnx(model, calib, calib[0], progress=False)
    ort32, ort32_bytes = ort_fp32(model, calib[0])
    fp32c = compiled_fp32(model)
    print(f"\n{name}: file MB  torch fp32 {disk_bytes(model) / 1e6:.1f} | onnx fp32 {ort32_bytes / 1e6:.1f} | "
          f"onnx int8 {ort8.disk_bytes / 1e6:.1f} | pt2e int8 state {pt2e.disk_bytes / 1e6:.1f}; pt2e batch "
          f"programs: static for the first {STATIC_BATCH_SIZES} batch sizes, then one dynamic")
    print(f"  CPU {pt2e.cpu}; int8 settings: pt2e {pt2e.settings}, onnxruntime {ort8.settings}")
    for b in batches:
        x = torch.randn(b, 3, 224, 224)
        prog, reason = _pick({"pt2e": pt2e, "onnxruntime": ort8}, {}, x, repeat=max(3, repeat // 2))
        fns = {"fp32 eager": lambda: model(x), "fp32 compiled": lambda: fp32c(x), "ort fp32": lambda: ort32(x),
               "pt2e int8": lambda: pt2e.model(x), "ort int8": lambda: ort8.model(x)}
        # steady state per program: blocks of 3 timed calls after >= 250 ms of untimed ones (spinning pools settle)
        t = compare(fns, warmup=2, repeat=max(2, repeat // 3), block=3, settle_ms=250)
        med = {k: v.median_ms for k, v in t.items()}
        med["nbopt int8"] = med["pt2e int8" if prog.backend == "pt2e" else "ort int8"]
        best32 = min(med["fp32 eager"], med["fp32 compiled"], med["ort fp32"])
        cells = " | ".join(f"{k} {v:.2f} ms ({med['fp32 eager'] / v:.2f}x)" for k, v in med.items())
        print(f"  batch {b}: {cells}")
        print(f"    nbopt int8 = {prog.backend}; vs best fp32 baseline ({best32:.2f} ms): "
              f"{best32 / med['nbopt int8']:.2f}x   [{reason}]")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="resnet18,mobilenet_v2,resnet50")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--vnni", choices=["auto", "0", "1"], default="auto",
                    help="int8 settings for a CPU without (0) / with (1) VNNI; auto: this CPU's")
    args = ap.parse_args()
    if args.vnni != "auto":
        os.environ["NBOPT_CPU_VNNI"] = args.vnni
    settings = int8_settings()
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; ratios are vs torch fp32 eager; "
          f"CPU {settings.cpu.label}; int8 with {settings.label}; load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    for name in args.models.split(","):
        run(name, [int(b) for b in args.batches.split(",")], args.repeat)


if __name__ == "__main__":
    with torch.no_grad():
        main()
