"""The shipped demo language model: corpus, tokenizer, trained weights and measured held-out perplexity."""
from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("transformers")

from nbopt.demo import lm  # noqa: E402
from tests.conftest import Untouched  # noqa: E402

SAME_CORPUS = lm.corpus_matches()
NEEDS_CORPUS = pytest.mark.skipif(
    not SAME_CORPUS, reason=f"this Python's documentation differs from the one the demo LM was measured on "
                            f"(Python {lm.record()['python']}, corpus sha256 {lm.record()['corpus_sha256'][:12]})")


@pytest.fixture(scope="module")
def model():
    return lm.load()


def test_corpus_is_real_text_with_a_fixed_split():
    train, held = lm.text("train"), lm.text("heldout")
    assert len(train.encode()) > 1_000_000 and len(held.encode()) > 100_000
    assert "Python" in train and "return" in held
    names = [n for n, _ in lm.documents()]
    assert len(names) == len(set(names))
    held_names = [n for n in names if lm.is_heldout(n)]
    assert 0.05 < len(held_names) / len(names) < 0.15
    assert all(lm.is_heldout(n) == lm.is_heldout(n) for n in held_names)  # a pure function of the name


def test_tokenizer_round_trip():
    tok = lm.tokenizer
    text = "len(x) — returns 3 ✓"
    ids = tok.encode(text, bos=True, eos=True)
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and max(ids[1:-1]) < 256
    assert tok.decode(ids) == text
    assert tok(text).shape == (1, len(text.encode()) + 1)


def test_data_helpers():
    calib = lm.calibration_data(8, 64, batch_size=4)
    assert [tuple(b.shape) for b in calib] == [(4, 64), (4, 64)]
    x = lm.example_input(2)
    assert x.shape[0] == 2 and x[0, 0] == lm.tokenizer.bos_token_id
    assert lm.tokenizer.decode(x[0]) == lm.PROMPT


def test_shipped_model(model):
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    n = sum(p.numel() for p in model.parameters())
    assert n == lm.record()["params"] and 1e6 < n < 3e6
    assert lm.WEIGHTS.stat().st_size < 4 * 2 ** 20


@NEEDS_CORPUS
def test_heldout_perplexity_is_measured_and_beats_baselines(model):
    snap = Untouched(model)
    ppl = lm.perplexity(model)
    snap.assert_unchanged()
    rec = lm.record()
    assert ppl == pytest.approx(rec["heldout_perplexity"], rel=2e-3)
    unigram = lm.unigram_perplexity()
    assert unigram == pytest.approx(rec["unigram_perplexity"], rel=1e-9)
    assert ppl < 256 / 10 and ppl < 0.5 * unigram
    # perplexity is exp(mean next-token NLL): check it against a direct computation on one window
    w = lm.windows("heldout", 1)
    with torch.no_grad():
        logits = model(w).logits[0, :-1]
    direct = math.exp(float(torch.nn.functional.cross_entropy(logits, w[0, 1:])))
    assert lm.perplexity(model, chunks=1) == pytest.approx(direct, rel=1e-5)


def test_generates_text(model):
    with torch.no_grad():
        out = model.generate(lm.example_input(), max_new_tokens=20, do_sample=False)
    text = lm.tokenizer.decode(out[0, lm.example_input().shape[1]:])
    assert len(text) > 0 and sum(c.isalpha() or c == " " for c in text) >= 10


def test_train_script_is_seeded(tmp_path):
    """Two short seeded runs give the same weights; the record is written beside the weights file."""
    from nbopt.demo.lm import train
    a, b = train.train(steps=2, batch_size=2, progress=False), train.train(steps=2, batch_size=2, progress=False)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
