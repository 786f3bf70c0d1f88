"""The bundled demo: real data, a real trained model, measured accuracy."""
from __future__ import annotations

import torch

from nbopt import demo


def test_split_is_seeded_stratified_and_disjoint():
    x_tr, y_tr, x_te, y_te = demo.digits_split()
    assert (len(x_tr), len(x_te)) == (1437, 360)
    assert x_tr.shape[1:] == (1, 8, 8) and x_tr.dtype == torch.float32
    assert torch.bincount(y_te).min() >= 35  # stratified: every digit is held out
    train_rows = {tuple(r.flatten().tolist()) for r in x_tr}
    assert sum(tuple(r.flatten().tolist()) in train_rows for r in x_te) < 5  # only true duplicate images


def test_shipped_weights_reach_high_accuracy_and_are_small():
    model = demo.load_model()
    assert demo.evaluate(model) > 0.98
    assert demo.WEIGHTS.stat().st_size < 1024 * 1024
    assert 90_000 < sum(p.numel() for p in model.parameters()) < 120_000


def test_training_is_reproducible():
    from nbopt.demo.train import train
    m1, m2 = train(epochs=1, progress=False), train(epochs=1, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(m1.state_dict().values(), m2.state_dict().values()))


def test_evaluate_restores_training_mode():
    model = demo.load_model().train()
    demo.evaluate(model)
    assert model.training
