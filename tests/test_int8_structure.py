"""Real int8 that must not be silently wrong (issue 17): a module called twice, output structure, the shape
and dtype an onnxruntime program was built for, and PT2E's fallback when torch.compile cannot lower."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.utils import _pytree as pytree

import nbopt
from nbopt.errors import InputError, UnsupportedModelError

pytest.importorskip("onnxruntime")
pytest.importorskip("torchao")

from nbopt.quantization.backends import build_onnx, build_pt2e  # noqa: E402
from nbopt.quantization.backends import pt2e as pt2e_backend  # noqa: E402


def _cos(a, b):
    return float(nn.functional.cosine_similarity(a.flatten().float(), b.flatten().float(), dim=0))


def _random_bn(bn: nn.BatchNorm2d) -> None:
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.3, 0.3)


class CalledTwice(nn.Module):
    """One conv + BatchNorm block (a bias-less conv, as in every ResNet-style block) called twice."""

    def __init__(self, second_bn: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.other = nn.BatchNorm2d(8) if second_bn else None
        for bn in (self.block[1], self.other):
            if bn is not None:
                _random_bn(bn)

    def forward(self, x):
        if self.other is None:
            return self.block(self.block(x))
        conv = self.block[0]
        return self.other(conv(self.block[1](conv(x))))


@pytest.fixture(scope="module")
def calib():
    torch.manual_seed(1)
    return [torch.randn(4, 8, 16, 16) for _ in range(3)]


@pytest.mark.parametrize("backend", ["pt2e", "onnxruntime"])
def test_module_called_twice_with_batchnorm_tracks_fp32(backend, calib):
    # before: PT2E folded the BN shift away (torchao wrote a zero bias over the folded one): cosine 0.65
    model = CalledTwice().eval()
    r = nbopt.quantize(model, calib, mode="int8", backend=backend, progress=False, repeat=1)
    assert r.fidelity["cosine"] > 0.99 and r.fidelity["sqnr_db"] > 20, r.fidelity
    with torch.no_grad():
        assert _cos(model(calib[0]), r.model(calib[0])) > 0.99


def test_shared_conv_with_different_batchnorms_is_refused_by_pt2e(calib):
    model = CalledTwice(second_bn=True).eval()
    with pytest.raises(UnsupportedModelError, match="different BatchNorms.*onnxruntime"):
        build_pt2e(model, calib, (calib[0],), progress=False)


class Structured(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        self.a, self.b, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1), nn.Linear(4, 5)

    def forward(self, x):
        f = torch.relu(self.a(x))
        g = self.b(f)
        p = self.fc(g.mean((2, 3)))
        if self.kind == "dict":
            return {"logits": p, "feat": g}
        if self.kind == "nested":
            return p, [f, g]
        if self.kind == "one-entry dict":
            return {"out": g}
        return g


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(2)
    return [torch.randn(2, 3, 16, 16) for _ in range(2)]


@pytest.mark.parametrize("kind", ["dict", "nested", "one-entry dict", "tensor"])
def test_onnxruntime_returns_what_the_model_returns(kind, images):
    model = Structured(kind).eval()
    program = build_onnx(model, images, (images[0],), progress=False)
    x = images[1][:1]  # another batch size
    with torch.no_grad():
        ref, out = model(x), program.model(x)
    assert pytree.tree_structure(out) == pytree.tree_structure(ref)
    for a, b in zip(pytree.tree_leaves(ref), pytree.tree_leaves(out)):
        assert a.shape == b.shape and _cos(a, b) > 0.99


def test_onnxruntime_names_the_shape_and_dtype_it_was_built_for(images):
    program = build_onnx(Structured("tensor").eval(), images, (images[0],), progress=False)
    program.model(images[0])  # a good call first: the check is remembered per signature, never skipped for a new one
    with pytest.raises(InputError, match=r"\(2, 3, 32, 32\).*built for \(N, 3, 16, 16\).*calibration data"):
        program.model(torch.randn(2, 3, 32, 32))
    with pytest.raises(InputError, match="float64.*built for float32"):
        program.model(images[0].double())


def test_bfloat16_model_is_converted_to_float32_with_a_note(images):
    model = Structured("one-entry dict").eval().bfloat16()
    calib = [x.bfloat16() for x in images]
    r = nbopt.quantize(model, calib, mode="int8", backend="onnxruntime", progress=False, repeat=1)
    assert r.fidelity["sqnr_db"] > 20, r.fidelity
    assert any("bfloat16 model was converted to float32" in n for n in r.notes)
    out = r.model(calib[0])
    assert isinstance(out, dict) and out["out"].dtype == torch.bfloat16
    assert next(model.parameters()).dtype == torch.bfloat16  # the user's model is left as it was


def _failing_compile(*args, **kwargs):
    def run(*a, **k):
        raise RuntimeError("InductorError: lowering failed (forced by the test)")
    return run


def test_pt2e_falls_back_to_the_uncompiled_graph_when_compile_fails(monkeypatch, images):
    model = Structured("tensor").eval()
    monkeypatch.setattr(torch, "compile", _failing_compile)
    program = build_pt2e(model, images, (images[0],), progress=False)
    assert any("could not compile the int8 graph" in n and "uncompiled" in n for n in program.notes)
    x = images[1]
    with torch.no_grad():
        assert _cos(model(x), program.model(x)) > 0.99
        assert torch.equal(program.model(x), program.model.converted(x))

    fresh = pt2e_backend.CompiledInt8(program.model.converted)
    with pytest.raises(Exception) as bad:  # a bad input is not a compile failure: its own error, no fallback
        fresh(torch.randn(2, 5, 16, 16))
    assert "could not compile" not in str(bad.value) and not fresh.fallback
    with pytest.warns(UserWarning, match="uncompiled int8 graph"):
        out = fresh(x)
    assert fresh.fallback and torch.equal(out, program.model.converted(x))


def test_pt2e_compile_failure_in_quantize_is_a_note_not_an_input_error(monkeypatch, images):
    monkeypatch.setattr(torch, "compile", _failing_compile)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = nbopt.quantize(Structured("tensor").eval(), images, mode="int8", backend="pt2e", progress=False,
                           repeat=1)
    assert r.fidelity["sqnr_db"] > 20
    assert any("could not compile the int8 graph" in n for n in r.notes)
