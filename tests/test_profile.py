"""Profile table, attribution, thop engine, compare(), torchvision's published GMACs, model safety."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nbopt


class Block(nn.Module):
    """A container that runs a child and a functional op of its own."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.weight = nn.Parameter(torch.randn(4, 4))

    def forward(self, x):
        y = self.conv(x)                          # attributed to block.conv
        return F.linear(y.transpose(1, 3), self.weight).transpose(1, 3)  # attributed to block itself


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.block = Block()
        self.shared = nn.Linear(4, 4)
        self.head = nn.Linear(4, 4)
        self.head.weight = self.shared.weight     # tied weights: counted once

    def forward(self, x):
        x = self.block(self.stem(x)).mean((2, 3))
        return self.head(self.shared(self.shared(x)))  # a module called twice


def test_attribution_rows_and_totals():
    prof = nbopt.profile(Net(), torch.randn(2, 3, 5, 5), latency=False)
    t = prof.table
    assert t.loc["stem", "macs"] == 2 * 4 * 25 * 3
    assert t.loc["block.conv", "macs"] == 2 * 4 * 25 * 4 * 9
    assert t.loc["block", "macs"] == 2 * 25 * 4 * 4                      # its own F.linear
    assert t.loc["block", "macs_total"] == t.loc["block", "macs"] + t.loc["block.conv", "macs"]
    assert t.loc["shared", "calls"] == 2 and t.loc["shared", "macs"] == 2 * (2 * 4 * 4)
    assert t["macs"].sum() == prof.total_macs == t.loc["(root)", "macs_total"]
    assert t["flops"].sum() == prof.total_flops
    unique = sum(p.numel() for p in set(Net().parameters()))
    # stem 12+4, block.conv 144+4, block.weight 16, shared 16+4, head bias 4 (its weight is shared's)
    assert prof.total_params == unique == 16 + 148 + 16 + 20 + 4
    assert t.loc["block.conv", "out_shape"] == "2x4x5x5"
    assert t.loc["block.conv", "out_bytes"] == 2 * 4 * 25 * 4
    assert math.isclose(t["share"].sum(), 1.0)


def test_table_views(demo_model):
    prof = nbopt.profile(demo_model, torch.randn(1, 1, 8, 8), latency=True, repeat=3)
    top = prof.top(3)
    assert list(top["macs"]) == sorted(prof.layers["macs"], reverse=True)[:3]
    by_type = prof.by_type()
    assert by_type.loc["Conv2d", "count"] == 9
    assert by_type["macs"].sum() == prof.total_macs
    shallow = prof.at_depth(1)
    assert shallow["macs"].sum() == prof.total_macs and shallow["depth"].max() == 1
    assert prof.latency_ms > 0 and (prof.layers["latency_ms"] > 0).all()
    html = prof._repr_html_()
    assert "MACs 2.56M" in html and "block1.conv1.0" in html
    with pytest.raises(ValueError, match="unknown column"):
        prof.top(3, by="nope")


def test_plot_has_macs_and_latency_panels(demo_model):
    import matplotlib
    matplotlib.use("Agg")
    prof = nbopt.profile(demo_model, torch.randn(1, 1, 8, 8), repeat=3)
    fig = prof.plot(k=5)
    assert [ax.get_title() for ax in fig.axes] == ["Top 5 layers by MACs", "Top 5 layers by latency"]
    assert len(fig.axes[0].patches) == 5


@pytest.mark.parametrize("note", ["", "layer timings are noisy"])
def test_plot_marks_an_unreliable_latency_ranking_and_only_then(demo_model, monkeypatch, note):
    """A quiet run and a noisy one both draw (the label turns red and says so only when the ranking is unreliable)."""
    import matplotlib
    from matplotlib.colors import to_rgba
    matplotlib.use("Agg")
    prof = nbopt.profile(demo_model, torch.randn(1, 1, 8, 8), repeat=3)
    monkeypatch.setattr(type(prof), "ranking_note", lambda self, *a, **k: note)
    label = prof.plot(k=5).axes[1].xaxis.label
    assert ("ranking unreliable" in label.get_text()) == bool(note)
    assert (to_rgba(label.get_color()) == to_rgba("tab:red")) == bool(note)


def test_keyword_inputs_and_tuple_inputs():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, a, b=None):
            return self.lin(a) + (0 if b is None else self.lin(b))

    m = Two()
    assert nbopt.profile(m, {"a": torch.randn(4, 3), "b": torch.randn(4, 3)}, latency=False).total_macs == 48
    assert nbopt.profile(m, (torch.randn(4, 3),), latency=False).total_macs == 24


def test_custom_and_ignore_ops_with_aten_engine():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Dropout())
    x = torch.randn(1, 1, 5, 5)

    def relu_rule(m, inputs, output):  # thop's signature
        m.total_ops += torch.DoubleTensor([output.numel()])

    custom = nbopt.profile(model, x, latency=False, custom_ops={nn.ReLU: relu_rule})
    assert custom.table.loc["1", "macs"] == 2 * 3 * 3
    ignored = nbopt.profile(model, x, latency=False, ignore_ops=[nn.Conv2d])
    assert ignored.table.loc["0", "macs"] == 0 and ignored.total_macs == 0
    with pytest.raises(TypeError, match="nn.Module subclasses"):
        nbopt.profile(model, x, ignore_ops=["ReLU"])


def test_thop_engine_matches_thop_itself(demo_model):
    import copy

    import thop
    x = torch.randn(1, 1, 8, 8)
    ours = nbopt.profile(demo_model, x, engine="thop", latency=False)
    theirs, _ = thop.profile(copy.deepcopy(demo_model), inputs=(x,), verbose=False)
    assert ours.total_macs == int(theirs)
    assert ours.table.loc["block1.conv1.0", "macs"] == 32 * 64 * 32 * 9
    assert not hasattr(demo_model, "total_ops")  # thop ran on a private copy


def test_compare_variants():
    plain = nn.Conv2d(32, 64, 3, padding=1)
    separable = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.Conv2d(32, 64, 1))
    df = nbopt.compare({"plain": plain, "separable": separable}, torch.randn(1, 32, 16, 16), repeat=3)
    assert df.loc["plain", "macs"] == 64 * 256 * 32 * 9
    assert df.loc["separable", "macs"] == 32 * 256 * 9 + 64 * 256 * 32
    assert df.loc["separable", "macs_vs_first"] == pytest.approx(df.loc["separable", "macs"] / df.loc["plain", "macs"])
    assert df.loc["plain", "size_bytes"] == (64 * 32 * 9 + 64) * 4
    assert (df["latency_ms"] > 0).all()


def test_model_left_untouched_even_when_forward_raises(untouched):
    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.bn = nn.BatchNorm1d(4)

        def forward(self, x):
            x = self.bn(self.a(x))
            raise RuntimeError("halfway failure")

    model = Boom().train()
    snap = untouched(model)
    with pytest.raises(nbopt.NboptError, match="Boom failed on inputs .*halfway failure"):
        nbopt.profile(model, torch.randn(3, 4))
    snap.assert_unchanged()
    good = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).train()
    snap = untouched(good)
    nbopt.profile(good, torch.randn(3, 4), repeat=3)  # eval-mode run: running stats must not move
    snap.assert_unchanged()


def test_bad_inputs_give_clear_errors():
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        nbopt.profile("resnet", torch.randn(1))
    with pytest.raises(TypeError, match="inputs must be a tensor"):
        nbopt.profile(nn.Linear(2, 2), 3.0)
    with pytest.raises(ValueError, match="unknown engine"):
        nbopt.profile(nn.Linear(2, 2), torch.randn(1, 2), engine="fvcore")
    with pytest.raises(ValueError, match="NaN or Inf"):
        nbopt.profile(nn.Linear(2, 2), torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match=r"failed on inputs \(1, 3\) float32.*input shape"):
        nbopt.profile(nn.Linear(2, 2), torch.randn(1, 3))


def _published_tolerance(published: float) -> float:
    """1%, but never tighter than the 3 decimals torchvision rounds its published GMACs to."""
    return max(0.01 * published, 0.0005)


def test_torchvision_published_gmacs():
    """Every torchvision classification model up to 20 GMACs, at its weights' crop size."""
    import torchvision
    from torchvision.models import get_model, get_model_weights, list_models

    checked = 0
    for name in list_models(module=torchvision.models):
        weights = list(get_model_weights(name))[0]
        published = weights.meta.get("_ops")
        if published is None or published > 20:
            continue
        crop = getattr(weights.transforms(), "crop_size", [224])[0]
        try:
            with torch.device("meta"):  # shapes are all counting needs: build and run without memory
                model = get_model(name)
            x = torch.empty(1, 3, crop, crop, device="meta")
        except Exception:
            model, x = get_model(name), torch.randn(1, 3, crop, crop)
        got = nbopt.profile(model, x, latency=False).total_macs / 1e9
        assert abs(got - published) <= _published_tolerance(published), (name, got, published)
        checked += 1
    assert checked >= 60


# --- latency with its spread (issue 18 §2): structure and invariants, never wall-clock values ---------------

LATENCY_SPREAD_COLUMNS = ["latency_q1_ms", "latency_q3_ms", "self_latency_q1_ms", "self_latency_q3_ms",
                          "latency_calls"]


def _quiet_profile(prof, samples, load=None):
    """``prof`` with hand-made whole-model samples (and load), to drive the noise checks deterministically."""
    import dataclasses

    from nbopt.timing import MachineLoad, Timing
    return dataclasses.replace(prof, timing=Timing(list(samples)), latency_ms=Timing(list(samples)).median_ms,
                               load=load or MachineLoad(0.0, 4))


def test_profile_latency_carries_spread_and_self_time_is_never_negative():
    from nbopt import demo
    prof = nbopt.profile(demo.load_model(), demo.example_input(1), repeat=5)
    t = prof.table
    assert set(LATENCY_SPREAD_COLUMNS) <= set(t.columns)
    assert prof.timing is not None and prof.timing.n == 5 and prof.latency_ms == prof.timing.median_ms
    assert set(prof.latency_summary) == {"median_ms", "q1_ms", "q3_ms", "min_ms", "max_ms", "n"}
    timed = t[t["latency_calls"] > 0]
    assert len(timed) == len(t) and (timed["latency_calls"] == 5).all()
    assert (t["self_latency_ms"] >= 0).all()
    assert (t["latency_q1_ms"] <= t["latency_ms"]).all() and (t["latency_ms"] <= t["latency_q3_ms"]).all()
    assert (t["self_latency_q1_ms"] <= t["self_latency_ms"]).all()
    assert (t["self_latency_ms"] <= t["self_latency_q3_ms"]).all()
    assert (t["self_latency_ms"] <= t["latency_ms"] + 1e-9).all()
    acc = prof.latency_accounted
    assert acc == pytest.approx(t["self_latency_ms"].sum() / prof.latency_ms)
    assert isinstance(prof.noisy, bool) and prof.load is not None
    assert {"noisy", "latency_accounted", "latency"} <= set(prof.summary())


def test_self_latencies_add_up_to_the_root_in_one_replay():
    """Own time is measured per call: in each replay the own times of all modules sum to the root's time."""
    from nbopt import demo, timing
    from nbopt.profiling.attribution import ModuleNames
    from nbopt.profiling.latency import measure_latency

    model, x = demo.load_model().eval(), demo.example_input(1)
    names = ModuleNames()
    names.add_root(model)
    lat = measure_latency(lambda: model(x), names, warmup=1, repeat=3, device=torch.device("cpu"))
    assert isinstance(lat.whole, timing.Timing) and lat.modules.calls == 3
    root = lat.modules.inclusive["(root)"].samples_ms
    for i in range(3):
        assert sum(t.samples_ms[i] for t in lat.modules.own.values()) == pytest.approx(root[i], rel=1e-9)


def test_noisy_profile_says_so_everywhere(demo_model):
    import warnings

    from nbopt.display.tables import profile_text
    from nbopt.errors import NoisyTimingWarning
    from nbopt.timing import MachineLoad
    prof = nbopt.profile(demo_model, torch.randn(1, 1, 8, 8), repeat=3)
    noisy = _quiet_profile(prof, [1.9, 57.8, 2.0, 40.0, 2.1, 30.0])
    assert noisy.noisy
    assert any(n.startswith("noisy latency") for n in noisy.latency_notes())
    assert "noisy latency" in noisy._repr_html_() and "noisy latency" in profile_text(noisy)
    assert "latency ranking unreliable" in noisy._repr_html_()
    with pytest.warns(NoisyTimingWarning, match="ranking unreliable"):
        top = noisy.top(3, by="self_latency_ms")
    assert top.attrs["note"].startswith("latency ranking unreliable")
    busy = _quiet_profile(prof, [2.0] * 10, load=MachineLoad(9.0, 2))
    assert busy.noisy and "machine busy" in " ".join(busy.latency_notes())
    steady = _quiet_profile(prof, [2.0] * 10)
    assert not steady.noisy and not any(n.startswith("noisy") for n in steady.latency_notes())
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoisyTimingWarning)
        assert "note" not in steady.top(3, by="macs").attrs  # counts are never flagged


def test_latency_accounted_outside_tolerance_is_noted(demo_model):
    from nbopt.profiling.result import ACCOUNTED
    prof = nbopt.profile(demo_model, torch.randn(1, 1, 8, 8), repeat=3)
    own = prof.table["self_latency_ms"].sum()
    low = _quiet_profile(prof, [own / (ACCOUNTED[0] / 2)] * 6)  # layers explain half the model's time
    assert low.latency_accounted == pytest.approx(ACCOUNTED[0] / 2)
    assert any("outside modules" in n for n in low.latency_notes())
    exact = _quiet_profile(prof, [own] * 6)
    assert exact.latency_accounted == pytest.approx(1.0)
    assert not any("add up to" in n for n in exact.latency_notes())
    assert nbopt.profile(demo_model, torch.randn(1, 1, 8, 8), latency=False).latency_accounted is None


def test_compare_latency_is_one_interleaved_measurement_with_spread():
    from nbopt import timing
    a, b = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)
    df = nbopt.compare({"a": a, "b": b}, torch.randn(1, 8, 8, 8), repeat=5)
    assert {"latency_q1_ms", "latency_q3_ms", "latency_calls", "latency_ms_vs_first_q1",
            "latency_ms_vs_first_q3", "speedup_vs_first"} <= set(df.columns)
    assert (df["latency_calls"] == 5).all()
    assert (df["latency_q1_ms"] <= df["latency_ms"]).all() and (df["latency_ms"] <= df["latency_q3_ms"]).all()
    timings = df.attrs["timings"]
    for name in df.index:
        assert df.loc[name, "latency_ms"] == timings[name].median_ms
        assert df.loc[name, "latency_ms_vs_first"] == timing.ratio(timings[name], timings["a"]).value
        assert df.loc[name, "speedup_vs_first"] == timing.ratio(timings["a"], timings[name]).value
        assert df.attrs["ratios"][name] == timing.ratio(timings["a"], timings[name])
    assert df.loc["a", "latency_ms_vs_first"] == 1.0
    assert df.attrs["noisy"] == timing.is_noisy(timings, df.attrs["load"])
    assert bool(df.attrs["note"]) == df.attrs["noisy"]
