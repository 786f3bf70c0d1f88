"""Panel responsiveness: time from a slider change to the re-rendered readouts (a benchmark, not a test).

Goals (issue 5): a pruning slider change on ResNet-50 re-renders the per-layer table and totals in
< 150 ms without evaluation; a bit-width change on the demo model re-evaluates accuracy on the whole
held-out split in < 500 ms. Each change goes through the panel exactly as a widget event does
(``slider.value = v`` with debounce 0), so the time includes the core call and the rendering. The
quantization change is interleaved with a full ``nbopt.quantize`` of the same options (what the panel
ran before ``QuantTuner``), so the two columns see the same machine load.

    .venv/bin/python benchmarks/panel_latency.py [--skip-resnet50] [--repeat 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402

import nbopt  # noqa: E402
from nbopt import demo  # noqa: E402


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def pruning_resnet50(repeat: int) -> dict[str, float]:
    import torchvision

    model = torchvision.models.resnet50(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    t0 = time.perf_counter()
    panel = nbopt.PruningPanel(model, x, evaluate=None, measure_latency=False, debounce=0)
    setup_s = time.perf_counter() - t0
    amounts = [0.1 * i for i in range(1, 10)] * repeat
    total, core_set, core_report = [], [], []
    for a in amounts:
        total.append(timed(lambda: setattr(panel.amount, "value", round(a, 2))))
    # the same changes through the core alone, for the split between core and rendering
    for a in amounts:
        core_set.append(timed(lambda: panel.pruner.set(round(a, 2))))
        core_report.append(timed(lambda: panel.pruner.report))
    assert panel.guard.last_error is None, panel.guard.last_error
    return {"setup_s": setup_s, "change_ms": statistics.median(total), "change_max_ms": max(total),
            "core_set_ms": statistics.median(core_set), "core_report_ms": statistics.median(core_report),
            "changes": len(total)}


def quantization_demo(repeat: int) -> dict[str, float]:
    """Each bit change through the panel (QuantTuner) and the same options through a full nbopt.quantize."""
    model = demo.load_model()
    calib = demo.calibration_data()
    t0 = time.perf_counter()
    panel = nbopt.QuantizationPanel(model, calib, evaluate=demo.evaluate, debounce=0)
    setup_s = time.perf_counter() - t0
    times, full, evals = [], [], []
    for _ in range(repeat):
        panel.tuner._observed.clear()  # every change re-calibrates (no cached observations)
        panel.tuner._act_qparams.clear()
        for bits in (7, 6, 5, 4, 3, 2, 8):
            times.append(timed(lambda: setattr(panel.weight_bits, "value", bits)))
            full.append(timed(lambda: nbopt.quantize(model, calib, weight_bits=bits, evaluate=demo.evaluate,
                                                     progress=False, repeat=1)))
        evals.append(timed(lambda: demo.evaluate(model)))
    assert panel.guard.last_error is None, panel.guard.last_error
    return {"change_ms": statistics.median(times), "change_max_ms": max(times), "setup_s": setup_s,
            "full_ms": statistics.median(full), "full_max_ms": max(full),
            "one_evaluate_ms": statistics.median(evals), "changes": len(times),
            "held_out_images": len(demo.digits_split()[3])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--skip-resnet50", action="store_true")
    ap.add_argument("--skip-quantization", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads first (default: leave it)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f}", file=sys.stderr)
    if not args.skip_quantization:
        q = quantization_demo(args.repeat)
        print(f"QuantizationPanel, demo model, bit-width change (re-quantize + accuracy on {q['held_out_images']} "
              f"held-out images): median {q['change_ms']:.0f} ms, max {q['change_max_ms']:.0f} ms over "
              f"{q['changes']} changes (goal < 500 ms) | same options through a full "
              f"nbopt.quantize(evaluate=...): median {q['full_ms']:.0f} ms, max {q['full_max_ms']:.0f} ms | "
              f"one evaluate() {q['one_evaluate_ms']:.0f} ms; panel setup {q['setup_s']:.1f} s")
    if not args.skip_resnet50:
        p = pruning_resnet50(args.repeat)
        print(f"PruningPanel, resnet50, slider change without evaluation (Pruner.set + report + table/totals "
              f"render): median {p['change_ms']:.0f} ms, max {p['change_max_ms']:.0f} ms over {p['changes']} "
              f"changes (goal < 150 ms); core alone: set {p['core_set_ms']:.0f} ms + report "
              f"{p['core_report_ms']:.0f} ms; panel setup {p['setup_s']:.1f} s")

if __name__ == "__main__":
    main()
