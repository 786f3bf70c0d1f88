"""Distillation vs fine-tuning after 70% structured channel pruning of the demo CNN, over several seeds.

    python benchmarks/distill.py                      # the few-image recipe: seeds 0-4, 256 images, 30 epochs
    python benchmarks/distill.py --images 0 --epochs 3 --no-augment   # all 1,437 images, 3 epochs: no win
    python benchmarks/distill.py --check              # also assert distill(alpha=0) == finetune, bit for bit

The student is ``nbopt.prune(demo model, amount=0.7, structured=True)``; the teacher is the unpruned model. Both
recoveries get the same batches (:class:`Recovery`: the first ``--images`` training digits, shuffled per epoch
by ``seed``, each image shifted by up to one pixel; the teacher labels the very view the student sees), epochs,
optimizer (Adam, lr) and seed. Fine-tuning is ``nbopt.finetune`` with cross-entropy; its per-epoch curve is
``nbopt.distill(alpha=0)``, which trains the very same weights (``--check`` asserts it). Distillation is
``nbopt.distill`` with its defaults (KL at T=4, alpha=0.9). Prints both held-out accuracy curves per seed, then
a table of held-out accuracy and NLL per seed, the mean, the per-seed wins and the spread.
"""
from __future__ import annotations

import argparse
import statistics
from typing import Iterator

import pandas as pd
import torch
import torch.nn.functional as F

import nbopt
from nbopt import demo
from nbopt.distillation import distill


class Recovery:
    """The first ``images`` training digits (0: all) in batches of 64, reshuffled each epoch from ``seed``; with
    ``augment`` each image is rolled by -1, 0 or 1 pixel in x and y (as ``demo.train`` does). Every instance
    with the same arguments yields the same batches, so both recoveries see the same views."""

    def __init__(self, images: int, seed: int, augment: bool = True, batch_size: int = 64):
        x, y, _, _ = demo.digits_split()
        self.x, self.y = (x[:images], y[:images]) if images else (x, y)
        self.seed, self.augment, self.batch_size, self.epoch = seed, augment, batch_size, 0

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.epoch += 1
        gen = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        order = torch.randperm(len(self.x), generator=gen)
        for i in range(0, len(self.x), self.batch_size):
            idx = order[i:i + self.batch_size]
            x = self.x[idx]
            if self.augment:
                shifts = torch.randint(-1, 2, (len(x), 2), generator=gen).tolist()
                x = torch.stack([xi.roll((dy, dx), dims=(1, 2)) for xi, (dx, dy) in zip(x, shifts)])
            yield x, self.y[idx]


def heldout_nll(model: torch.nn.Module) -> float:
    """Mean cross-entropy (nats) of the model's logits on the 360 held-out digits."""
    _, _, x, y = demo.digits_split()
    with torch.no_grad():
        return float(F.cross_entropy(model.eval()(x), y))


def compare(student: torch.nn.Module, teacher: torch.nn.Module, seed: int, *, images: int = 256, epochs: int = 30,
            lr: float = 1e-3, augment: bool = True, evaluate=demo.evaluate, **distill_kwargs) -> dict:
    """One seed: fine-tuning (``distill(alpha=0)``) and distillation on the same batches; results and curves."""
    ft = distill(student, teacher, Recovery(images, seed, augment), epochs=epochs, lr=lr, alpha=0.0, seed=seed,
                 evaluate=evaluate, progress=False)
    kd = distill(student, teacher, Recovery(images, seed, augment), epochs=epochs, lr=lr, seed=seed,
                 evaluate=evaluate, progress=False, **distill_kwargs)
    return {"fine-tune": ft, "distill": kd}


def run(seeds: list[int], images: int, epochs: int, lr: float, temperature: float, alpha: float, augment: bool,
        check: bool) -> pd.DataFrame:
    teacher = demo.load_model()
    student = nbopt.prune(teacher, demo.example_input(1), amount=0.7, structured=True, latency=False,
                          progress=False).model
    n = images or len(demo.digits_split()[0])
    print(f"teacher {100 * demo.evaluate(teacher):.2f}%, 70% structured pruned {100 * demo.evaluate(student):.2f}%, "
          f"{sum(p.numel() for p in student.parameters())} params; recovery on {n} training images "
          f"({'shifted by <= 1 px' if augment else 'no augmentation'}), {epochs} epochs, Adam lr {lr}; "
          f"distill T={temperature}, alpha={alpha}")
    rows, curves = [], []
    for seed in seeds:
        r = compare(student, teacher, seed, images=images, epochs=epochs, lr=lr, augment=augment,
                    temperature=temperature, alpha=alpha)
        if check:
            ft = nbopt.finetune(student, Recovery(images, seed, augment), F.cross_entropy, epochs=epochs, lr=lr,
                                seed=seed, progress=False)
            a, b = ft.state_dict(), r["fine-tune"].model.state_dict()
            assert all(torch.equal(a[k], b[k]) for k in a), "distill(alpha=0) differs from finetune"
        curve = pd.DataFrame({k: 100 * v.history["accuracy"] for k, v in r.items()})
        print(f"\nseed {seed}: held-out accuracy (%) per epoch")
        print(curve.T.round(2).to_string())
        curves.append(curve)
        rows.append({"seed": seed, "fine-tune": 100 * r["fine-tune"].accuracy, "distill": 100 * r["distill"].accuracy,
                     "fine-tune NLL": heldout_nll(r["fine-tune"].model),
                     "distill NLL": heldout_nll(r["distill"].model)})
    table = pd.DataFrame(rows).set_index("seed")
    table.insert(2, "distill - fine-tune", table["distill"] - table["fine-tune"])
    gain = table["distill - fine-tune"]
    print("\nheld-out accuracy (%) and NLL (nats) after the last epoch:")
    print(table.round(4).to_string())
    sd = statistics.stdev(gain) if len(gain) > 1 else 0.0
    print(f"mean: fine-tune {table['fine-tune'].mean():.2f}%, distill {table['distill'].mean():.2f}% "
          f"(gain {gain.mean():+.2f} points, std {sd:.2f}, min {gain.min():+.2f}, max {gain.max():+.2f}); "
          f"distill better on {int((gain > 0).sum())}/{len(seeds)} seeds, tied on {int((gain == 0).sum())}; "
          f"NLL fine-tune {table['fine-tune NLL'].mean():.4f}, distill {table['distill NLL'].mean():.4f} "
          f"(lower on {int((table['distill NLL'] < table['fine-tune NLL']).sum())}/{len(seeds)})")
    mean = sum(curves) / len(curves)
    print("held-out accuracy per epoch, mean over seeds (%):")
    print(mean.T.round(2).to_string())
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--images", type=int, default=256, help="recover on the first N training images (0: all 1,437)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=0.9)
    p.add_argument("--no-augment", dest="augment", action="store_false", help="no random 1-pixel shifts")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--check", action="store_true", help="assert distill(alpha=0) == finetune, bit for bit")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    run(a.seeds, a.images, a.epochs, a.lr, a.temperature, a.alpha, a.augment, a.check)


if __name__ == "__main__":
    main()
