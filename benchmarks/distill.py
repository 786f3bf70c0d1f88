"""Distillation vs fine-tuning after 70% structured channel pruning of the demo CNN, over several seeds.

    python benchmarks/distill.py                     # seeds 0-4, 3 epochs, 1 thread
    python benchmarks/distill.py --seeds 0 1 --epochs 5

The student is ``nbopt.prune(demo model, amount=0.7, structured=True)``; both recoveries get the same data
(``demo.train_loader(seed=s)``), epochs, optimizer (Adam, lr) and seed. Fine-tuning is ``nbopt.finetune`` with
cross-entropy; its per-epoch curve is ``nbopt.distill(alpha=0)``, which trains the very same weights (checked:
``--check`` asserts the two final models are bit-identical). Prints a table of held-out accuracy per seed and
the per-epoch curves (mean over seeds).
"""
from __future__ import annotations

import argparse
import statistics

import pandas as pd
import torch
import torch.nn.functional as F

import nbopt
from nbopt import demo
from nbopt.distillation import distill


def loader(seed: int, batches: int | None) -> object:
    """The demo's shuffled training batches; ``batches``: only the first N (a small-data recovery)."""
    full = demo.train_loader(seed=seed)
    return full if batches is None else [b for b, _ in zip(full, range(batches))]


def run(seeds: list[int], epochs: int, lr: float, temperature: float, alpha: float, check: bool,
        batches: int | None = None) -> None:
    teacher = demo.load_model()
    student = nbopt.prune(teacher, demo.example_input(1), amount=0.7, structured=True, latency=False,
                          progress=False).model
    pruned_acc = demo.evaluate(student)
    rows, curves = [], {"distill": [], "fine-tune": []}
    for seed in seeds:
        ft = nbopt.finetune(student, loader(seed, batches), F.cross_entropy, epochs=epochs, lr=lr,
                            seed=seed, progress=False)
        d = distill(student, teacher, loader(seed, batches), epochs=epochs, lr=lr, temperature=temperature,
                    alpha=alpha, seed=seed, evaluate=demo.evaluate, progress=False)
        c = distill(student, teacher, loader(seed, batches), epochs=epochs, lr=lr, alpha=0.0, seed=seed,
                    evaluate=demo.evaluate, progress=False)
        if check:
            assert all(torch.equal(a, b) for a, b in zip(ft.state_dict().values(), c.model.state_dict().values()))
        rows.append({"seed": seed, "fine-tune": demo.evaluate(ft), "distill": d.accuracy})
        curves["distill"].append(d.history["accuracy"])
        curves["fine-tune"].append(c.history["accuracy"])
    table = pd.DataFrame(rows).set_index("seed")
    table["distill - fine-tune"] = table["distill"] - table["fine-tune"]
    print(f"teacher {demo.evaluate(teacher):.4f}, 70% structured pruned {pruned_acc:.4f}, "
          f"params {sum(p.numel() for p in student.parameters())}; {epochs} epochs, Adam lr {lr}, "
          f"T={temperature}, alpha={alpha}, data: {'all 23' if batches is None else batches} batches of 64")
    print((100 * table).round(2).to_string())
    wins = int((table["distill - fine-tune"] > 0).sum())
    ties = int((table["distill - fine-tune"] == 0).sum())
    print(f"mean: fine-tune {100 * table['fine-tune'].mean():.2f}%, distill {100 * table['distill'].mean():.2f}%; "
          f"distill better on {wins}/{len(seeds)} seeds, tied on {ties}")
    mean = pd.DataFrame({k: pd.concat(v, axis=1).mean(axis=1) for k, v in curves.items()})
    print("held-out accuracy per epoch (mean over seeds, %):")
    print((100 * mean).round(2).to_string())
    print(f"median gain {100 * statistics.median(table['distill - fine-tune']):.2f} points")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=0.9)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batches", type=int, default=None, help="recover on the first N batches of 64 only")
    p.add_argument("--check", action="store_true", help="assert distill(alpha=0) == finetune, bit for bit")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    run(a.seeds, a.epochs, a.lr, a.temperature, a.alpha, a.check, a.batches)


if __name__ == "__main__":
    main()
