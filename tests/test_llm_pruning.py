"""Wanda and magnitude criteria, unstructured and N:M masks for language-model linears (issue 14)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from nbopt.errors import InputError
from nbopt.pruning.llm import input_norms, keep_mask, layer_mask, parse_pattern, prune_llm, scores
from tests.conftest import Untouched


def test_wanda_scores_hand_checked():
    layer = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0, 3.0], [-4.0, 0.5, 1.0]]))
    x = torch.tensor([[3.0, 0.0, 1.0], [4.0, 1.0, 0.0]])  # column norms: 5, 1, 1
    norms = input_norms(layer, {"": layer}, [x], progress=False)[""]
    assert norms.tolist() == [5.0, 1.0, 1.0]
    s = scores(layer.weight, "wanda", norms)
    assert s.tolist() == [[5.0, 2.0, 3.0], [20.0, 0.5, 1.0]]
    assert scores(layer.weight, "magnitude").tolist() == [[1.0, 2.0, 3.0], [4.0, 0.5, 1.0]]
    # 1/3 of each row pruned: wanda drops -2 (row 0) and 0.5 (row 1); magnitude drops 1 and 0.5
    assert keep_mask(s, 1 / 3).tolist() == [[True, False, True], [True, False, True]]
    assert keep_mask(scores(layer.weight, "magnitude"), 1 / 3).tolist() == [[False, True, True],
                                                                               [True, False, True]]


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4"])
def test_nm_masks_are_exact(pattern):
    n, m = parse_pattern(pattern)
    torch.manual_seed(0)
    s = torch.rand(16, 64)
    keep = keep_mask(s, pattern=pattern)
    groups = keep.reshape(16, -1, m)
    assert (groups.sum(-1) == n).all()  # every group of M keeps exactly N
    kept_scores = torch.where(groups, s.reshape(16, -1, m), torch.tensor(float("inf")))
    dropped = torch.where(~groups, s.reshape(16, -1, m), torch.tensor(-float("inf")))
    assert (kept_scores.amin(-1) >= dropped.amax(-1)).all()  # and they are the N best of the group


def test_unstructured_mask_prunes_each_row_evenly():
    torch.manual_seed(0)
    s = torch.rand(8, 40)
    keep = keep_mask(s, 0.25)
    assert (keep.sum(1) == 30).all()
    assert ((torch.where(keep, s, torch.tensor(2.0)).amin(1)) >=
            torch.where(~keep, s, torch.tensor(-1.0)).amax(1)).all()


def test_layer_mask_is_reversible():
    layer = nn.Linear(8, 4)
    original = layer.weight.detach().clone()
    s = scores(layer.weight, "magnitude")
    mask = layer_mask("l", layer, s, (2, 4))
    mask.apply(16)  # (m - n) / m of 32 weights
    assert torch.equal(layer.weight.detach() != 0, keep_mask(s, pattern="2:4"))
    mask.apply(0)
    assert torch.equal(layer.weight.detach(), original)


def test_errors():
    with pytest.raises(InputError, match="N:M"):
        parse_pattern("4")
    with pytest.raises(InputError, match="0 < N < M"):
        parse_pattern("4:2")
    with pytest.raises(InputError, match="divisible"):
        keep_mask(torch.rand(2, 6), pattern="2:4")


@pytest.fixture(scope="module")
def tiny_llama():
    pytest.importorskip("transformers")
    from tests.hf_models import ids, llama
    model, cfg = llama()
    return model, ids(cfg, batch=2, seq=16)


@pytest.mark.parametrize("criterion,pattern", [("wanda", None), ("magnitude", "2:4"), ("wanda", "4:8")])
def test_prune_llm_on_llama(tiny_llama, criterion, pattern):
    model, x = tiny_llama
    snap = Untouched(model)
    r = prune_llm(model, [x], sparsity=0.5, pattern=pattern, criterion=criterion, progress=False)
    snap.assert_unchanged()
    assert "lm_head" not in r.masks and r.sparsity == pytest.approx(0.5)
    for name, keep in r.masks.items():
        w = r.model.get_submodule(name).weight
        assert torch.equal(w != 0, keep | (model.get_submodule(name).weight == 0) & keep)
        assert torch.equal(w[keep], model.get_submodule(name).weight[keep])  # kept weights unchanged
    assert r.model(x).logits.shape == model(x).logits.shape
    with pytest.raises(InputError, match="calib"):
        prune_llm(model, None, criterion="wanda")


def test_demo_lm_wanda_and_magnitude_measured():
    """Both criteria at 50% on the trained demo LM, against fp32 (benchmarks/llm_quality.py has the table)."""
    pytest.importorskip("transformers")
    from nbopt.demo import lm
    model, calib = lm.load(), lm.calibration_data(16, 128)
    base = lm.perplexity(model, chunks=16)
    ppl = {c: lm.perplexity(prune_llm(model, calib, criterion=c, progress=False).model, chunks=16)
           for c in ("magnitude", "wanda")}
    for p in ppl.values():
        assert base < p < 1.25 * base < lm.unigram_perplexity()
