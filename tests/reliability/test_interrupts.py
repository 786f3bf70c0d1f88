"""Long-running work interrupted by the notebook's stop button (KeyboardInterrupt) leaves the original model
intact and the kernel usable: the interrupt reaches the user as a KeyboardInterrupt (not wrapped), no hook,
patch or dispatch mode stays behind, and the very same call succeeds afterwards.

The interrupt is simulated where users' code runs: the calibration iterable, ``loss_fn`` and ``evaluate``.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import nbopt
from kernel_state import Snapshot


def api(name: str):
    try:
        return getattr(nbopt, name)
    except (AttributeError, ImportError) as exc:
        pytest.skip(f"nbopt.{name} not available yet: {exc}")


def model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    model.train()  # a model mid-training: flags must come back as they were
    model[1].eval()
    xs = [torch.randn(4, 1, 8, 8) for _ in range(6)]
    ys = [torch.randint(0, 3, (4,)) for _ in range(6)]
    return model, xs, ys


class StopAfter:
    """An iterable of batches that raises KeyboardInterrupt after ``n`` batches (each time it is iterated)."""

    def __init__(self, batches, n: int):
        self.batches, self.n, self.served = batches, n, 0

    def __iter__(self):
        for i, b in enumerate(self.batches):
            if i == self.n:
                raise KeyboardInterrupt
            self.served += 1
            yield b


def stop_on_call(n: int, fn):
    """Wrap ``fn`` so that its ``n``-th call raises KeyboardInterrupt."""
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return fn(*args, **kwargs)
    return wrapped


def interrupted(fn, *args, **kwargs) -> None:
    with pytest.raises(KeyboardInterrupt):
        fn(*args, **kwargs)


def test_profile_interrupted_mid_forward_then_usable():
    model, xs, _ = model_and_data()
    snap = Snapshot.take(model)
    bomb = {"armed": True}

    def pre_hook_free_interrupt(module, args):  # raise from inside the model, as Ctrl-C would
        if bomb["armed"]:
            raise KeyboardInterrupt
    handle = model[2].register_forward_pre_hook(pre_hook_free_interrupt)
    snap_with_hook = Snapshot.take(model)
    interrupted(nbopt.profile, model, xs[0], latency=True, warmup=1, repeat=2)
    snap_with_hook.assert_unchanged()
    handle.remove()
    snap.assert_unchanged()
    assert nbopt.profile(model, xs[0], latency=False).total_macs > 0


def test_calibration_interrupted_then_usable():
    quantize = api("quantize")
    model, xs, _ = model_and_data()
    snap = Snapshot.take(model)
    calib = StopAfter(xs, 3)
    interrupted(quantize, model, calib, weight_bits=8, act_bits=8, progress=False, repeat=1)
    assert calib.served >= 3  # stopped partway through calibration, not before it began
    snap.assert_unchanged()
    result = quantize(model, xs, weight_bits=8, act_bits=8, progress=False, repeat=1)
    snap.assert_unchanged()
    assert result.fidelity["cosine"] > 0.9


def test_sensitivity_sweep_interrupted_then_usable():
    sensitivity = api("sensitivity")
    model, xs, ys = model_and_data()
    snap = Snapshot.take(model)

    def accuracy(m):
        with torch.no_grad():
            return float(sum((m(x).argmax(1) == y).float().mean() for x, y in zip(xs, ys)) / len(xs))
    interrupted(sensitivity, model, xs, evaluate=stop_on_call(2, accuracy), bits=(8, 4), progress=False)
    snap.assert_unchanged()
    table = sensitivity(model, xs, evaluate=accuracy, bits=(8, 4), progress=False)
    snap.assert_unchanged()
    assert len(table) == 2  # the conv and the linear layer


def test_qat_interrupted_then_usable():
    qat = api("qat")
    model, xs, ys = model_and_data()
    snap = Snapshot.take(model)
    data = list(zip(xs, ys))
    loss = nn.functional.cross_entropy
    interrupted(qat, model, data, stop_on_call(3, loss), epochs=1, progress=False, weight_bits=8, act_bits=8,
                on_interrupt="raise")
    snap.assert_unchanged()
    stream = StopAfter(data, 2)
    interrupted(qat, model, stream, loss, epochs=1, progress=False, weight_bits=8, act_bits=8, on_interrupt="raise")
    assert stream.served >= 2
    snap.assert_unchanged()
    result = qat(model, data, loss, epochs=1, progress=False, weight_bits=8, act_bits=8)
    snap.assert_unchanged()
    assert result.model is not model


def test_finetune_interrupted_then_usable():
    finetune = api("finetune")
    model, xs, ys = model_and_data()
    snap = Snapshot.take(model)
    rng = torch.random.get_rng_state()
    data = list(zip(xs, ys))
    loss = nn.functional.cross_entropy
    interrupted(finetune, model, data, stop_on_call(2, loss), epochs=2, progress=False, on_interrupt="raise")
    snap.assert_unchanged()
    assert torch.equal(torch.random.get_rng_state(), rng), "the global RNG was left forked/reseeded"
    tuned = finetune(model, data, loss, epochs=1, progress=False)
    snap.assert_unchanged()
    assert tuned is not model and not tuned.training


def test_pruner_interrupted_during_evaluation_keeps_its_setting():
    """A slider callback interrupted while the user's evaluate runs: the Pruner's copy keeps its setting."""
    Pruner = api("Pruner")
    model, xs, _ = model_and_data()
    model.eval()
    snap = Snapshot.take(model)
    pruner = Pruner(model, xs[0], progress=False).set(0.5)
    from tests.snapshot import same_state, state_fingerprint
    at_half = state_fingerprint(pruner.model)
    evaluate = stop_on_call(1, lambda m: m(xs[0]).sum())
    interrupted(evaluate, pruner.model)
    assert same_state(pruner.model, at_half)
    pruner.set(0.2).set(0.5)
    assert same_state(pruner.model, at_half)
    snap.assert_unchanged()


def test_finetune_interrupted_returns_the_partial_copy_labelled_partial():
    """Stop pressed at the 4th loss call: steps 1-3 are kept, labelled partial, and equal a 3-batch run."""
    finetune = api("finetune")
    from tests.snapshot import same_state, state_fingerprint
    from nbopt import PartialResultWarning
    model, xs, ys = model_and_data()
    snap, rng = Snapshot.take(model), torch.random.get_rng_state()
    data, loss = list(zip(xs, ys)), nn.functional.cross_entropy
    with pytest.warns(PartialResultWarning, match=r"interrupted after 0 of 2 epochs \(3 steps\); returning the "
                                                  r"partly trained copy"):
        partial = finetune(model, data, stop_on_call(4, loss), epochs=2, progress=False)
    snap.assert_unchanged()
    assert torch.equal(torch.random.get_rng_state(), rng)
    info = partial.finetune_info
    assert (info.partial, info.epochs_completed, info.steps_completed, info.steps_planned) == (True, 0, 3, 12)
    assert partial is not model and not partial.training
    three = finetune(model, data[:3], loss, epochs=1, progress=False)
    assert same_state(partial, state_fingerprint(three))  # exactly the work done before the interrupt
    assert not three.finetune_info.partial and three.finetune_info.steps_completed == 3


def test_finetune_interrupted_in_a_later_epoch_counts_finished_epochs():
    finetune = api("finetune")
    from nbopt import PartialResultWarning
    model, xs, ys = model_and_data()
    with torch.no_grad():
        model[4].weight[:, :20] = 0  # pruned weights stay zero in the partial result too
    snap = Snapshot.take(model)
    data = list(zip(xs, ys))
    with pytest.warns(PartialResultWarning, match=r"after 1 of 3 epochs \(8 steps\)"):
        partial = finetune(model, data, stop_on_call(9, nn.functional.cross_entropy), epochs=3, progress=False)
    snap.assert_unchanged()
    assert (partial.finetune_info.epochs_completed, partial.finetune_info.steps_completed) == (1, 8)
    assert int(torch.count_nonzero(partial[4].weight[:, :20])) == 0
    assert not torch.equal(partial[4].weight, model[4].weight)


def test_finetune_interrupted_before_any_step_propagates(recwarn):
    """Nothing to keep: the interrupt reaches the user unwrapped, with no partial warning and the model intact."""
    from nbopt import PartialResultWarning
    finetune = api("finetune")
    model, xs, ys = model_and_data()
    data, snap = list(zip(xs, ys)), Snapshot.take(model)
    for loss, stream in [(stop_on_call(1, nn.functional.cross_entropy), data),
                         (nn.functional.cross_entropy, StopAfter(data, 0))]:
        interrupted(finetune, model, stream, loss, epochs=2, progress=False)
    assert not [w for w in recwarn if issubclass(w.category, PartialResultWarning)]
    snap.assert_unchanged()


# ---------------------------------------------------------------- interrupted sweeps return partial results
def _accuracy(xs, ys):
    def accuracy(m):
        with torch.no_grad():
            return float(sum((m(x).argmax(1) == y).float().mean() for x, y in zip(xs, ys)) / len(xs))
    return accuracy


def test_sensitivity_interrupted_in_evaluate_returns_the_layers_done():
    """Calls of evaluate: 1 = fp32 baseline, 2-3 = layer '0' at 8 and 4 bits, 4 = layer '4' at 8 bits."""
    sensitivity = api("sensitivity")
    from nbopt import PartialResultWarning
    model, xs, ys = model_and_data()
    snap = Snapshot.take(model)
    full = sensitivity(model, xs, evaluate=_accuracy(xs, ys), bits=(8, 4), progress=False)
    with pytest.warns(PartialResultWarning) as record:
        part = sensitivity(model, xs, evaluate=stop_on_call(4, _accuracy(xs, ys)), bits=(8, 4), progress=False)
    assert str(record[0].message) == ("sensitivity interrupted after 1 of 2 layers; returning partial results "
                                      "(df.attrs['partial'] is True).")
    snap.assert_unchanged()
    assert part.attrs["partial"] is True and part.attrs["layers_total"] == 2 and full.attrs["partial"] is False
    assert list(part.index) == ["0"] and part.loc["0"].equals(full.loc["0"])
    interrupted(sensitivity, model, xs, evaluate=stop_on_call(4, _accuracy(xs, ys)), bits=(8, 4), progress=False,
                on_interrupt="raise")
    snap.assert_unchanged()


def test_sensitivity_interrupted_in_cached_sweep_returns_the_layers_done(monkeypatch):
    """The Ctrl-C lands while the third (layer, bits) cell is being quantized: layer '0' is kept."""
    sensitivity = api("sensitivity")
    import importlib
    sens = importlib.import_module("nbopt.quantization.sensitivity")  # the module, not the function it exports
    from nbopt import PartialResultWarning
    model, xs, _ = model_and_data()
    snap = Snapshot.take(model)
    full = sensitivity(model, xs, bits=(8, 4), progress=False)
    monkeypatch.setattr(sens, "fake_quant", stop_on_call(3, sens.fake_quant))
    with pytest.warns(PartialResultWarning, match=r"after 1 of 2 layers"):
        part = sensitivity(model, xs, bits=(8, 4), progress=False)
    snap.assert_unchanged()
    assert part.attrs["partial"] is True and part.attrs["method"] == "cached"
    assert list(part.index) == ["0"] and part.loc["0"].equals(full.loc["0"])


def test_qat_interrupted_returns_a_partial_result_with_the_steps_done():
    """6 steps per epoch: loss_fn's 9th call is in epoch 2, so the result has the weights after 8 steps."""
    qat = api("qat")
    from nbopt import PartialResultWarning
    model, xs, ys = model_and_data()
    snap = Snapshot.take(model)
    data = list(zip(xs, ys))
    loss = nn.functional.cross_entropy
    eight_steps = qat(model, data + data[:2], loss, epochs=1, calib=xs, progress=False, weight_bits=4, act_bits=8)
    with pytest.warns(PartialResultWarning) as record:
        part = qat(model, data, stop_on_call(9, loss), epochs=3, progress=False, weight_bits=4, act_bits=8)
    assert str(record[0].message) == ("QAT was interrupted after 1 of 3 epochs (8 steps); converting the weights "
                                      "reached so far (result.partial is True).")
    snap.assert_unchanged()
    assert part.partial and not eight_steps.partial and "PARTIAL" in repr(part)
    assert part.notes[-1] == "PARTIAL: QAT was interrupted; the model has the weights after 1 of 3 epochs (8 steps)."
    with torch.no_grad():
        assert torch.equal(part.model(xs[0]), eight_steps.model(xs[0]))  # exactly the 8 steps done


def test_qat_interrupted_before_the_first_step_propagates():
    qat = api("qat")
    model, xs, ys = model_and_data()
    snap = Snapshot.take(model)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        interrupted(qat, model, list(zip(xs, ys)), stop_on_call(1, nn.functional.cross_entropy), epochs=2,
                    progress=False, weight_bits=8, act_bits=8)
    snap.assert_unchanged()
