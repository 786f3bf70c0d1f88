"""Export a model to ONNX, TorchScript or ExecuTorch, then verify it in the target's own runtime."""
from __future__ import annotations

import collections
import contextlib
import io
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import NboptError, require
from ..inputs import as_args, call, check_device, check_module, tensors_in
from ..model_state import working_copy
from ..timing import compare
from .errors import export_error
from .fuse import max_abs_diff

FORMATS = ("onnx", "torchscript", "executorch")
_SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "executorch": ".pte"}
_RUNTIME = {"onnx": "onnxruntime", "torchscript": "torch.jit", "executorch": "executorch+xnnpack"}


@dataclass
class ExportResult:
    """What an export produced and how it compares with eager PyTorch."""

    format: str
    path: Path
    file_bytes: int
    operators: dict[str, int] = field(default_factory=dict)   # operator -> count in the exported program
    runtime: str = ""
    max_abs_diff: float = float("nan")                       # runtime output vs eager output
    latency_ms: float = float("nan")                         # in the target runtime
    eager_latency_ms: float = float("nan")                   # the input model in eager PyTorch
    notes: list[str] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        """Eager latency / runtime latency."""
        return self.eager_latency_ms / self.latency_ms

    def summary(self) -> dict[str, Any]:
        """One row for a table."""
        return {"format": self.format, "runtime": self.runtime, "path": str(self.path),
                "file_bytes": self.file_bytes, "operators": sum(self.operators.values()),
                "max_abs_diff": self.max_abs_diff, "latency_ms": self.latency_ms,
                "eager_latency_ms": self.eager_latency_ms, "speedup": self.speedup}

    def __repr__(self) -> str:
        return (f"ExportResult({self.format} -> {self.path}, {self.file_bytes / 1e6:.2f} MB, "
                f"{len(self.operators)} operator types, max_abs_diff={self.max_abs_diff:.2e}, "
                f"{self.runtime} {self.latency_ms:.3f} ms vs eager {self.eager_latency_ms:.3f} ms)")


# ---------------------------------------------------------------- paths


def check_format(fmt: str) -> str:
    """Normalise the format name or raise listing the valid ones."""
    key = str(fmt).lower().replace("-", "").replace("_", "")
    key = {"ts": "torchscript", "jit": "torchscript", "pte": "executorch"}.get(key, key)
    if key not in FORMATS:
        raise NboptError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}.")
    return key


def target_path(path: str | os.PathLike | None, fmt: str) -> Path:
    """Where the file goes: ``path``, ``path/model.<ext>`` for a directory, or a new temp directory."""
    if path is None:
        return Path(tempfile.mkdtemp(prefix="nbopt-export-")) / f"model{_SUFFIX[fmt]}"
    p = Path(path).expanduser()
    return p / f"model{_SUFFIX[fmt]}" if p.is_dir() else p


def reserve_temp(final: Path) -> Path:
    """Create the temp file beside ``final`` (so the rename is atomic); a clear error when it can't be written."""
    parent = final.parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=parent)
    except OSError as exc:
        hint = "create the folder first (os.makedirs)" if not parent.exists() else "choose a writable folder"
        raise NboptError(f"cannot write the export to {final}: {exc.strerror or exc} ({parent}). "
                         f"Pass path= somewhere you can write; {hint}.") from None
    os.close(fd)
    return Path(tmp)


@contextlib.contextmanager
def atomic_file(final: Path):
    """Yield a temp path; rename it onto ``final`` only if the block succeeds, delete it otherwise."""
    tmp = reserve_temp(final)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


# ---------------------------------------------------------------- writers


@contextlib.contextmanager
def quiet():
    """Swallow the exporters' progress prints (core modules never print)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def write_onnx(model: nn.Module, inputs: Any, tmp: Path, opset: int | None) -> None:
    source = getattr(model, "onnx_model", None) or getattr(model, "onnx_bytes", None)
    if source is not None:  # an onnxruntime-backed model (e.g. nbopt.quantize's ORT int8): save its graph
        _save_onnx_source(source, tmp)
        return
    args, kwargs = as_args(inputs)
    with quiet():
        torch.onnx.export(model, args, str(tmp), kwargs=kwargs or None, opset_version=opset,
                          external_data=False, dynamo=True)


def _save_onnx_source(source: Any, tmp: Path) -> None:
    if isinstance(source, (bytes, bytearray)):
        tmp.write_bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        tmp.write_bytes(Path(source).read_bytes())
    else:
        import onnx

        onnx.save(source, str(tmp))


def write_torchscript(model: nn.Module, inputs: Any, tmp: Path) -> list[str]:
    """Trace and save; returns notes for branches the tracer froze (TracerWarnings)."""
    import warnings

    args, kwargs = as_args(inputs)
    with quiet(), torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, args, example_kwarg_inputs=kwargs or None, check_trace=False)
        torch.jit.save(traced, str(tmp))
    frozen = {f"{w.filename}:{w.lineno}" for w in caught if issubclass(w.category, torch.jit.TracerWarning)}
    return [f"the trace froze a data-dependent value or branch at {where}: other inputs may take another "
            "path in eager PyTorch but not in this program" for where in sorted(frozen)]


def lower_executorch(model: nn.Module, inputs: Any):
    """torch.export -> edge dialect -> XNNPACK-delegated ExecuTorch program manager."""
    require("executorch.exir", extra="deploy", purpose="format='executorch'")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    if isinstance(model, torch.export.ExportedProgram):
        program = model
    else:
        args, kwargs = as_args(inputs)
        program = torch.export.export(model, args, kwargs)
    with quiet():
        return to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])


def write_executorch(model: nn.Module, inputs: Any, tmp: Path) -> Any:
    edge = lower_executorch(model, inputs)
    tmp.write_bytes(edge.to_executorch().buffer)
    return edge


# ---------------------------------------------------------------- operators


def onnx_operators(path: Path) -> dict[str, int]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return dict(collections.Counter(f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
                                    for n in graph.node))


def torchscript_operators(path: Path) -> dict[str, int]:
    graph = torch.jit.load(str(path)).inlined_graph
    return dict(collections.Counter(n.kind() for n in graph.nodes() if not n.kind().startswith("prim::")))


def edge_op_name(target: Any) -> str:
    name = getattr(target, "__name__", str(target))
    return name.split("::")[-1] if "::" in name else name


def executorch_operators(edge: Any) -> dict[str, int]:
    """Operators of the lowered program; those inside an XNNPACK delegate are prefixed ``xnnpack:``."""
    counts: collections.Counter = collections.Counter()
    program = edge.exported_program()
    for node in program.graph.nodes:
        if node.op == "get_attr" and hasattr(program.graph_module, str(node.target)):
            lowered = getattr(program.graph_module, str(node.target))
            inner = getattr(lowered, "original_module", None)
            if inner is not None:
                backend = getattr(lowered, "backend_id", "delegate").replace("Backend", "").lower()
                counts.update(f"{backend}:{edge_op_name(n.target)}" for n in inner.graph.nodes
                              if n.op == "call_function" and "getitem" not in str(n.target))
        elif node.op == "call_function" and "executorch_call_delegate" not in str(node.target) \
                and "getitem" not in str(node.target):
            if edge_op_name(node.target) != "alloc":
                counts[edge_op_name(node.target)] += 1
    return dict(counts)


# ---------------------------------------------------------------- runtimes


def onnx_runner(path: Path, inputs: Any) -> Callable[[], Any]:
    ort = require("onnxruntime", extra="deploy", purpose="checking an ONNX export")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle ORT threads must not starve torch
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feeds = {i.name: t.detach().cpu().numpy() for i, t in zip(session.get_inputs(), tensors_in(inputs))}
    return lambda: [torch.from_numpy(o.copy()) for o in session.run(None, feeds)]


def torchscript_runner(path: Path, inputs: Any) -> Callable[[], Any]:
    loaded = torch.jit.load(str(path)).eval()
    args, kwargs = as_args(inputs)
    return lambda: loaded(*args, **kwargs)


def executorch_runner(path: Path, inputs: Any) -> Callable[[], Any]:
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(path)).load_method("forward")
    flat = list(tensors_in(inputs))
    return lambda: method.execute(flat)


_WRITERS = {"onnx": write_onnx, "torchscript": write_torchscript, "executorch": write_executorch}
_OPERATORS = {"onnx": onnx_operators, "torchscript": torchscript_operators}
_RUNNERS = {"onnx": onnx_runner, "torchscript": torchscript_runner, "executorch": executorch_runner}


# ---------------------------------------------------------------- entry point


def unwrap(model: Any, fmt: str) -> nn.Module:
    """The exportable module inside results (FuseResult, QuantResult) and nbopt.quantize's int8 models."""
    if not isinstance(model, nn.Module) and isinstance(getattr(model, "model", None), nn.Module):
        model = model.model  # FuseResult / QuantResult
    check_module(model)
    if getattr(model, "onnx_bytes", None) is not None and fmt != "onnx":
        raise NboptError(f"this model is an onnxruntime program (nbopt.quantize backend='onnxruntime'); it exports "
                         f"only to format='onnx', not {fmt!r}. For {fmt}, quantize with backend='pt2e'.")
    converted = getattr(model, "converted", None)  # nbopt.quantize backend='pt2e': export the PT2E graph itself
    model = converted if isinstance(converted, nn.Module) else model
    if fmt == "executorch" and _has_quant_ops(model):
        raise NboptError("this int8 model was quantized for x86 (torchao X86InductorQuantizer); the ExecuTorch "
                         "runtime here has no kernels for its quantize/dequantize ops outside XNNPACK. Export it "
                         "with format='onnx' (onnxruntime runs it), or export the fp32 model to ExecuTorch "
                         "(XNNPACK runs it in fp32).")
    return model


def _has_quant_ops(model: nn.Module) -> bool:
    graph = getattr(model, "graph", None)
    return graph is not None and any("quantize_per" in str(n.target) for n in graph.nodes)



def export(model: nn.Module, example_inputs: Any, format: str = "onnx", path: str | os.PathLike | None = None,
           *, opset: int | None = None, check: bool = True, latency: bool = True,
           repeat: int = 20) -> ExportResult:
    """Export ``model`` and verify it in the target's runtime: file size, operators, max |diff|, latency.

    ``format``: "onnx" (checked in onnxruntime), "torchscript" (``torch.jit.load``) or "executorch"
    (XNNPACK delegate, checked in the ExecuTorch runtime). The file is written to a temp file beside
    ``path`` and renamed only when the export succeeded, so a failure leaves nothing behind.
    ``path=None`` writes into a new temporary folder.
    """
    fmt = check_format(format)
    model = unwrap(model, fmt)
    check_device(model, example_inputs)
    final = target_path(path, fmt)
    work = working_copy(model).eval()
    with atomic_file(final) as tmp:
        try:
            with torch.no_grad():
                extra = _WRITERS[fmt](work, example_inputs, tmp, opset) if fmt == "onnx" else \
                    _WRITERS[fmt](work, example_inputs, tmp)
        except NboptError:
            raise
        except Exception as exc:
            raise export_error(exc, model, fmt) from None
    ops = executorch_operators(extra) if fmt == "executorch" else _OPERATORS[fmt](final)
    result = ExportResult(fmt, final, final.stat().st_size, ops, _RUNTIME[fmt])
    result.notes.extend(extra if fmt == "torchscript" else [])
    if check or latency:
        verify(result, work, example_inputs, latency=latency, repeat=repeat)
    return result


def verify(result: ExportResult, model: nn.Module, inputs: Any, *, latency: bool = True, repeat: int = 20) -> None:
    """Fill ``result`` with the runtime's max |diff| against eager and both latencies (interleaved timing)."""
    run = _RUNNERS[result.format](result.path, inputs)
    with torch.no_grad():
        result.max_abs_diff = max_abs_diff(call(model, inputs), run())
        if latency:
            timings = compare({"eager": lambda: call(model, inputs), "runtime": run}, repeat=repeat)
            result.eager_latency_ms = timings["eager"].median_ms
            result.latency_ms = timings["runtime"].median_ms
