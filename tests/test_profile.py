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
