"""The export-format registry: one Format per target, duplicates refused, a registered format works end to end."""
from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch import nn

import nbopt
from nbopt.deployment import FORMATS, ExportOptions, Format, RuntimeModule, Written, register_format
from nbopt.deployment.export import _REGISTRY, check_format
from nbopt.errors import NboptError, UnsupportedModelError


def _write_pickle(model: nn.Module, inputs: Any, tmp: Path, options: ExportOptions) -> Written:
    torch.save(model, tmp)
    return Written(notes=[f"opset={options.opset}"])


def _pickle_operators(path: Path, written: Written) -> dict[str, int]:
    model = torch.load(path, weights_only=False)
    return dict(collections.Counter(type(m).__name__ for m in model.modules() if not list(m.children())))


def _pickle_runner(path: Path, inputs: Any) -> Callable[[], Any]:
    model = torch.load(path, weights_only=False).eval()
    return lambda: model(*inputs) if isinstance(inputs, tuple) else model(inputs)


TOY = Format("toy_pickle", _write_pickle, _pickle_operators, _pickle_runner, suffix=".pkl", runtime="torch.load",
             aliases=("pkl",))


@pytest.fixture
def toy():
    yield register_format(TOY)
    _REGISTRY.pop(TOY.name, None)


def test_builtin_formats_and_aliases():
    assert list(FORMATS) == ["onnx", "torchscript", "executorch"]
    assert ", ".join(FORMATS) == "onnx, torchscript, executorch" and "onnx" in FORMATS
    assert [check_format(n) for n in ("ONNX", "ts", "jit", "torch-script", "pte")] == \
        ["onnx", "torchscript", "torchscript", "torchscript", "executorch"]
    with pytest.raises(TypeError):
        FORMATS["tflite"] = TOY  # read-only: formats are added through register_format


def test_duplicate_registration_raises_unless_override(toy):
    with pytest.raises(NboptError, match="'onnx' clashes with the registered format.*override=True"):
        register_format(FORMATS["onnx"])
    with pytest.raises(NboptError, match="clashes with the registered format.*torchscript"):
        register_format(Format("mine", _write_pickle, _pickle_operators, _pickle_runner, aliases=("jit",)))
    with pytest.raises(NboptError, match="clashes"):
        register_format(Format("toy-pickle", _write_pickle, _pickle_operators, _pickle_runner))  # same normalised
    replacement = Format(TOY.name, _write_pickle, _pickle_operators, _pickle_runner, suffix=".pt2")
    assert register_format(replacement, override=True) is FORMATS[TOY.name] is replacement
    assert list(FORMATS)[-1] == TOY.name and len(FORMATS) == 4


def test_registered_format_exports_verifies_and_runs(toy, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(2, 4)
    res = nbopt.export(model, x, "PKL", tmp_path, opset=17, repeat=2)
    assert res.format == "toy_pickle" and res.runtime == "torch.load" and res.path == tmp_path / "model.pkl"
    assert res.file_bytes == os.path.getsize(res.path) and res.operators == {"Linear": 2, "ReLU": 1}
    assert res.notes == ["opset=17"] and res.max_abs_diff == 0 and res.latency_ms > 0
    runtime = RuntimeModule(res.path, "toy_pickle", x)
    big = torch.randn(5, 4)  # fixed batch: fed in chunks of 2, the last one padded
    assert torch.equal(runtime(big), model(big))
    with pytest.raises(NboptError, match="unknown export format 'nope'; use one of onnx, torchscript, "
                                         "executorch, toy_pickle"):
        nbopt.export(model, x, "nope", tmp_path)


def test_a_failing_writer_names_the_format_and_leaves_nothing(toy, tmp_path):
    def broken(model: nn.Module, inputs: Any, tmp: Path, options: ExportOptions) -> Written:
        tmp.write_bytes(b"partial")
        raise RuntimeError("boom")

    register_format(Format(TOY.name, broken, _pickle_operators, _pickle_runner, suffix=".pkl"), override=True)
    with pytest.raises(UnsupportedModelError, match=r"^toy_pickle export failed: RuntimeError: boom\."):
        nbopt.export(nn.Linear(4, 3), torch.randn(2, 4), "toy_pickle", tmp_path)
    assert os.listdir(tmp_path) == []
