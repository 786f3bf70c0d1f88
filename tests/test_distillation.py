"""nbopt.distill: logit + feature distillation on a copy, per-epoch curves, the stop button keeps the epochs done.

The measured claim (benchmarks/distill.py): after 70% structured channel pruning of the demo CNN, recovering on
few images (the first 256 training digits, shifted by up to a pixel, 30 epochs), distillation from the unpruned
model beats fine-tuning with the same batches, epochs, optimizer and seed on every seed measured, in held-out
accuracy and NLL; on all 1,437 images for 3 epochs it does not (fine-tuning 99.00%, distillation
98.78%, tied on 3 of 5 seeds; distillation's NLL is lower). ``alpha=0`` is exactly ``finetune``.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import nbopt
from nbopt import demo
from nbopt.distillation import DistillResult, distill
from nbopt.errors import InputError, PartialResultWarning


@pytest.fixture(scope="module")
def teacher():
    return demo.load_model()


@pytest.fixture(scope="module")
def pruned(teacher):
    torch.set_num_threads(1)
    return nbopt.prune(teacher, demo.example_input(1), amount=0.7, structured=True, latency=False,
                       progress=False).model


def small_loader(n_batches=6, seed=0):
    return [b for b, _ in zip(demo.train_loader(seed=seed), range(n_batches))]


def _benchmark():
    spec = importlib.util.spec_from_file_location("distill_benchmark",
                                                  Path(__file__).parents[1] / "benchmarks" / "distill.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _few_image_recovery(pruned, teacher, seeds):
    """benchmarks/distill.py's recipe on ``seeds``: (fine-tune, distill) held-out accuracy and NLL per seed."""
    bench = _benchmark()
    out = []
    for seed in seeds:
        r = bench.compare(pruned, teacher, seed, images=256, epochs=30, evaluate=None)
        out.append({k: (demo.evaluate(v.model), bench.heldout_nll(v.model)) for k, v in r.items()})
    return out


def test_distillation_beats_finetune_on_few_images(pruned, teacher):
    # measured (benchmarks/distill.py, 1 thread), held-out accuracy % fine-tune / distill (NLL):
    # seed 0 96.39 / 96.67 (0.251 / 0.196), 1 96.11 / 97.50 (0.261 / 0.212), 2 96.11 / 97.22 (0.250 / 0.208),
    # 3 95.56 / 96.39 (0.256 / 0.202), 4 96.67 / 97.22 (0.250 / 0.191). Seed 0's margin is one image of 360,
    # so the quick test takes seeds 1 and 2; the slow test below asserts all five.
    runs = _few_image_recovery(pruned, teacher, seeds=(1, 2))
    for r in runs:
        (ft_acc, ft_nll), (kd_acc, kd_nll) = r["fine-tune"], r["distill"]
        assert kd_acc > ft_acc and kd_nll < ft_nll
    gain = sum(r["distill"][0] - r["fine-tune"][0] for r in runs) / len(runs)
    assert gain > 0.005  # measured: +1.25 points on these two seeds


@pytest.mark.skipif(not os.environ.get("NBOPT_SLOW"), reason="5 seeds of 30 epochs: set NBOPT_SLOW=1")
def test_distillation_beats_finetune_on_every_seed(pruned, teacher):
    runs = _few_image_recovery(pruned, teacher, seeds=range(5))
    assert all(r["distill"][0] > r["fine-tune"][0] and r["distill"][1] < r["fine-tune"][1] for r in runs)


def test_exported_lazily():
    assert nbopt.distill is distill


def test_alpha_zero_is_finetune_bit_for_bit(pruned, teacher):
    ft = nbopt.finetune(pruned, demo.train_loader(seed=1), F.cross_entropy, epochs=1, lr=1e-3, seed=1,
                        progress=False)
    d = distill(pruned, teacher, demo.train_loader(seed=1), epochs=1, lr=1e-3, alpha=0.0, seed=1,
                evaluate=demo.evaluate, progress=False)
    a, b = ft.state_dict(), d.model.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert d.history.loc[1, "accuracy"] == demo.evaluate(ft)


def test_distillation_recovers_pruned_accuracy(pruned, teacher, untouched):
    snaps = untouched(pruned), untouched(teacher)
    before = demo.evaluate(pruned)
    r = distill(pruned, teacher, demo.train_loader(seed=0), epochs=3, lr=1e-3, seed=0, evaluate=demo.evaluate,
                progress=False)
    for s in snaps:
        s.assert_unchanged()
    assert isinstance(r, DistillResult) and r.model is not pruned and not r.model.training
    assert list(r.history.index) == [0, 1, 2, 3] and r.epochs_completed == 3 and not r.partial
    assert r.history.loc[0, "accuracy"] == before  # the pruned student, measured, before training
    assert r.accuracy == demo.evaluate(r.model)
    assert before < 0.2 and r.accuracy > 0.95  # measured: 9.7% -> 98.6% (seed 0); teacher 99.4%
    assert r.teacher_accuracy == demo.evaluate(teacher)
    parts = r.history.loc[1:, ["soft_loss", "hard_loss"]]
    assert (parts > 0).all().all() and r.history["loss"].iloc[-1] < r.history["loss"].iloc[1]
    # structured pruning keeps its shapes: same parameter names and shapes as the student
    assert {k: v.shape for k, v in r.model.state_dict().items()} == {k: v.shape for k, v in pruned.state_dict().items()}


def test_feature_matching_learns_a_projection_and_drops_it(pruned, teacher):
    width_s = pruned.get_submodule("block3.conv2.0").out_channels
    width_t = teacher.get_submodule("block3.conv2.0").out_channels
    assert width_s < width_t  # widths differ: a learned 1x1 projection is needed
    r = distill(pruned, teacher, small_loader(), epochs=1, features=[("block3", "block3")], seed=0, progress=False)
    assert r.history.loc[1, "feature_loss"] > 0
    assert set(r.model.state_dict()) == set(pruned.state_dict())  # the projection is not part of the student


def test_mse_loss_and_sparsity_kept(teacher):
    sparse = nbopt.prune(teacher, demo.example_input(1), amount=0.5, latency=False, progress=False).model
    zeros = {n: (p == 0) for n, p in sparse.named_parameters() if p.dim() > 1}
    r = distill(sparse, teacher, small_loader(3), epochs=1, loss="mse", seed=0, progress=False)
    for n, p in r.model.named_parameters():
        if n in zeros:
            assert bool((p[zeros[n]] == 0).all())
    assert r.history.loc[1, "soft_loss"] > 0


def test_interrupt_keeps_finished_epochs(pruned, teacher):
    class StopSecondEpoch:
        def __init__(self):
            self.batches, self.epoch = small_loader(3), 0

        def __len__(self):
            return len(self.batches)

        def __iter__(self):
            self.epoch += 1
            for i, b in enumerate(self.batches):
                if self.epoch == 2 and i == 1:
                    raise KeyboardInterrupt
                yield b

    with pytest.warns(PartialResultWarning, match="1 of 3 epochs"):
        r = distill(pruned, teacher, StopSecondEpoch(), epochs=3, seed=0, evaluate=demo.evaluate, progress=False)
    assert r.partial and r.epochs_completed == 1 and r.steps_completed == 4
    assert list(r.history.index) == [0, 1]
    with pytest.raises(KeyboardInterrupt):
        distill(pruned, teacher, StopSecondEpoch(), epochs=3, on_interrupt="raise", progress=False)


@pytest.mark.parametrize("kwargs, match", [
    ({"alpha": 1.5}, "alpha"), ({"loss": "ce"}, "loss must be"), ({"temperature": 0}, "temperature"),
    ({"epochs": 0}, "epochs"), ({"features": [("nope", "block3")]}, "no layer 'nope'"),
    ({"features": [("stem", "block3")]}, "differ beyond"),
])
def test_errors_say_the_fix(pruned, teacher, kwargs, match):
    with pytest.raises(InputError, match=match):
        distill(pruned, teacher, small_loader(1), progress=False, **kwargs)


def test_unlabelled_data_is_an_error(pruned, teacher):
    with pytest.raises(InputError, match=r"\(inputs, labels\)"):
        distill(pruned, teacher, [torch.randn(4, 1, 8, 8)], progress=False)


def test_transformer_student_from_config():
    pytest.importorskip("transformers")
    from tests import hf_models

    teacher, cfg = hf_models.gpt2()
    student, _ = hf_models.gpt2(n_layer=1)
    x = hf_models.ids(cfg, batch=4, seq=16)
    data = [(x, x.roll(-1, dims=1))] * 4
    with torch.no_grad():
        gap = lambda m: float(F.kl_div(F.log_softmax(m(x).logits, -1), F.log_softmax(teacher(x).logits, -1),  # noqa: E731
                                       log_target=True, reduction="batchmean"))
        before = gap(student)
    r = distill(student, teacher, data, epochs=3, alpha=1.0, lr=3e-3, seed=0, progress=False)
    with torch.no_grad():
        assert gap(r.model) < before
    assert r.history["hard_loss"].iloc[1:].eq(0).all()  # alpha=1: teacher only


def test_plot_draws_curves(pruned, teacher):
    import matplotlib

    matplotlib.use("Agg")
    r = distill(pruned, teacher, small_loader(2), epochs=2, seed=0, evaluate=demo.evaluate, progress=False)
    fig = r.plot()
    assert len(fig.axes[0].lines) == 2  # the student's curve and the teacher line
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_optimize_recover_distill(teacher):
    r = nbopt.optimize(teacher, demo.example_input(1), calib=demo.calibration_data(64), evaluate=demo.evaluate,
                       steps=("fuse", "prune"), prune_amount=0.7, recover="distill",
                       recover_data=demo.train_loader(seed=0), recover_epochs=2, repeat=3, progress=False)
    row = r.table.loc["prune"]
    assert "recovered by distillation" in row["note"]
    fused = nbopt.fuse(teacher, demo.example_input(1)).model  # what optimize prunes: BatchNorm folded
    plain = nbopt.Pruner(fused, demo.example_input(1), progress=False).set(0.7, structured=True).export()
    assert row["accuracy"] > demo.evaluate(plain) + 0.15  # measured: 0.10 -> 0.32 (2 epochs, no BatchNorm left)
    assert row["accuracy"] == demo.evaluate(r.model)


@pytest.mark.parametrize("kwargs, match", [
    ({"recover": "distill"}, "recover_data"), ({"recover": "teach", "recover_data": [1]}, "recover must be"),
    ({"recover": "finetune", "recover_data": [1], "finetune": lambda m: m}, "not both"),
])
def test_optimize_recover_errors(teacher, kwargs, match):
    with pytest.raises(nbopt.NboptError, match=match):
        nbopt.optimize(teacher, demo.example_input(1), calib=demo.calibration_data(64), steps=("prune",),
                       progress=False, **kwargs)


def test_demo_lm_student_learns_from_the_trained_teacher():
    pytest.importorskip("transformers")
    from nbopt.demo import lm

    teacher = lm.load()
    torch.manual_seed(0)
    student = lm.build(num_hidden_layers=1).eval()  # a 1-layer student, random weights
    w = lm.windows("train", 32, 65)
    data = [(b[:, :-1], b[:, 1:]) for b in torch.split(w, 8)]  # next-byte labels per position
    before = lm.perplexity(student, chunks=8, seq_len=64)
    r = distill(student, teacher, data, epochs=2, lr=3e-3, alpha=0.9, seed=0, progress=False,
                evaluate=lambda m: -lm.perplexity(m, chunks=8, seq_len=64))  # "accuracy": higher is better
    after = lm.perplexity(r.model, chunks=8, seq_len=64)
    assert after < before / 2 and r.history.loc[2, "accuracy"] == pytest.approx(-after)
    assert r.teacher_accuracy > r.history.loc[2, "accuracy"]  # the 4-layer teacher is still better


def test_logits_of_is_one_helper_for_distill_and_the_demo_lm():
    from nbopt.demo import lm
    from nbopt.distillation import logits_of

    assert lm.logits_of is logits_of  # demo.lm's perplexity and distill read logits the same way
    t = torch.arange(6.0).reshape(2, 3)
    assert logits_of(t) is t and logits_of((t, None)) is t and logits_of([t]) is t and logits_of({"logits": t}) is t
    transformers = pytest.importorskip("transformers")
    assert logits_of(transformers.modeling_outputs.CausalLMOutput(loss=torch.ones(()), logits=t)) is t
    with pytest.raises(nbopt.NboptError, match="logits"):
        logits_of({"hidden": t})
