"""Unstructured pruning: exact sparsity, reversibility bit for bit, bad input, the original untouched."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import nbopt
from nbopt import demo
from nbopt.errors import NboptError
from tests.snapshot import same_state, state_fingerprint
from nbopt.pruning import Pruner


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return demo.load_model()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return demo.example_input(4)


@pytest.fixture(scope="module")
def pruner(model, x) -> Pruner:
    return Pruner(model, x, progress=False)


def zeros(m: nn.Module) -> int:
    return int((m.weight == 0).sum())


def test_global_amount_is_exact_and_ranks_across_layers(pruner):
    pruner.set(amount=0.5)
    w = [m.module.weight for m in pruner._masks.values()]
    total = sum(t.numel() for t in w)
    assert sum(int((t == 0).sum()) for t in w) == round(0.5 * total)
    cut = max(float(t[t == 0].numel() and pruner._masks[n].original[t == 0].abs().max())
              for n, t in zip(pruner._masks, w))
    kept_min = min(float(pruner._masks[n].original[t != 0].abs().min()) for n, t in zip(pruner._masks, w))
    assert cut <= kept_min  # every removed weight is no larger than every kept one
    rep = pruner.report
    assert rep["sparsity"].nunique() > 1  # global: layers differ
    assert abs(pruner.sparsity - 0.5) < 1e-6


def test_layer_scope_exact_per_layer(pruner):
    pruner.set(amount=0.3, scope="layer")
    for m in pruner._masks.values():
        assert zeros(m.module) == round(0.3 * m.numel)
    assert pruner.report["sparsity"].tolist() == [round(0.3 * m.numel) / m.numel for m in pruner._masks.values()]


def test_threshold_removes_exactly_the_small_weights(pruner):
    pruner.set(threshold=0.05)
    for m in pruner._masks.values():
        assert zeros(m.module) == int((m.original.abs() < 0.05).sum())


def test_overrides_get_their_own_amount(pruner):
    pruner.set(amount=0.5, overrides={"fc": 0.1, "stem.0": 0.0})
    masks = pruner._masks
    assert zeros(masks["fc"].module) == round(0.1 * masks["fc"].numel)
    assert zeros(masks["stem.0"].module) == 0
    rest = [m for n, m in masks.items() if n not in ("fc", "stem.0")]
    assert sum(zeros(m.module) for m in rest) == round(0.5 * sum(m.numel for m in rest))


def test_amount_zero_gives_identical_outputs(model, x):
    p = Pruner(model, x, progress=False).set(amount=0.0)
    with torch.no_grad():
        assert torch.equal(p.export().eval()(x), model(x))


def test_sliding_back_restores_bit_for_bit(model, x, pruner):
    fp = state_fingerprint(model)
    for a in (0.2, 0.9, 0.5):
        pruner.set(amount=a)
    pruner.set(amount=0.4, structured=True)
    pruner.set(threshold=0.1, scope="layer")
    pruner.set(amount=0.0)
    assert same_state(pruner.model, fp)
    assert same_state(model, fp)


def test_export_is_independent_and_original_untouched(model, x, untouched):
    guard = untouched(model)
    p = Pruner(model, x, progress=False).set(amount=0.7)
    out = p.export()
    assert out is not model and out is not p.model
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(out.parameters(), model.parameters()))
    p.set(amount=0.0)
    assert int((out.fc.weight == 0).sum()) > 0  # the export kept its setting
    guard.assert_unchanged()


def test_layers_and_exclude(model, x):
    p = Pruner(model, x, exclude=["fc", "block1"], progress=False).set(amount=0.6)
    assert "fc" not in p.layer_names and not any(n.startswith("block1.") for n in p.layer_names)
    assert int((p.model.fc.weight == 0).sum()) == 0
    p = Pruner(model, x, layers=["block3"], progress=False)
    assert p.layer_names == ["block3.conv1.0", "block3.conv2.0"]


def test_report_columns_and_effective_macs(pruner):
    pruner.set(amount=0.5, scope="layer")
    rep = pruner.report
    for col in ("sparsity", "params_before", "params_after", "dense_macs", "effective_macs", "channels_kept"):
        assert col in rep.columns
    from nbopt.profiling import profile
    table = profile(pruner.original, pruner.example_inputs, latency=False).table
    assert rep["dense_macs"].tolist() == table.loc[rep.index, "macs"].astype(float).tolist()
    assert (rep["effective_macs"] == rep["dense_macs"] * (1 - rep["sparsity"])).all()


@pytest.mark.parametrize("kwargs, words", [
    ({"amount": 1.0}, ["[0, 1)"]),
    ({"amount": -0.1}, ["[0, 1)"]),
    ({"amount": 0.5, "threshold": 0.1}, ["not both"]),
    ({"threshold": 100.0}, ["removes every weight", "exclude"]),
    ({"amount": 0.5, "scope": "model"}, ["scope"]),
    ({"amount": 0.5, "overrides": {"nope": 0.2}}, ["'nope'"]),
    ({"amount": 0.5, "overrides": {"fc": 1.5}}, ["overrides['fc']"]),
])
def test_bad_settings_raise_and_change_nothing(model, x, kwargs, words):
    p = Pruner(model, x, progress=False).set(amount=0.3)
    before = state_fingerprint(p.model)
    with pytest.raises(NboptError) as err:
        p.set(**kwargs)
    assert all(w in str(err.value) for w in words), str(err.value)
    assert same_state(p.model, before)


def test_unknown_layer_name(model, x):
    with pytest.raises(NboptError, match="'block9'.*qualified module name"):
        Pruner(model, x, exclude=["block9"])
    with pytest.raises(TypeError):
        Pruner(model, x, layers="fc")
    with pytest.raises(TypeError):
        Pruner(model.state_dict(), x)


def test_one_shot_prune_summary(model, x, untouched):
    guard = untouched(model)
    r = nbopt.prune(model, x, amount=0.5, scope="layer", latency=False, progress=False)
    assert isinstance(r, nbopt.PruneResult)
    s = r.summary
    assert s.loc["params", "ratio"] == 1.0  # dense storage is unchanged by zeros
    assert s.loc["nonzero_params", "ratio"] > 1.5
    assert s.loc["effective_macs", "after"] < s.loc["macs", "after"]
    assert "latency_ms" not in s.index
    guard.assert_unchanged()


def test_tied_weights_are_counted_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 8)
            self.b = nn.Linear(8, 8)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(self.a(x))

    p = Pruner(Tied(), torch.randn(2, 8), progress=False).set(amount=0.5)
    assert p.layer_names == ["a", "b"] or p.layer_names == ["a"]
    assert int((p.model.a.weight == 0).sum()) == 32


def test_global_cut_exact_with_ties_both_paths():
    """The bisection equals the cut read from the whole pool sorted (the obvious, slow way)."""
    from nbopt.pruning.masks import _split_at, build_masks, global_counts
    torch.manual_seed(1)
    layers = {f"l{i}": nn.Linear(7 + i, 5) for i in range(4)}
    for m in layers.values():
        m.weight.data = (m.weight.data * 4).round() / 4  # many exact ties
    masks = list(build_masks(layers).values())
    pool = torch.cat([m.sorted_abs for m in masks]).sort().values
    total = sum(m.numel for m in masks)
    for k in range(0, total + 1, 3):
        slow = _split_at(masks, k, pool[k - 1].view(1)) if k else {m.name: 0 for m in masks}
        fast = global_counts(masks, k)
        assert fast == slow and sum(fast.values()) == k
        cut = pool[k - 1] if k else -1.0
        assert all(float(m.sorted_abs[c - 1]) <= cut for m, c in zip(masks, fast.values()) if c)


# ---------------------------------------------------------------- timing a user can trust (issue 18, section 2)

def test_prune_latency_rows_come_from_one_measurement(demo_model):
    r = nbopt.prune(demo_model, demo.example_input(2), amount=0.3, structured=True, progress=False)
    s = r.summary
    before, after = s.loc["latency_ms", "before"], s.loc["latency_ms", "after"]
    assert s.loc["latency_ms", "ratio"] == before / after == r.speedup == r.speedup_spread.value
    for col in ("before", "after"):
        assert s.loc["latency_q1_ms", col] <= s.loc["latency_ms", col] <= s.loc["latency_q3_ms", col]
    assert s.loc["latency_calls", "before"] == s.loc["latency_calls", "after"] == r.speedup_spread.n >= 9
    assert s.loc["speedup_q1", "ratio"] == r.speedup_spread.q1 <= s.loc["speedup_q3", "ratio"]
    assert r.latency["before"]["median_ms"] == before and r.latency["after"]["n"] == r.speedup_spread.n
    assert "IQR" in repr(r) and isinstance(r.noisy, bool) and s.attrs["noisy"] == r.noisy
    assert (r.notes == [s.attrs["note"]] and "NOISY" in repr(r)) if r.noisy else r.notes == []


def test_prune_busy_machine_flags_the_latency(monkeypatch, demo_model):
    from nbopt import timing
    monkeypatch.setattr(timing, "machine_load", lambda: timing.MachineLoad(40.0, 2))
    r = nbopt.prune(demo_model, demo.example_input(1), amount=0.3, structured=True, progress=False)
    assert r.noisy and "machine busy (load 40.0 on 2 cores)" in r.notes[0]
    assert "NOISY" in repr(r) and "machine busy" in r._repr_html_()
