"""The formula registry: duplicate registration, override, per-call formulas, op names with a namespace."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nbopt
from nbopt.errors import InputError
from nbopt.profiling import FORMULAS, FormulaRegistry, count_cost, profile_code
from nbopt.profiling.formulas import Formula, resolve_op, schema_binder
from tests.test_counting import Fn


@torch.library.custom_op("nbopt_test::scale", mutates_args=())
def _scale(x: torch.Tensor, k: float = 2.0) -> torch.Tensor:
    return x * k


@_scale.register_fake
def _(x: torch.Tensor, k: float = 2.0) -> torch.Tensor:
    return torch.empty_like(x)


FFT = torch.ops.aten._fft_r2c
fft_model = Fn(lambda t: torch.fft.rfft(t).abs())   # _fft_r2c has no built-in formula; abs: 1 FLOP per output


def fft_flops(x, *args, out, **kwargs):
    return 5 * x.numel()


@pytest.fixture
def cleanup():
    """Ops registered globally in a test are removed afterwards."""
    ops: list = []
    yield ops
    for op in ops:
        FORMULAS.remove(op)


def test_duplicate_registration_raises_and_names_override(cleanup):
    cleanup.append(FFT)
    nbopt.register_formula(FFT, fft_flops)
    with pytest.raises(InputError, match=r"aten\._fft_r2c already has a registered formula; pass override=True"):
        nbopt.register_formula(FFT, lambda *a, out, **k: 1)
    with pytest.raises(InputError, match=r"aten\.mm already has a built-in formula; pass override=True"):
        nbopt.register_formula("aten::mm", lambda *a, out, **k: 1)
    x = torch.randn(4, 16)
    assert nbopt.profile(fft_model, x, latency=False).total_flops == 5 * 64 + 4 * 9  # the first one stands


def test_override_replaces_a_formula(cleanup):
    cleanup.append(FFT)
    nbopt.register_formula(FFT, fft_flops)
    nbopt.register_formula(FFT, lambda x, *a, out, **k: (7, 3 * x.numel()), override=True)
    prof = nbopt.profile(fft_model, torch.randn(4, 16), latency=False)
    assert (prof.total_macs, prof.total_flops) == (7, 3 * 64 + 4 * 9)


def test_override_of_a_builtin_and_back(cleanup):
    a, b = torch.randn(3, 4), torch.randn(4, 5)
    assert count_cost(torch.mm, a, b).macs == 3 * 4 * 5
    builtin = FORMULAS.get(torch.ops.aten.mm)
    try:
        nbopt.register_formula(torch.ops.aten.mm.default, lambda x, y, *, out: (1, 2), override=True)
        assert count_cost(torch.mm, a, b) == nbopt.profiling.Cost(1, 2)
    finally:
        FORMULAS.register(torch.ops.aten.mm, builtin, override=True)
    assert count_cost(torch.mm, a, b).macs == 3 * 4 * 5


def test_decorator_form(cleanup):
    cleanup.append(FFT)

    @nbopt.register_formula("aten::_fft_r2c")
    def rule(x, *args, out, **kwargs):
        return 2 * out.numel()

    assert rule(torch.randn(2), out=torch.randn(3)) == 6   # the decorator hands the function back
    assert nbopt.profile(fft_model, torch.randn(4, 16), latency=False).total_flops == 2 * 4 * 9 + 4 * 9


def test_per_call_formulas_count_in_that_call_only():
    x = torch.randn(4, 16)
    before = nbopt.profile(fft_model, x, latency=False)
    assert "aten._fft_r2c" in before.uncounted
    once = nbopt.profile(fft_model, x, latency=False, formulas={FFT: fft_flops})
    assert once.total_flops == 5 * 64 + 4 * 9 and once.uncounted == {} and once.coverage == 1.0
    after = nbopt.profile(fft_model, x, latency=False)
    assert after.total_flops == 4 * 9 and "aten._fft_r2c" in after.uncounted
    assert FFT not in FORMULAS


def test_per_call_formulas_win_over_builtins_for_that_call():
    lin = nn.Linear(8, 4, bias=False)
    x = torch.randn(2, 8)
    assert nbopt.profile(lin, x, latency=False).total_macs == 2 * 8 * 4
    mine = nbopt.profile(lin, x, latency=False, formulas={"mm": lambda a, b, *, out: (11, 22)})
    assert (mine.total_macs, mine.total_flops) == (11, 22)
    assert nbopt.profile(lin, x, latency=False).total_macs == 2 * 8 * 4


def test_profile_code_takes_per_call_formulas():
    x = torch.randn(4, 16)
    prof, value = profile_code(lambda: fft_model(x), name_for=lambda m: "m", latency=False,
                               formulas={"aten::_fft_r2c": fft_flops})
    assert prof.total_flops == 5 * 64 + 4 * 9 and value.shape == (4, 9)
    plain, _ = profile_code(lambda: fft_model(x), name_for=lambda m: "m", latency=False)
    assert plain.total_flops == 4 * 9


def test_namespaced_name_resolves_a_custom_op(cleanup):
    model = Fn(lambda t: _scale(t, 3.0))
    x = torch.randn(2, 5)
    assert nbopt.profile(model, x, latency=False).uncounted == {"nbopt_test.scale": 1}
    assert resolve_op("nbopt_test::scale") is torch.ops.nbopt_test.scale
    assert resolve_op("nbopt_test::scale.default") is torch.ops.nbopt_test.scale
    cleanup.append(torch.ops.nbopt_test.scale)
    nbopt.register_formula("nbopt_test::scale", lambda t, k, *, out: t.numel())  # one multiply per element
    prof = nbopt.profile(model, x, latency=False)
    assert prof.uncounted == {} and prof.total_flops == 10
    assert nbopt.profile(model, x, latency=False, execution="real").total_flops == 10


@torch.library.custom_op("nbopt_test::relu", mutates_args=())
def _custom_relu(x: torch.Tensor) -> torch.Tensor:   # named like aten::relu, on purpose
    return x.clamp_min(0)


@_custom_relu.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


def test_a_namespace_is_never_replaced_by_aten(cleanup):
    """'ns::op' resolves in ns only: a custom op named like an aten op is that custom op, and a name that
    ns lacks fails instead of silently naming the aten op of that name."""
    assert resolve_op("nbopt_test::relu") is torch.ops.nbopt_test.relu is not torch.ops.aten.relu
    with pytest.raises(InputError, match=r"unknown op 'nbopt_test::mm': torch\.ops\.nbopt_test\.mm does not exist"):
        nbopt.register_formula("nbopt_test::mm", lambda *a, out, **k: 0)
    assert FORMULAS.get(torch.ops.aten.mm).builtin  # aten.mm untouched
    cleanup.append(torch.ops.nbopt_test.relu)
    nbopt.register_formula("nbopt_test::relu", lambda t, *, out: 3 * t.numel())
    x = torch.randn(2, 5)
    assert nbopt.profile(Fn(_custom_relu), x, latency=False).total_flops == 3 * 10   # the custom formula
    assert nbopt.profile(nn.ReLU(), x, latency=False).total_flops == 10              # aten.relu: still 1 each


def test_unknown_op_names_give_a_clear_error():
    with pytest.raises(InputError, match=r"unknown op 'no_such_op': torch\.ops\.aten\.no_such_op does not exist; "
                                         r"name a custom op with its namespace, e.g\. 'mylib::my_op'"):
        nbopt.register_formula("no_such_op", lambda *a, out, **k: 0)
    with pytest.raises(InputError, match=r"unknown op 'nbopt_test::nope'"):
        nbopt.register_formula("nbopt_test::nope", lambda *a, out, **k: 0)
    with pytest.raises(TypeError, match="an op must be a torch.ops"):
        nbopt.register_formula(torch.mm, lambda *a, out, **k: 0)
    with pytest.raises(InputError, match="unknown op 'scale'"):  # a bare name is looked up in aten only
        nbopt.profile(nn.Identity(), torch.randn(2), latency=False, formulas={"scale": lambda *a, out: 0})
    with pytest.raises(TypeError, match=r"formulas must be a dict"):
        nbopt.profile(nn.Identity(), torch.randn(2), latency=False, formulas=[FFT])


def test_overlay_and_copy_leave_the_parent_alone():
    base = FormulaRegistry()
    base.register("mm", Formula.named(lambda *, out, **_: nbopt.profiling.Cost(0, 1)))
    child = base.overlay({"bmm": lambda *a, out: 2})
    assert torch.ops.aten.mm in child and torch.ops.aten.bmm in child and torch.ops.aten.bmm not in base
    flat = base.copy()
    flat.register("addmm", lambda *a, out: 3)
    assert torch.ops.aten.addmm not in base and len(flat) == 2
    version = child.version
    base.register("baddbmm", lambda *a, out: 4)
    assert child.version != version  # a parent's change is a change of the overlay too


def test_counter_drops_cached_plans_when_the_registry_changes(cleanup):
    """A formula registered while a counter runs counts from the next call on (no stale plan)."""
    x = torch.randn(4, 16)
    cleanup.append(FFT)

    def run():
        torch.fft.rfft(x)
        nbopt.register_formula(FFT, fft_flops)
        torch.fft.rfft(x)

    cost = count_cost(run)
    assert cost.flops == 5 * 64


def test_builtin_formulas_read_arguments_by_name():
    conv = torch.ops.aten.convolution.default
    bind = schema_binder(conv)
    x, w = torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3)
    bound = bind((x, w, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1), {})
    assert bound["input"] is x and bound["weight"] is w and bound["transposed"] is False
    out = F.conv2d(x, w)
    cost = FORMULAS.get(torch.ops.aten.convolution).bind(conv)((x, w, None, [1, 1], [0, 0], [1, 1], False,
                                                                [0, 0], 1), {}, out)
    assert (cost.macs, cost.flops) == (4 * 6 * 6 * 3 * 9, 2 * 4 * 6 * 6 * 3 * 9)
    pool = schema_binder(torch.ops.aten.avg_pool2d.default)((x, [2, 2]), {})
    assert pool["stride"] == [] and pool["ceil_mode"] is False  # schema defaults filled in
    # batch norm in training (statistics computed): 5 FLOPs per element; in eval: 2
    assert nbopt.profile(nn.BatchNorm2d(3).train(), x, latency=False).total_flops == 2 * 3 * 64
    assert count_cost(F.batch_norm, x, None, None, training=True).flops == 5 * 3 * 64
