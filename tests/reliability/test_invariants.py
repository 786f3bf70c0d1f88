"""Property-based invariants of the profiler over random small networks (see docs/guarantees.md).

Each property runs on networks from :func:`strategies.cases`: conv/norm/pool image stacks and
linear/LayerNorm/MultiheadAttention/TransformerEncoderLayer/LSTM sequence stacks, nested containers,
shared modules, keyword inputs, mixed training flags.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import nbopt
from nbopt.errors import ForwardError
from tests.snapshot import unique_parameters
from nbopt.profiling import profile_code
from kernel_state import Snapshot, clean_exception
from strategies import RELIABLE, cases, with_bomb

EXECUTIONS = st.sampled_from(["auto", "real", "meta"])
GRAD_MODES = st.sampled_from(["grad", "no_grad", "inference_mode"])


def grad_mode(name: str):
    return {"grad": torch.enable_grad, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}[name]()


def counts(p: nbopt.Profile) -> dict:
    return {"macs": p.total_macs, "flops": p.total_flops, "params": p.total_params,
            "rows": p.table[["macs", "flops", "params"]].to_dict()}


@RELIABLE
@given(case=cases(), execution=EXECUTIONS, mode=GRAD_MODES)
def test_profile_leaves_model_and_torch_untouched(case, execution, mode):
    """profile(): state_dict bit-identical, no hooks (module or global), flags, torch namespaces, modes."""
    x = case.inputs()
    snap = Snapshot.take(case.model)
    with grad_mode(mode):
        prof = nbopt.profile(case.model, x, latency=False, execution=execution)
    snap.assert_unchanged()
    assert prof.total_macs > 0  # every generated net ends in a Linear head


@RELIABLE
@given(case=cases(max_blocks=2, keyword=False))
def test_profile_with_latency_and_thop_engine_leave_no_trace(case):
    """The timed path (per-module latency hooks) and engine='thop' (thop on a private copy) too."""
    x = case.inputs()
    snap = Snapshot.take(case.model)
    prof = nbopt.profile(case.model, x, latency=True, warmup=0, repeat=1)
    snap.assert_unchanged()
    assert prof.latency_ms is not None and prof.latency_ms > 0
    nbopt.profile(case.model, x, latency=False, engine="thop")
    snap.assert_unchanged()


@RELIABLE
@given(case=cases(), at=st.integers(1, 3), execution=EXECUTIONS, latency=st.booleans())
def test_forward_that_raises_halfway_leaves_no_trace(case, at, execution, latency):
    """A module raising on its ``at``-th call: a clear ForwardError, and everything restored."""
    bomb = with_bomb(case, at)
    x = case.inputs()
    snap = Snapshot.take(case.model)
    try:
        nbopt.profile(case.model, x, latency=latency, warmup=1, repeat=2, execution=execution)
    except ForwardError as exc:  # meta execution raises it straight; later calls only when timed
        assert "Bomb went off" in str(exc) and "failed on inputs" in str(exc)
        clean_exception(exc)
    except nbopt.NboptError as exc:  # execution="meta": the bomb also fires on meta tensors
        assert execution == "meta" and "execution='real'" in str(exc)
        clean_exception(exc)
    else:
        # counting runs the forward once or twice (meta then real); a later-firing bomb may not go off
        assert bomb.calls < at
    snap.assert_unchanged()


@RELIABLE
@given(case=cases(), at=st.integers(1, 2))
def test_keyboard_interrupt_in_forward_propagates_and_leaves_no_trace(case, at):
    """The notebook's stop button (KeyboardInterrupt) mid-forward is re-raised as is, nothing left behind."""
    with_bomb(case, at, KeyboardInterrupt)
    x = case.inputs()
    snap = Snapshot.take(case.model)
    with pytest.raises(KeyboardInterrupt):
        nbopt.profile(case.model, x, latency=True, warmup=2, repeat=2, execution="real")
    snap.assert_unchanged()
    # and the kernel is usable: the next call works on the same model once the bomb is defused
    case.model.body["a"][-1].at = 10**9
    assert nbopt.profile(case.model, x, latency=False).total_macs > 0
    snap.assert_unchanged()


@RELIABLE
@given(case=cases(), execution=EXECUTIONS)
def test_rows_add_up_to_totals(case, execution):
    """Own counts of all rows sum to the totals; the root's inclusive counts equal the totals too."""
    prof = nbopt.profile(case.model, case.inputs(), latency=False, execution=execution)
    t = prof.table
    assert int(t["macs"].sum()) == prof.total_macs
    assert int(t["flops"].sum()) == prof.total_flops
    assert int(t["params"].sum()) == prof.total_params
    assert prof.total_params == sum(p.numel() for p in unique_parameters(case.model))  # shared counted once
    root = t.loc["(root)"]
    assert (root["macs_total"], root["flops_total"], root["params_total"]) == \
        (prof.total_macs, prof.total_flops, prof.total_params)
    assert prof.total_flops >= 2 * prof.total_macs
    assert abs(t["share"].sum() - 1.0) < 1e-9


@RELIABLE
@given(case=cases())
def test_counts_identical_under_grad_no_grad_inference_mode(case):
    x = case.inputs()
    found = {}
    for mode in ("grad", "no_grad", "inference_mode"):
        with grad_mode(mode):
            found[mode] = counts(nbopt.profile(case.model, x, latency=False, execution="real"))
    assert found["grad"] == found["no_grad"] == found["inference_mode"]


@RELIABLE
@given(case=cases(), n=st.integers(2, 4))
def test_batch_n_gives_n_times_the_macs(case, n):
    assert not case.batch_coupled
    one = nbopt.profile(case.model, case.inputs(batch=1), latency=False)
    many = nbopt.profile(case.model, case.inputs(batch=n), latency=False)
    assert many.total_macs == n * one.total_macs
    assert many.total_params == one.total_params


@RELIABLE
@given(case=cases())
def test_meta_execution_counts_what_real_execution_counts(case):
    x = case.inputs()
    real = nbopt.profile(case.model, x, latency=False, execution="real")
    meta = nbopt.profile(case.model, x, latency=False, execution="meta")
    assert meta.execution == "meta" and real.execution == "real"
    assert meta.total_macs == real.total_macs and meta.total_params == real.total_params
    assert meta.total_flops == real.total_flops  # the fused-attention formulas count what the math path counts
    if "encoder" not in case.kinds:
        # a fused encoder layer (_transformer_encoder_layer_fwd, real CPU runs) counts its MACs and FLOPs on the
        # layer's own row, while its meta decomposition spreads them over the submodules' rows: the totals and
        # the layer's inclusive counts agree, the rows only without it (docs/guarantees.md, Known gaps)
        assert counts(meta) == counts(real)


@RELIABLE
@given(case=cases(keyword=False))
def test_profile_code_counts_what_profile_counts(case):
    """The cell magic's core (profile_code) attributes the same MACs as profile() on the same call."""
    x = case.inputs()
    case.model.eval()  # the code runs as written: a training-mode BatchNorm would update its own stats
    snap = Snapshot.take(case.model)
    prof, value = profile_code(
        lambda: case.model(x), name_for=lambda m: "net", latency=False)
    snap.assert_unchanged()
    direct = nbopt.profile(case.model, x, latency=False, execution="real")
    assert prof.total_macs == direct.total_macs
    assert isinstance(value, torch.Tensor) and value.shape[0] == case.batch


@RELIABLE
@given(a=cases(max_blocks=2, family="image", keyword=False), b=cases(max_blocks=2, family="image", keyword=False))
def test_compare_leaves_every_model_untouched(a, b):
    x = a.inputs()
    b_in = b.inputs()
    if x.shape != b_in.shape:  # compare needs one input for all: give b a stem that fits
        b.model = torch.nn.Sequential(torch.nn.Conv2d(x.shape[1], b_in.shape[1], 1),
                                      torch.nn.AdaptiveAvgPool2d(b_in.shape[2:]), b.model)
    snaps = [Snapshot.take(a.model), Snapshot.take(b.model)]
    df = nbopt.compare({"a": a.model, "b": b.model}, x, latency=True, warmup=0, repeat=1)
    for s in snaps:
        s.assert_unchanged()
    assert df.loc["a", "macs"] == nbopt.profile(a.model, x, latency=False).total_macs
    assert df.loc["a", "macs_vs_first"] == 1.0


def test_shared_module_meta_profile_keeps_real_weights():
    """Regression: execution='meta' on a model whose Linear is reachable under two names used to leave meta
    tensors in the user's model (torch.func.functional_call restores shared modules in the wrong order)."""
    lin = torch.nn.Linear(3, 3)
    model = torch.nn.Sequential(lin, torch.nn.ReLU(), lin)
    snap = Snapshot.take(model)
    prof = nbopt.profile(model, torch.randn(2, 3), latency=False, execution="meta")
    snap.assert_unchanged()
    assert all(t.device.type == "cpu" for t in model.state_dict().values())
    assert prof.total_macs == 2 * 2 * 3 * 3
    assert prof.total_params == 12
