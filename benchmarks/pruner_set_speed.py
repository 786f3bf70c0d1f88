"""How long does one ``Pruner.set`` call take on resnet50 (what a slider waits for)?

    python benchmarks/pruner_set_speed.py                # 224x224, 2 threads
    python benchmarks/pruner_set_speed.py --threads 1 --sweeps 1

Sweeps a slider up through 10 settings and back down (20 calls per sweep) for each mode: unstructured
amount (global and per layer), unstructured threshold (global), structured preview (per layer and global).
Prints the median and max wall-clock ms per call (each call timed with ``nbopt.timing.measure``) and the
median CPU time of the sweep. Random weights: the cost does not depend on the values. Also checks that
the last call of every sweep (back to 0) restored the weights bit for bit.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

from nbopt.pruning import Pruner
from nbopt.timing import measure

MODES = {
    "unstructured amount, global": {},
    "unstructured amount, layer": {"scope": "layer"},
    "unstructured threshold, global": {"threshold": True},
    "structured preview, layer": {"structured": True, "scope": "layer"},
    "structured preview, global": {"structured": True},
}


def settings(thresholds: list[float]) -> list[float]:
    """10 steps up, 9 back down, then 0 (20 slider positions)."""
    up = [round(0.05 + 0.09 * i, 2) for i in range(10)] if not thresholds else thresholds
    return up + up[-2::-1] + [0.0]


def sweep(pruner: Pruner, kw: dict, values: list[float], sweeps: int) -> tuple[list[float], float]:
    """Per-call wall ms over ``sweeps`` sweeps, and the median CPU ms per call."""
    kw = dict(kw)
    by_threshold = kw.pop("threshold", False)
    ms, cpu = [], []
    for _ in range(sweeps):
        c0 = time.process_time()
        for v in values:
            arg = {"threshold": v} if by_threshold else {"amount": v}
            ms += measure(lambda: pruner.set(**arg, **kw), warmup=0, repeat=1).samples_ms
        cpu.append((time.process_time() - c0) * 1e3 / len(values))
    return ms, statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--sweeps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)().eval()
    t0 = time.perf_counter()
    pruner = Pruner(model, torch.randn(1, 3, args.size, args.size), progress=False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; Pruner({args.model}) preparation "
          f"{time.perf_counter() - t0:.1f} s, {sum(m.numel for m in pruner._masks.values()) / 1e6:.1f} M weights")
    t0 = time.perf_counter()
    pruner.set(amount=0.1, structured=True)
    print(f"first structured call (traces and scores the channel groups once): {time.perf_counter() - t0:.1f} s")
    pruner.reset()
    original = {k: v.detach().clone() for k, v in pruner.model.state_dict().items()}
    top = 0.95 * min(float(m.sorted_abs[-1]) for m in pruner._masks.values())  # no layer emptied
    thresholds = [top * (i + 1) / 10 for i in range(10)]
    print("| mode | calls | median ms | max ms | CPU ms/call | back to 0 bit for bit |")
    print("|---|---|---|---|---|---|")
    for label, kw in MODES.items():
        values = settings(thresholds if kw.get("threshold") else [])
        ms, cpu = sweep(pruner, kw, values, args.sweeps)
        exact = all(torch.equal(v, original[k]) for k, v in pruner.model.state_dict().items())
        print(f"| {label} | {len(ms)} | {statistics.median(ms):.1f} | {max(ms):.1f} | {cpu:.1f} | {exact} |", flush=True)


if __name__ == "__main__":
    main()
