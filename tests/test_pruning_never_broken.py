"""Structured pruning never returns a broken model (issue 17): every pruned model runs on the example input and
returns what the original returns (structure, types, shapes, dtypes), or a clear error names the group to blame."""
from __future__ import annotations

import os
import threading
import time

import pytest
import torch
from torch import nn
from torch.utils import _pytree as pytree

import nbopt
from nbopt.errors import ForwardError, InputError, UnsupportedModelError
from nbopt.pruning import Pruner, prune
from nbopt.pruning import structured as S

SLOW = pytest.mark.skipif(not os.environ.get("NBOPT_SLOW"), reason="big torchvision models: set NBOPT_SLOW=1")


def shapes(out):
    return pytree.tree_map(lambda t: (tuple(t.shape), t.dtype), out)


def params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def run(model, x):
    with torch.no_grad():
        return model(**x) if isinstance(x, dict) else model(x)


def export_checked(model, x, **kw):
    """Structured export; the same output structure and shapes as the original, and it equals the preview."""
    model.eval()
    p = Pruner(model, x, progress=False, **kw).set(amount=0.5, structured=True)
    small = p.export().eval()
    ref, out, preview = run(model, x), run(small, x), run(p.model.eval(), x)
    assert shapes(out) == shapes(ref)
    for a, b in zip(pytree.tree_leaves(out), pytree.tree_leaves(preview)):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    return small, p


class DictOut(nn.Module):
    """Returns a feature map another conv also reads: ``{"logits": fc(conv2(f)), "feat": f}``."""

    def __init__(self):
        super().__init__()
        self.conv, self.conv2, self.fc = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1), nn.Linear(16, 5)

    def forward(self, x):
        f = self.conv(x)
        return {"logits": self.fc(self.conv2(torch.relu(f)).mean((2, 3))), "feat": f}


class TupleListOut(nn.Module):
    """``(t, [a, b])`` where ``a`` also feeds ``t``."""

    def __init__(self):
        super().__init__()
        self.stem, self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 1), nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        a, b = self.a(h), self.b(h)
        return self.fc(a.mean((2, 3))), [a, b]


class Masked(nn.Module):
    """fc1's output channels are multiplied by the ``mask`` input."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 4)

    def forward(self, x, mask=None):
        h = torch.relu(self.fc1(x)) * mask
        return self.fc3(torch.relu(self.fc2(h)))


class Grouped(nn.Module):
    """A groups=6 conv (48 -> 48) and a groups=4 conv: the regnet pattern."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 48, 3, padding=1)
        self.c2 = nn.Conv2d(48, 48, 3, padding=1, groups=6)
        self.c3 = nn.Conv2d(48, 32, 1)
        self.c4 = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        x = torch.relu(self.c4(torch.relu(self.c3(x))))
        return self.fc(x.mean((2, 3)))


def mlp():
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)).eval()


# ---------------------------------------------------------------- returned tensors never shrink

def test_dict_output_feature_map_keeps_its_channels(untouched):
    model, x = DictOut().eval(), torch.randn(1, 3, 8, 8)
    guard = untouched(model)
    small, p = export_checked(model, x, round_to=1)
    guard.assert_unchanged()
    assert small.conv.out_channels == 16  # its output is returned as "feat"
    assert small.conv2.out_channels == 8 and small.fc.in_features == 8  # the rest still prunes
    assert p.report.loc["conv", "channels_kept"] == 16


def test_tuple_and_list_outputs_keep_their_channels():
    model, x = TupleListOut().eval(), torch.randn(1, 3, 8, 8)
    small, _ = export_checked(model, x, round_to=1)
    assert small.a.out_channels == 8 and small.b.out_channels == 8  # both returned in the list
    assert small.stem.out_channels == 8 and small.a.in_channels == small.b.in_channels == 8


# ---------------------------------------------------------------- channels that meet an input are left whole

def test_keyword_mask_input_blocks_the_layer_it_multiplies(untouched):
    model, x = Masked().eval(), {"x": torch.randn(2, 16), "mask": torch.rand(2, 32)}
    guard = untouched(model)
    small, p = export_checked(model, x, round_to=1)
    guard.assert_unchanged()
    assert small.fc1.out_features == 32  # multiplied by mask: never pruned
    assert small.fc2.out_features == 16 and small.fc3.in_features == 16
    reason = next(b.reason for b in p.blocked if b.root == "fc1")
    assert "'mask'" in reason and "elementwise" in reason


def test_an_integer_mask_autograd_cannot_see_is_caught_and_blamed(untouched):
    """An integer mask is invisible to the trace; the export's check run catches it and names the group."""
    model = Masked().eval()
    x = {"x": torch.randn(2, 16), "mask": torch.ones(2, 32, dtype=torch.long)}
    guard = untouched(model)
    with pytest.raises(UnsupportedModelError, match=r"no longer runs.*group rooted at 'fc1'.*exclude=\['fc1'\]"):
        prune(model, x, amount=0.5, structured=True, round_to=1, latency=False, progress=False)
    guard.assert_unchanged()
    r = prune(model, x, amount=0.5, structured=True, round_to=1, exclude=["fc1"], latency=False, progress=False)
    assert shapes(run(r.model, x)) == shapes(run(model, x)) and r.model.fc2.out_features == 16


def test_residual_add_with_the_input_keeps_the_input_width():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.d, self.fc = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 16, 1), nn.Linear(16, 2)

        def forward(self, x):
            return self.fc(self.d(x + self.c(x)).mean((2, 3)))

    small, p = export_checked(Res(), torch.randn(1, 3, 8, 8), round_to=1)
    assert small.c.out_channels == 3 and small.d.out_channels == 8
    assert any(b.root == "c" and "input 0" in b.reason for b in p.blocked)


# ---------------------------------------------------------------- parameters that do not require grad

def test_frozen_parameters_prune_like_trainable_ones(untouched):
    x = torch.randn(2, 16)
    torch.manual_seed(0)
    trainable = mlp()
    frozen = mlp()
    frozen.load_state_dict(trainable.state_dict())
    for q in frozen.parameters():
        q.requires_grad_(False)
    guard = untouched(frozen)
    a = prune(trainable, x, amount=0.5, structured=True, latency=False, progress=False).model
    b = prune(frozen, x, amount=0.5, structured=True, latency=False, progress=False).model
    guard.assert_unchanged()
    assert params(b) == params(a) < params(frozen)
    assert [q.shape for q in b.parameters()] == [q.shape for q in a.parameters()]
    assert not any(q.requires_grad for q in b.parameters())  # the user's flags, not Torch-Pruning's
    assert all(q.requires_grad for q in a.parameters())
    assert torch.allclose(run(a, x), run(b, x))


# ---------------------------------------------------------------- grouped convolutions keep whole groups

@pytest.mark.parametrize("round_to", [1, 8])
def test_grouped_convs_keep_group_counts_consistent(round_to):
    model, x = Grouped().eval(), torch.randn(1, 3, 8, 8)
    small, p = export_checked(model, x, round_to=round_to)
    assert small.c2.groups == 6 and small.c4.groups == 4
    assert small.c2.out_channels % 6 == 0 and small.c4.out_channels % 4 == 0
    assert small.c2.out_channels < 48 and small.c4.out_channels < 32  # they prune, a whole rank per group
    assert small.c2.weight.shape[1] * small.c2.groups == small.c2.in_channels
    # every group of c2's filters lost as many: the kept output rows split evenly over the 6 groups
    rep = p.report
    assert rep.loc["c2", "channels_kept"] == small.c2.out_channels
    if round_to == 8:
        assert small.c2.out_channels % 24 == 0  # lcm(8, 6)
    # c1 feeds c2's grouped input side: left whole, and said why
    assert small.c1.out_channels == 48
    assert any(b.root == "c1" and "grouped convolution" in b.reason for b in p.blocked)


def test_grouped_order_takes_the_same_number_from_every_group():
    imp = torch.tensor([5., 1., 3., 2., 9., 4., 0.5, 7.])  # 2 groups of 4
    order, scores = S._order(imp, 2)
    assert order.tolist() == [1, 6, 3, 5, 2, 7, 0, 4]  # rank 0 of each group, then rank 1, ...
    assert bool((scores[1:] >= scores[:-1]).all())
    # kept counts round up to a multiple of lcm(round_to, groups), or of the groups when that is too coarse
    assert S.kept_channels(48, 30, 8, 6) == 24 and S.kept_channels(48, 20, 8, 6) == 48
    assert S.kept_channels(48, 20, 1, 6) == 30
    assert S.kept_channels(12, 7, 8, 6) == 6  # lcm 24 > 12 channels: multiples of 6 only


@SLOW
def test_regnet_prunes_and_runs():
    import torchvision
    model, x = torchvision.models.regnet_y_400mf(num_classes=10).eval(), torch.randn(1, 3, 32, 32)
    r = prune(model, x, amount=0.3, structured=True, latency=False, progress=False)
    assert shapes(run(r.model, x)) == shapes(run(model, x)) and params(r.model) < params(model)
    for m in r.model.modules():
        if isinstance(m, nn.Conv2d):
            assert m.out_channels % m.groups == 0 and m.in_channels == m.weight.shape[1] * m.groups


# ---------------------------------------------------------------- the group search is bounded

def test_group_search_bound_refuses_clearly(monkeypatch):
    from nbopt import demo
    model, x = demo.load_model(), demo.example_input(1)
    monkeypatch.setattr(S, "MAX_GROUP_STEPS", 2)
    with pytest.raises(UnsupportedModelError,
                       match=r"grows past nbopt.s bound.*more than 2 dependencies.*structured=False"):
        Pruner(model, x, progress=False).set(amount=0.5, structured=True)
    monkeypatch.setattr(S, "MAX_GROUP_STEPS", 10_000)
    monkeypatch.setattr(S, "GROUP_SEARCH_SECONDS", -1.0)
    with pytest.raises(UnsupportedModelError, match=r"took over -1 s.*unstructured"):
        prune(model, x, amount=0.5, structured=True, latency=False, progress=False)


@SLOW
def test_swin_t_refused_within_bounded_memory():
    import torchvision
    model, x = torchvision.models.swin_t(num_classes=10).eval(), torch.randn(1, 3, 64, 64)

    def rss() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    start, peak, done = rss(), [0.0], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.2)
    threading.Thread(target=watch, daemon=True).start()
    try:
        with pytest.raises(UnsupportedModelError, match="grows past nbopt.s bound.*structured=False"):
            Pruner(model, x, progress=False).set(amount=0.3, structured=True)
    finally:
        done.set()
    assert peak[0] - start < 3.0  # GiB; unbounded it passed 18 GB


# ---------------------------------------------------------------- optimize skips what pruning refuses

def test_optimize_skips_a_refused_prune_step_and_goes_on(untouched):
    model = nn.Sequential(nn.Linear(16, 4)).eval()  # its only layer is the output: nothing to prune
    x = torch.randn(2, 16)
    guard = untouched(model)
    res = nbopt.optimize(model, x, calib=[x], steps=("profile", "prune", "verify"), repeat=2, progress=False)
    guard.assert_unchanged()
    t = res.table
    assert t.loc["prune", "status"] == "skipped" and "no layer can be pruned structurally" in t.loc["prune", "note"]
    assert t.loc["verify", "status"] == "done" and t.loc["verify", "max_abs_diff"] == 0


def test_optimize_skips_a_prune_that_would_break_the_model():
    model = Masked().eval()
    x = {"x": torch.randn(2, 16), "mask": torch.ones(2, 32, dtype=torch.long)}
    res = nbopt.optimize(model, x, calib=[x], steps=("profile", "prune", "verify"), repeat=2, progress=False)
    t = res.table
    assert t.loc["prune", "status"] == "skipped" and "not a drop-in replacement" in t.loc["prune", "note"]
    assert t.loc["verify", "status"] == "done" and t.loc["verify", "max_abs_diff"] == 0


# ---------------------------------------------------------------- small ones

def test_prune_without_amount_or_threshold_is_an_error():
    with pytest.raises(InputError, match="needs amount=.*or threshold="):
        prune(mlp(), torch.randn(2, 16))


@pytest.mark.parametrize("structured", [False, True])
def test_result_without_latency_prints(structured):
    r = prune(mlp(), torch.randn(2, 16), amount=0.5, structured=structured, latency=False, progress=False)
    assert "params" in repr(r) and "latency" not in repr(r) and "<table" in r._repr_html_()
    assert r.speedup != r.speedup  # NaN


def test_forward_failing_on_a_later_call_is_a_forward_error():
    class Flaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.calls = nn.Linear(16, 16), 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("boom on call 3")
            return self.fc(x)

    with pytest.raises(ForwardError, match="while timing latency.*boom on call 3"):
        prune(Flaky(), torch.randn(2, 16), amount=0.5, progress=False)


def test_every_export_is_checked_against_the_original_outputs():
    """The check itself: a different structure, shape or dtype is named."""
    t = torch.zeros(2, 3)
    ref = S.output_spec({"a": t, "b": [t, t]})
    assert S.spec_difference(ref, S.output_spec({"a": t, "b": [t, t]})) is None
    assert "structure" in S.spec_difference(ref, S.output_spec({"a": t, "b": (t, t)}))
    assert "[2, 3]" in S.spec_difference(ref, S.output_spec({"a": t, "b": [t, torch.zeros(2, 2)]}))
    assert "float16" in S.spec_difference(ref, S.output_spec({"a": t.half(), "b": [t, t]}))
