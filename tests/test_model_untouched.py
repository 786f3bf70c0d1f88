"""Issue 17: counting leaves the model exactly as it was, and what cannot run or be timed is a clear error.

- a meta count puts back plain attributes a forward reassigns (torchvision's ``cell_anchors``);
- a meta count fails where a real run would (a grouped conv whose filters do not divide into its groups);
- latency is never measured on meta tensors;
- ``Profile.top(k)`` / ``%%profile_flops --top`` need k >= 1; ``prune()`` needs ``amount`` or ``threshold``.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nbopt
from nbopt.errors import ForwardError, InputError, InputTypeError, NboptError
from nbopt.profiling.counter import OpCounter
from nbopt.profiling.attribution import ModuleNames, ModuleTracker
from tests.snapshot import Snapshot, plain_tensors


# --------------------------------------------------------------------------- 1. attributes set by a forward
class Anchors(nn.Module):
    """Reassigns a list-of-tensors attribute (and a tensor, and a dict entry) from its input's device, as
    torchvision's AnchorGenerator.set_cell_anchors does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.cell_anchors = [torch.arange(4.0), torch.ones(2)]
        self.scale = torch.tensor(2.0)
        self.cache: dict[str, torch.Tensor] = {"a": torch.zeros(3)}
        self.memo: dict[str, torch.Tensor] = {}  # empty until a forward fills it
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.cell_anchors = [a.to(device=x.device, dtype=x.dtype) for a in self.cell_anchors]
        self.scale = self.scale.to(x.device)
        self.cache["a"] = self.cache["a"].to(x.device)
        self.cache["new"] = x.sum()
        self.memo["x"] = x
        self.fresh = x.mean()  # a new attribute holding a tensor
        self.calls += 1
        return self.conv(x) * self.scale + self.cell_anchors[0].sum()


def _devices(m: Anchors) -> set[str]:
    return {str(t.device) for t in [*m.cell_anchors, m.scale, *m.cache.values()]}


@pytest.mark.parametrize("execution", ["auto", "meta"])
def test_meta_count_puts_back_attributes_a_forward_reassigns(execution):
    m = Anchors().eval()
    x = torch.rand(1, 3, 8, 8)
    anchors, cache = m.cell_anchors, m.cache
    snap = Snapshot.take(m)
    prof = nbopt.profile(m, x, latency=False, execution=execution)
    assert prof.execution == "meta"
    snap.assert_unchanged()
    assert m.cell_anchors is anchors and m.cache is cache and set(cache) == {"a"} and m.memo == {}
    assert _devices(m) == {"cpu"} and not hasattr(m, "fresh")
    m(x)  # the model still runs


def test_meta_count_restores_attributes_when_the_meta_run_fails():
    class Branchy(Anchors):
        def forward(self, x):
            out = super().forward(x)
            if out.sum() > 0:  # data-dependent: fails on meta, counted by the real run
                return out
            return -out

    m = Branchy().eval()
    x = torch.rand(1, 3, 8, 8)
    before = plain_tensors(m)
    prof = nbopt.profile(m, x, latency=False)
    assert prof.execution == "real"
    # the real run reassigned them to real tensors (as a forward does); none is left on meta
    assert _devices(m) == {"cpu"} and "meta" not in str(plain_tensors(m))
    assert before.keys() <= plain_tensors(m).keys()
    m(x)


def test_snapshot_sees_plain_tensor_attributes():
    m = Anchors()
    snap = Snapshot.take(m, kernel=False)
    m.cell_anchors = [a.to("meta") for a in m.cell_anchors]
    assert any("cell_anchors" in p for p in snap.problems())
    m = Anchors()
    snap = Snapshot.take(m, kernel=False)
    m.cache["a"] = torch.zeros(3, device="meta")
    assert any("cache" in p for p in snap.problems())
    m = Anchors()
    snap = Snapshot.take(m, kernel=False)
    m.scale = m.scale.clone()
    assert any("scale" in p for p in snap.problems())


def test_fasterrcnn_count_leaves_cell_anchors_real():
    torchvision = pytest.importorskip("torchvision")
    m = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None).eval()
    img = [torch.rand(3, 320, 320)]
    snap = Snapshot.take(m)
    prof = nbopt.profile(m, (img,), latency=False)
    snap.assert_unchanged()
    assert prof.total_macs > 0
    assert {a.device.type for a in m.rpn.anchor_generator.cell_anchors} == {"cpu"}
    with torch.no_grad():
        m(img)  # "Cannot copy out of meta tensor" before the fix


# --------------------------------------------------------------------------- 2. meta fails where real fails
def _broken_grouped_conv() -> nn.Module:
    """A groups=6 conv holding 32 filters (what a grouped-conv pruning left behind in regnet)."""
    conv = nn.Conv2d(48, 48, 3, groups=6, padding=1)
    conv.weight = nn.Parameter(torch.randn(32, 8, 3, 3))
    conv.bias = nn.Parameter(torch.randn(32))
    conv.out_channels = 32
    return nn.Sequential(conv, nn.ReLU()).eval()


@pytest.mark.parametrize("execution", ["auto", "meta", "real"])
def test_meta_count_fails_where_a_real_run_fails(execution):
    m = _broken_grouped_conv()
    x = torch.rand(1, 48, 8, 8)
    with pytest.raises(RuntimeError, match="divisible by 6"):
        m(x)
    snap = Snapshot.take(m)
    with pytest.raises(ForwardError, match="divisible by 6") as err:
        nbopt.profile(m, x, latency=False, execution=execution)
    assert "'0'" in str(err.value)  # names the layer
    snap.assert_unchanged()


CONV_CASES = [  # (name, input shape, weight shape, bias size, groups, transposed) real kernels reject
    ("filters not divisible by groups", (1, 48, 8, 8), (32, 8, 3, 3), None, 6, False),
    ("input channels", (1, 40, 8, 8), (36, 8, 3, 3), None, 6, False),
    ("bias size", (1, 48, 8, 8), (36, 8, 3, 3), 5, 6, False),
    ("groups 0", (1, 48, 8, 8), (36, 8, 3, 3), None, 0, False),
    ("transposed input channels", (1, 30, 8, 8), (32, 4, 3, 3), None, 2, True),
    ("transposed filters not divisible", (1, 30, 8, 8), (30, 4, 3, 3), None, 4, True),
    ("transposed bias size", (1, 32, 8, 8), (32, 4, 3, 3), 7, 2, True),
]


def _conv(x, w, b, groups, transposed):
    return (F.conv_transpose2d if transposed else F.conv2d)(x, w, b, groups=groups)


@pytest.mark.parametrize("name, xs, ws, bs, groups, transposed", CONV_CASES, ids=[c[0] for c in CONV_CASES])
def test_counter_on_meta_rejects_what_cpu_rejects(name, xs, ws, bs, groups, transposed):
    def make(device):
        b = torch.rand(bs, device=device) if bs else None
        return torch.rand(xs, device=device), torch.rand(ws, device=device), b

    with pytest.raises(RuntimeError):
        _conv(*make("cpu"), groups, transposed)
    names = ModuleNames()
    with torch.no_grad(), OpCounter(ModuleTracker(names), meta=True):
        with pytest.raises(RuntimeError):
            _conv(*make("meta"), groups, transposed)


def test_valid_grouped_and_transposed_convs_still_count_on_meta():
    m = nn.Sequential(nn.Conv2d(48, 36, 3, groups=6), nn.ConvTranspose2d(36, 8, 3, groups=2)).eval()
    x = torch.rand(1, 48, 8, 8)
    meta, real = (nbopt.profile(m, x, latency=False, execution=e) for e in ("meta", "real"))
    assert meta.execution == "meta" and meta.total_macs == real.total_macs > 0


# --------------------------------------------------------------------------- 3. no latency on meta tensors
def test_latency_on_a_meta_model_is_a_clear_error():
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()).to("meta").eval()
    x = torch.empty(1, 3, 16, 16, device="meta")
    snap = Snapshot.take(m)
    with pytest.raises(InputError, match="meta device") as err:
        nbopt.profile(m, x)
    assert "latency=False" in str(err.value) and "to_empty" in str(err.value)
    snap.assert_unchanged()
    prof = nbopt.profile(m, x, latency=False)  # counting works without timing
    assert prof.total_macs == 8 * 3 * 9 * 14 * 14 and prof.latency_ms is None


def test_latency_on_meta_inputs_is_a_clear_error():
    m = nn.Sequential(nn.Linear(4, 4)).eval()
    with pytest.raises(InputError, match="inputs are on the meta device"):
        nbopt.profile(m, torch.empty(2, 4, device="meta"))


def test_profile_code_and_compare_refuse_to_time_meta_models():
    from nbopt.profiling import profile_code
    m = nn.Linear(4, 4).to("meta")
    x = torch.empty(2, 4, device="meta")
    with pytest.raises(InputError, match="meta device"):
        profile_code(lambda: m(x), name_for=lambda mod: "m")
    prof, _ = profile_code(lambda: m(x), name_for=lambda mod: "m", latency=False)
    assert prof.total_macs == 2 * 16
    with pytest.raises(InputError, match="meta device"):
        nbopt.compare({"a": m}, x)


# --------------------------------------------------------------------------- 4. top k >= 1
@pytest.mark.parametrize("k", [0, -3])
def test_profile_top_needs_a_positive_k(k):
    prof = nbopt.profile(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), torch.rand(1, 4), latency=False)
    with pytest.raises(InputError, match="k >= 1"):
        prof.top(k)
    with pytest.raises(InputTypeError):
        prof.top(2.5)
    assert len(prof.top(1)) == 1


@pytest.mark.parametrize("top", ["-3", "0"])
def test_profile_magic_rejects_non_positive_top(top):
    from IPython.core.error import UsageError
    from IPython.testing.globalipapp import get_ipython
    ip = get_ipython()
    ip.run_line_magic("load_ext", "nbopt")
    ip.user_ns.update(torch=torch, _m=nn.Linear(4, 4), _x=torch.rand(1, 4))
    res = ip.run_cell(f"%%profile_flops --no-latency --top {top}\n_m(_x)")
    err = res.error_in_exec or res.error_before_exec
    assert isinstance(err, UsageError) and "--top needs a positive number" in str(err)


# --------------------------------------------------------------------------- 5. prune needs a setting
def test_prune_without_amount_or_threshold_is_a_clear_error():
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    snap = Snapshot.take(m)
    with pytest.raises(InputError, match="amount=.*threshold=") as err:
        nbopt.prune(m, torch.rand(1, 4), latency=False, progress=False)
    assert isinstance(err.value, NboptError)
    snap.assert_unchanged()
