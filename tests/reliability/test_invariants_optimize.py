"""Property-based invariants of pruning and quantization over random small networks.

* the model passed in is never touched (state, hooks, flags, torch namespaces, dispatch modes);
* pruning amount 0 reproduces the original outputs exactly; sliding a Pruner back to an earlier setting
  restores the weights bit for bit;
* 16-bit simulation reproduces the original outputs (to float rounding of BatchNorm folding).
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nbopt
from nbopt.model_state import preserved
from tests.snapshot import same_state, state_fingerprint
from kernel_state import Snapshot
from strategies import RELIABLE, cases

FEW = settings(RELIABLE, max_examples=max(5, RELIABLE.max_examples // 2))
FEWER = settings(RELIABLE, max_examples=max(4, RELIABLE.max_examples // 4))  # quantize: copies, FX, timing


def plain(case):
    """The case's model behind an ``nn.Sequential`` (one positional input: FX capture sees no optional kwarg)."""
    return torch.nn.Sequential(case.model)


def api(name: str):
    try:
        return getattr(nbopt, name)
    except (AttributeError, ImportError) as exc:
        pytest.skip(f"nbopt.{name} not available yet: {exc}")


def outputs(model: torch.nn.Module, x) -> torch.Tensor:
    with preserved(model, eval_mode=True), torch.no_grad():  # mixed per-module flags come back as they were
        return model(**x) if isinstance(x, dict) else model(x)


# ---------------------------------------------------------------- pruning
@FEW
@given(case=cases(max_blocks=3, family="image", keyword=False),
       amounts=st.lists(st.sampled_from([0.0, 0.2, 0.5, 0.9]), min_size=1, max_size=4),
       structured=st.booleans())
def test_pruner_slides_back_bit_for_bit_and_never_touches_the_model(case, amounts, structured):
    Pruner = api("Pruner")
    x = case.inputs()
    snap = Snapshot.take(case.model)
    before = outputs(case.model, x)
    pruner = Pruner(case.model, x, progress=False)
    original = state_fingerprint(pruner.model)
    seen = {}
    for a in amounts:
        try:
            pruner.set(a, structured=structured)
        except nbopt.NboptError as exc:  # e.g. no channel group a structured plan can remove
            assert structured, exc
            continue
        state = state_fingerprint(pruner.model)
        if a in seen:  # the same setting again gives the same weights, whatever came between
            assert same_state(pruner.model, seen[a])
        seen[a] = state
    pruner.set(0.0)
    assert same_state(pruner.model, original), "sliding back to 0 did not restore the weights bit for bit"
    assert torch.equal(outputs(pruner.model, x), before)
    pruner.reset()
    assert same_state(pruner.model, original)
    snap.assert_unchanged()


@FEW
@given(case=cases(max_blocks=3, keyword=False))
def test_prune_amount_zero_reproduces_the_outputs(case):
    prune = api("prune")
    x = case.inputs()
    snap = Snapshot.take(case.model)
    before = outputs(case.model, x)
    try:
        result = prune(case.model, x, amount=0.0, latency=False, progress=False)
    except nbopt.NboptError as exc:
        assert "prunable" in str(exc)  # e.g. a net whose only layers are shared/attention internals
        snap.assert_unchanged()
        return
    snap.assert_unchanged()
    assert result.model is not case.model
    assert torch.equal(outputs(result.model, x), before)


# ---------------------------------------------------------------- quantization
@FEWER
@given(case=cases(max_blocks=2, family="image", keyword=False), act=st.sampled_from([16, None]))
def test_16_bit_simulation_reproduces_the_outputs(case, act):
    quantize = api("quantize")
    model, x = plain(case), case.inputs(batch=4)
    snap = Snapshot.take(model)
    before = outputs(model, x)
    result = quantize(model, x, weight_bits=16, act_bits=act, progress=False, repeat=1)
    snap.assert_unchanged()
    after = outputs(result.model, x)
    scale = before.abs().max().item() + 1e-6
    assert (after - before).abs().max().item() <= 2e-3 * scale, (after - before).abs().max()
    assert result.fidelity.get("top1_agreement", 1.0) == 1.0 or before.shape[1] == 1


@FEWER
@given(case=cases(max_blocks=2, family="image", keyword=False), bits=st.sampled_from([2, 4, 8]))
def test_quantize_and_sensitivity_never_touch_the_model(case, bits):
    quantize, sensitivity = api("quantize"), api("sensitivity")
    model, x = plain(case), case.inputs(batch=4)
    snap = Snapshot.take(model)
    quantize(model, x, weight_bits=bits, act_bits=8, progress=False, repeat=1)
    snap.assert_unchanged()
    table = sensitivity(model, x, bits=(bits,), progress=False)
    snap.assert_unchanged()
    assert len(table) >= 1  # the Linear head at least


def test_quantize_model_with_optional_keyword_argument():
    """A forward(x, mask=None): BN folding and sensitivity's fx trace keep the optional argument working."""
    quantize, sensitivity = api("quantize"), api("sensitivity")

    class WithMask(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, x, mask=None):
            y = self.fc(x)
            return y if mask is None else y * mask

    model, x = WithMask(), torch.randn(8, 4)
    result = quantize(model, x, weight_bits=8, act_bits=8, progress=False, repeat=1)
    assert result.fidelity["cosine"] > 0.99
    mask = torch.zeros(8, 3)
    assert torch.equal(result.model(x, mask=mask), mask)  # the optional argument still does its job
    table = sensitivity(model, x, bits=(8, 4), progress=False)
    naive = sensitivity(model, x, bits=(8, 4), method="naive", progress=False)
    assert table.attrs["method"] == "cached" and list(table.index) == ["fc"]
    assert torch.allclose(torch.tensor(table.values[:, 1:].astype(float)),
                          torch.tensor(naive.values[:, 1:].astype(float)), atol=1e-4)


# ---------------------------------------------------------------- panels and deployment
@FEWER
@given(case=cases(max_blocks=2, family="image", keyword=False),
       moves=st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.75]), min_size=2, max_size=5))
def test_pruning_panel_slider_callbacks_slide_back_and_leave_no_trace(case, moves):
    """Moving the slider (widget value -> debounced callback) any way and back to 0 restores the weights bit for
    bit; the user's model and the kernel are untouched; no matplotlib figure accumulates."""
    PruningPanel = api("PruningPanel")
    import matplotlib.pyplot as plt

    x = case.inputs()
    snap = Snapshot.take(case.model)
    panel = PruningPanel(case.model, x, measure_latency=False, debounce=0.0, progress=False)
    original = state_fingerprint(panel.pruner.model)
    figures = len(plt.get_fignums())
    for a in moves:
        panel.amount.value = a  # what a slider drag does
        panel.flush()
        assert panel.pruner.setting["amount"] == a  # the callback really ran
    panel.amount.value = 0.0
    panel.flush()
    assert panel.guard.last_error is None, panel.guard.last_error
    assert same_state(panel.pruner.model, original)
    assert len(plt.get_fignums()) <= figures
    snap.assert_unchanged()


@FEWER
@given(case=cases(max_blocks=3, family="image", keyword=False))
def test_fuse_and_export_never_touch_the_model(case, tmp_path_factory):
    fuse, export = api("fuse"), api("export")
    pytest.importorskip("onnxruntime")
    model, x = plain(case), case.inputs()
    snap = Snapshot.take(model)
    fused = fuse(model, x, measure=False)
    snap.assert_unchanged()
    assert torch.allclose(outputs(fused.model, x), outputs(model, x), rtol=1e-3, atol=1e-4)
    result = export(model, x, "onnx", tmp_path_factory.mktemp("onnx") / "m.onnx", latency=False)
    snap.assert_unchanged()
    assert result.max_abs_diff < 1e-3
