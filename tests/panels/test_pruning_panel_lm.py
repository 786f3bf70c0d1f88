"""PruningPanel on a language model (issue 14 s.3): criterion and N:M controls over prune_llm, LM readouts equal
the core's numbers on the trained demo LM, the model is never changed."""
from __future__ import annotations

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

pytest.importorskip("transformers")

import nbopt  # noqa: E402
from nbopt.display.figures import series_colour  # noqa: E402
from nbopt.panels.common import percent  # noqa: E402
from nbopt.pruning.llm import prune_llm  # noqa: E402
from nbopt.quantization.metrics import lm_fidelity  # noqa: E402
from tests.conftest import Untouched  # noqa: E402


@pytest.fixture(scope="module")
def lm():
    from nbopt.demo import lm as demo_lm

    return demo_lm


@pytest.fixture(scope="module")
def model(lm):
    return lm.load()


@pytest.fixture(scope="module")
def calib(lm):
    return lm.calibration_data(n=8, seq_len=64)  # one batch of 8 x 64 training tokens


@pytest.fixture(scope="module")
def fdata(lm):
    return lm.windows("heldout", 4, 64)


@pytest.fixture(scope="module")
def ppl(lm):
    return lambda m: lm.perplexity(m, chunks=2, seq_len=64)


@pytest.fixture(scope="module")
def panel(model, lm, calib, fdata, ppl):
    snap = Untouched(model)
    p = nbopt.PruningPanel(model, lm.example_input(), calib=calib, fidelity_data=fdata, perplexity=ppl,
                           amount=0.5, debounce=0)
    yield p
    snap.assert_unchanged()  # every control moved below left the demo LM as it was


def lines(panel) -> dict[str, matplotlib.lines.Line2D]:
    return {ln.get_label(): ln for ln in panel.figure.axes[0].get_lines()}


def test_lm_mode_and_its_controls(panel):
    assert panel.lm and panel.pruner is None and not hasattr(panel, "structured")
    assert [v for _, v in panel.criterion.options] == ["magnitude", "wanda"] and panel.criterion.value == "wanda"
    assert list(panel.pattern.options) == ["none", "2:4", "4:8"] and panel.pattern.value == "none"
    assert panel.amount.description == "sparsity" and not panel.amount.disabled
    assert panel.guard.last_error is None, panel.guard.last_error


def test_readouts_equal_the_core(panel, model, calib, fdata, ppl):
    assert (panel.report["sparsity"] == 0.5).all()  # the first render: 64 of each row's 128 (or 256 of 512)
    panel.amount.value = 0.4  # what the slider does
    core = prune_llm(model, calib, sparsity=0.4, criterion="wanda", progress=False)
    fid = lm_fidelity(model, core.model, fdata)
    m = panel.metrics
    assert m["token_top1"] == pytest.approx(fid["token_top1"], abs=1e-9)
    assert m["kl_div"] == pytest.approx(fid["kl_div"], rel=1e-5)
    assert m["perplexity"] == pytest.approx(ppl(core.model), rel=1e-5)
    assert m["dense_perplexity"] == pytest.approx(ppl(model), rel=1e-5)
    assert m["dense_perplexity"] < m["perplexity"]
    assert 0.5 < m["token_top1"] < 1 and m["kl_div"] > 0
    assert panel.totals["sparsity"] == core.sparsity
    assert abs(core.sparsity - 0.4) < 0.005  # round(0.4 * 128) = 51 of 128 inputs, 205 of 512
    for name, keep in core.masks.items():
        assert torch.equal(panel.llm_result.masks[name], keep)
        assert panel.report.loc[name, "weights_kept"] == int(keep.sum())
    assert "lm_head" not in panel.report.index and len(panel.report) == 4 * 7
    text = panel.accuracy_html.value
    assert f"token top-1 agreement <b>{100 * m['token_top1']:.2f}%</b>" in text
    assert f"KL <b>{m['kl_div']:.4f}</b> nats" in text and f"perplexity <b>{m['perplexity']:.3f}</b>" in text
    assert f"<b>{percent(core.sparsity)}</b> weight sparsity (wanda)" in text


def test_two_four_is_exactly_half_of_every_linear(panel, model):
    panel.pattern.value = "2:4"  # a toggle click
    assert panel.amount.disabled and "exactly 50% sparse" in panel.hint.value
    assert (panel.report["sparsity"] == 0.5).all() and set(panel.report["pattern"]) == {"2:4"}
    pruned = panel.export()
    assert pruned is not model and "panel.result" in panel.status.value
    linears = {n: mod for n, mod in pruned.named_modules() if isinstance(mod, torch.nn.Linear) and n != "lm_head"}
    assert set(linears) == set(panel.report.index)
    for name, layer in linears.items():
        nonzero = (layer.weight != 0).reshape(layer.out_features, -1, 4).sum(-1)
        assert (nonzero == 2).all(), name  # 2 of every 4 consecutive inputs, in every row
    assert torch.equal(pruned.lm_head.weight, model.lm_head.weight)
    panel.pattern.value = "4:8"
    for name, layer in {n: mod for n, mod in panel.export().named_modules() if n in linears}.items():
        assert ((layer.weight != 0).reshape(layer.out_features, -1, 8).sum(-1) == 4).all(), name
    panel.pattern.value = "none"
    assert not panel.amount.disabled


def test_wanda_and_magnitude_masks_differ(panel, model):
    panel.set(0.5, criterion="wanda")
    wanda = dict(panel.llm_result.masks)
    w_top1 = panel.metrics["token_top1"]
    panel.criterion.value = "magnitude"
    magnitude = dict(panel.llm_result.masks)
    core = prune_llm(model, sparsity=0.5, criterion="magnitude", progress=False)
    assert all(torch.equal(magnitude[n], core.masks[n]) for n in core.masks)
    differ = [n for n in wanda if not torch.equal(wanda[n], magnitude[n])]
    assert len(differ) == len(wanda)  # the input norms reorder weights in every layer
    assert all(abs(1 - float(m.float().mean()) - 0.5) < 1e-9 for m in magnitude.values())
    assert "(magnitude)" in panel.accuracy_html.value and 0 < w_top1 < 1


def test_plot_colours_and_axis(panel):
    panel.set(0.5, criterion="wanda", pattern="none")
    first = lines(panel)["wanda"].get_color()
    panel.set(0.3, criterion="magnitude")
    panel.set(pattern="2:4")
    drawn = lines(panel)
    assert matplotlib.colors.same_color(drawn["wanda"].get_color(), first)
    for name in ("wanda", "magnitude", "magnitude 2:4"):
        assert matplotlib.colors.same_color(drawn[name].get_color(), series_colour(name)), name
    ax = panel.figure.axes[0]
    lo, hi = ax.get_ylim()
    ys = [y for ln in drawn.values() for y in ln.get_ydata()]
    assert 0 <= lo <= min(ys) and max(ys) <= hi <= 100
    assert "token top-1 agreement" in ax.get_ylabel()
    star = drawn["current"]
    assert star.get_ydata()[0] == pytest.approx(100 * panel.metrics["token_top1"])
    panel.set(pattern="none")


def test_wanda_without_calib_is_explained(model, lm):
    p = nbopt.PruningPanel(model, lm.example_input(), amount=0.5, debounce=0)
    assert p.criterion.value == "magnitude" and "perplexity=" in p.accuracy_html.value
    p.criterion.value = "wanda"  # in the browser: the error shows in the panel's status line
    assert "nbopt-error" in p.status.value and "calib" in p.status.value
    with pytest.raises(nbopt.NboptError, match="perplexity="):
        nbopt.PruningPanel(model, lm.example_input(), evaluate=lambda m: 0.5)
    with pytest.raises(nbopt.NboptError, match="structured"):
        p.set(0.2, structured=True)
