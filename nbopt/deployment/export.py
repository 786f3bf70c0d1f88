"""Export a model to ONNX, TorchScript or ExecuTorch, then verify it in the target's own runtime.

Each format is a :class:`Format` in the :data:`FORMATS` registry (its writer, operator reader and runner);
:func:`register_format` adds one, and :func:`export` and :class:`~nbopt.deployment.runtime.RuntimeModule`
work with it unchanged.
"""
from __future__ import annotations

import collections
import contextlib
import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from ..errors import InputError, NboptError, UnsupportedModelError, describe_exception, require
from ..graph import (CACHE_NOTE, FlatOutputs, OutputStructure, cache_free_inputs, cache_off, check_tensor_outputs,
                     export_error, export_onnx, export_program, ort_session, quiet, strip_ansi)
from ..inputs import as_args, call, check_device, check_module, check_not_meta, describe_shapes, tensors_in
from ..model_state import working_copy
from ..timing import Ratio, compare_pair
from .fuse import max_abs_diff


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
    # from the same interleaved timing as latency_ms/eager_latency_ms: "eager"/"runtime" -> Timing.summary()
    latency: dict[str, dict[str, float]] = field(default_factory=dict)
    speedup_spread: Ratio | None = None                      # the speedup with its per-round quartiles
    noisy: bool = False                                      # the timing was noisy: the speedup is no finding
    latency_note: str = ""                                   # why ("" when quiet)
    # path=None: the temporary folder nbopt made; removed when the last holder (this result, a RuntimeModule
    # on its file) is garbage-collected or the interpreter exits
    owner: "OwnedDir | None" = field(default=None, repr=False, compare=False)
    # what the model returns (a ModelOutput, a dict, nested tuples): RuntimeModule.from_export rebuilds it
    outputs: OutputStructure | None = field(default=None, repr=False, compare=False)

    @property
    def speedup(self) -> float:
        """Eager latency / runtime latency (medians of one interleaved timing)."""
        return self.eager_latency_ms / self.latency_ms

    def summary(self) -> dict[str, Any]:
        """One row for a table (with latency: quartiles, timed calls, the speedup's quartiles and the noise flag)."""
        row = {"format": self.format, "runtime": self.runtime, "path": str(self.path),
               "file_bytes": self.file_bytes, "operators": sum(self.operators.values()),
               "max_abs_diff": self.max_abs_diff, "latency_ms": self.latency_ms,
               "eager_latency_ms": self.eager_latency_ms, "speedup": self.speedup}
        if self.latency:
            rt, eager, r = self.latency["runtime"], self.latency["eager"], self.speedup_spread
            row.update({"latency_q1_ms": rt["q1_ms"], "latency_q3_ms": rt["q3_ms"],
                        "eager_latency_q1_ms": eager["q1_ms"], "eager_latency_q3_ms": eager["q3_ms"],
                        "latency_calls": rt["n"], "speedup_q1": r.q1, "speedup_q3": r.q3, "noisy": self.noisy,
                        "latency_note": self.latency_note})
        return row

    def __repr__(self) -> str:
        from ..display.results import export_text  # front-end imported on demand

        return export_text(self)

    def _repr_html_(self) -> str:
        from ..display.results import export_html

        return export_html(self)


# ---------------------------------------------------------------- the format registry


@dataclass(frozen=True)
class ExportOptions:
    """Settings a writer may use beyond the model, inputs and file (one object for every format)."""

    opset: int | None = None   # ONNX opset; None: the exporter's default


@dataclass
class Written:
    """What a writer returns beside the file it wrote."""

    notes: list[str] = field(default_factory=list)  # copied into ExportResult.notes
    program: Any = None                             # the lowered program, where operators are read from it


@dataclass(frozen=True)
class Format:
    """One export target: how to write it, count its operators and run it.

    ``write(model, inputs, tmp_path, options) -> Written`` writes the program to ``tmp_path``;
    ``operators(path, written)`` counts its operators; ``runner(path, inputs)`` loads the file in its
    runtime bound to ``inputs`` and returns a no-argument callable. ``suffix`` names files in a folder,
    ``aliases`` are other accepted names, ``runtime`` labels results. ``fixed_batch``: the program keeps
    the example's batch size (:class:`~nbopt.deployment.runtime.RuntimeModule` feeds it in chunks).
    """

    name: str
    write: Callable[[nn.Module, Any, Path, ExportOptions], Written]
    operators: Callable[[Path, Written], dict[str, int]]
    runner: Callable[[Path, Any], Callable[[], Any]]
    suffix: str = ""
    runtime: str = ""
    aliases: tuple[str, ...] = ()
    fixed_batch: bool = True


_REGISTRY: dict[str, Format] = {}
FORMATS: Mapping[str, Format] = MappingProxyType(_REGISTRY)  # name -> Format, read-only; see register_format


def _key(name: str) -> str:
    return str(name).lower().replace("-", "").replace("_", "")


def register_format(fmt: Format, *, override: bool = False) -> Format:
    """Add ``fmt`` to :data:`FORMATS` (so ``export`` and ``RuntimeModule`` accept it); returns it.

    A name or alias already taken raises unless ``override=True``, which replaces the format of that name.
    """
    taken = {_key(a): f.name for f in _REGISTRY.values() for a in (f.name, *f.aliases)
             if not (override and f.name == fmt.name)}
    clash = sorted({taken[_key(a)] for a in (fmt.name, *fmt.aliases) if _key(a) in taken})
    if clash:
        raise InputError(f"export format {fmt.name!r} clashes with the registered format(s) {', '.join(clash)}; "
                         "choose another name, or pass override=True to replace a format of the same name.")
    _REGISTRY[fmt.name] = fmt
    return fmt


def check_format(fmt: str) -> str:
    """Normalise the format name (or an alias) or raise listing the valid ones."""
    key = _key(fmt)
    for f in _REGISTRY.values():
        if key in {_key(a) for a in (f.name, *f.aliases)}:
            return f.name
    raise NboptError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}.")


# ---------------------------------------------------------------- paths


class OwnedDir:
    """A temporary folder nbopt made for itself (``export(path=None)``), removed with everything in it when this
    object is garbage-collected or the interpreter exits (``weakref.finalize``). Whatever needs the files
    (an :class:`ExportResult`, a :class:`~nbopt.deployment.runtime.RuntimeModule`) holds a reference to it;
    copies share it rather than duplicate it."""

    def __init__(self, prefix: str = "nbopt-export-"):
        self.path = Path(tempfile.mkdtemp(prefix=prefix))
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.path), ignore_errors=True)
        _OWNED[str(self.path)] = self

    def cleanup(self) -> None:
        """Remove the folder now."""
        self._finalizer()

    def __copy__(self) -> "OwnedDir":
        return self

    def __deepcopy__(self, memo: Any) -> "OwnedDir":
        return self

    def __repr__(self) -> str:
        return f"OwnedDir({str(self.path)!r})"


_OWNED: "weakref.WeakValueDictionary[str, OwnedDir]" = weakref.WeakValueDictionary()


def owner_of(path: str | os.PathLike) -> OwnedDir | None:
    """The :class:`OwnedDir` holding ``path`` (a file in a folder nbopt made), or None for the user's paths."""
    p = Path(path)
    for folder in (p, *p.parents):
        owner = _OWNED.get(str(folder))
        if owner is not None:
            return owner
    return None


def target_path(path: str | os.PathLike | None, fmt: Format) -> tuple[Path, OwnedDir | None]:
    """Where the file goes: ``path``, ``path/model<suffix>`` for a directory, or a new temp folder (its
    :class:`OwnedDir` returned beside it; None for the user's paths)."""
    if path is None:
        owner = OwnedDir()
        return owner.path / f"model{fmt.suffix}", owner
    p = Path(path).expanduser()
    return (p / f"model{fmt.suffix}" if p.is_dir() else p), None


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
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a temp path; rename it onto ``final`` only if the block succeeds, delete it otherwise."""
    tmp = reserve_temp(final)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


# ---------------------------------------------------------------- ONNX (checked in onnxruntime)


def write_onnx(model: nn.Module, inputs: Any, tmp: Path, options: ExportOptions) -> Written:
    """The dynamo exporter, one file, static shapes; an onnxruntime-backed model saves its own graph."""
    source = getattr(model, "onnx_model", None) or getattr(model, "onnx_bytes", None)
    if source is not None:  # an onnxruntime-backed model (e.g. nbopt.quantize's ORT int8): save its graph
        _save_onnx_source(source, tmp)
    else:
        export_onnx(model, inputs, tmp, opset=options.opset, external_data=False, silent=True)
    return Written()


def _save_onnx_source(source: Any, tmp: Path) -> None:
    if isinstance(source, (bytes, bytearray)):
        tmp.write_bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        tmp.write_bytes(Path(source).read_bytes())
    else:
        import onnx

        onnx.save(source, str(tmp))


def onnx_operators(path: Path, written: Written) -> dict[str, int]:
    """Node count per op type (``domain::op`` outside the default domain)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return dict(collections.Counter(f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
                                    for n in graph.node))


def onnx_runner(path: Path, inputs: Any) -> Callable[[], Any]:
    """An onnxruntime session on ``path`` fed ``inputs``."""
    session = ort_session(path, purpose="checking an ONNX export")
    feeds = {i.name: t.detach().cpu().numpy() for i, t in zip(session.get_inputs(), tensors_in(inputs))}
    return lambda: [torch.from_numpy(o.copy()) for o in session.run(None, feeds)]


# ---------------------------------------------------------------- TorchScript (checked in torch.jit)


def write_torchscript(model: nn.Module, inputs: Any, tmp: Path, options: ExportOptions) -> Written:
    """Trace and save; the notes name branches the tracer froze (TracerWarnings)."""
    import warnings

    args, kwargs = as_args(inputs)
    with torch.no_grad():
        structured = not isinstance(model(*args, **kwargs), (torch.Tensor, tuple))
    # the tracer cannot output a ModelOutput (or keep a dict's keys): trace the flat tuple of output tensors
    # (RuntimeModule.from_export rebuilds the structure)
    target = FlatOutputs(model) if structured else model
    with quiet(), torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)
        traced = torch.jit.trace(target, args, example_kwarg_inputs=kwargs or None, check_trace=False)
        torch.jit.save(traced, str(tmp))
    frozen = {f"{w.filename}:{w.lineno}" for w in caught if issubclass(w.category, torch.jit.TracerWarning)}
    return Written(notes=[f"the trace froze a data-dependent value or branch at {where}: other inputs may take "
                          "another path in eager PyTorch but not in this program" for where in sorted(frozen)])


def torchscript_operators(path: Path, written: Written) -> dict[str, int]:
    """Node count per ATen kind of the inlined graph (``prim::`` glue left out)."""
    graph = torch.jit.load(str(path)).inlined_graph
    return dict(collections.Counter(n.kind() for n in graph.nodes() if not n.kind().startswith("prim::")))


def torchscript_runner(path: Path, inputs: Any) -> Callable[[], Any]:
    """The loaded TorchScript program called on ``inputs``."""
    loaded = torch.jit.load(str(path)).eval()
    args, kwargs = as_args(inputs)
    return lambda: loaded(*args, **kwargs)


# ---------------------------------------------------------------- ExecuTorch (XNNPACK, checked in its runtime)


def lower_executorch(model: nn.Module | torch.export.ExportedProgram, inputs: Any) -> Any:
    """torch.export -> edge dialect -> XNNPACK-delegated ExecuTorch program manager."""
    require("executorch.exir", extra="deploy", purpose="format='executorch'")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with quiet():
        program = model if isinstance(model, torch.export.ExportedProgram) else export_program(model, inputs)
        return to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])


def write_executorch(model: nn.Module, inputs: Any, tmp: Path, options: ExportOptions) -> Written:
    """Lower and save the ``.pte``; the lowered program is kept to read its operators."""
    edge = lower_executorch(model, inputs)
    tmp.write_bytes(edge.to_executorch().buffer)
    return Written(program=edge)


def edge_op_name(target: Any) -> str:
    name = getattr(target, "__name__", str(target))
    return name.split("::")[-1] if "::" in name else name


def executorch_operators(path: Path, written: Written) -> dict[str, int]:
    """Operators of the lowered program; those inside an XNNPACK delegate are prefixed ``xnnpack:``."""
    counts: collections.Counter = collections.Counter()
    program = written.program.exported_program()
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


def executorch_runner(path: Path, inputs: Any) -> Callable[[], Any]:
    """The program's ``forward`` in the ExecuTorch runtime, fed the flat list of input tensors."""
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(path)).load_method("forward")
    flat = list(tensors_in(inputs))
    return lambda: method.execute(flat)


register_format(Format("onnx", write_onnx, onnx_operators, onnx_runner, suffix=".onnx", runtime="onnxruntime"))
register_format(Format("torchscript", write_torchscript, torchscript_operators, torchscript_runner, suffix=".pt",
                       runtime="torch.jit", aliases=("ts", "jit"), fixed_batch=False))
register_format(Format("executorch", write_executorch, executorch_operators, executorch_runner, suffix=".pte",
                       runtime="executorch+xnnpack", aliases=("pte",)))


# ---------------------------------------------------------------- entry point


def unwrap(model: Any, fmt: str) -> nn.Module:
    """The exportable module inside results (FuseResult, QuantResult) and nbopt.quantize's int8 models."""
    if not isinstance(model, nn.Module) and isinstance(getattr(model, "model", None), nn.Module):
        model = model.model  # FuseResult / QuantResult
    check_module(model)
    if getattr(model, "onnx_bytes", None) is not None and fmt != "onnx":
        raise UnsupportedModelError(
            f"this model is an onnxruntime program (nbopt.quantize backend='onnxruntime'); it exports only to "
            f"format='onnx', not {fmt!r}. For {fmt}, quantize with backend='pt2e'.")
    converted = getattr(model, "converted", None)  # nbopt.quantize backend='pt2e': export the PT2E graph itself
    model = converted if isinstance(converted, nn.Module) else model
    if fmt == "executorch" and _has_quant_ops(model):
        raise UnsupportedModelError(
            "this int8 model was quantized for x86 (torchao X86InductorQuantizer); the ExecuTorch runtime here "
            "has no kernels for its quantize/dequantize ops outside XNNPACK. Export it with format='onnx' "
            "(onnxruntime runs it), or export the fp32 model to ExecuTorch (XNNPACK runs it in fp32).")
    return model


def _has_quant_ops(model: nn.Module) -> bool:
    graph = getattr(model, "graph", None)
    return graph is not None and any("quantize_per" in str(n.target) for n in graph.nodes)


def export(model: nn.Module, example_inputs: Any, format: str = "onnx", path: str | os.PathLike | None = None,
           *, opset: int | None = None, check: bool = True, latency: bool = True,
           repeat: int = 20) -> ExportResult:
    """Export ``model`` and verify it in the target's runtime: file size, operators, max |diff|, latency.

    ``format``: a name in :data:`FORMATS`: "onnx" (checked in onnxruntime), "torchscript" (``torch.jit.load``)
    or "executorch" (XNNPACK delegate, checked in the ExecuTorch runtime), or one added with
    :func:`register_format`. The file is written to a temp file beside ``path`` and renamed only when the
    export succeeded, so a failure leaves nothing behind. ``path=None`` writes into a new temporary folder,
    removed when the result (and every ``RuntimeModule`` on its file) is garbage-collected or the kernel exits.

    The model is first run eagerly on ``example_inputs``: a wrong shape, rank or dtype is a
    :class:`~nbopt.errors.ForwardError` naming the input shapes, not an exporter error.
    """
    fmt = FORMATS[check_format(format)]
    model = unwrap(model, fmt.name)
    check_not_meta(model, "export")
    check_device(model, example_inputs)
    check_exportable(model, example_inputs, fmt.name)
    work = working_copy(model).eval()
    cache = cache_off(work)
    example_inputs = cache_free_inputs(example_inputs)
    with torch.no_grad():
        eager = call(work, example_inputs)  # the model's own failure, named with the input shapes
    check_tensor_outputs(eager, f"{fmt.name} export")
    final, owner = target_path(path, fmt)
    try:
        with atomic_file(final) as tmp:
            written = _write(fmt, work, example_inputs, tmp, ExportOptions(opset=opset), model)
        result = ExportResult(fmt.name, final, final.stat().st_size, fmt.operators(final, written), fmt.runtime,
                              owner=owner, outputs=OutputStructure(eager))
        if cache:
            result.notes.append(CACHE_NOTE.format(what="the exported program"))
        result.notes.extend(written.notes)
        if check or latency:
            verify(result, work, example_inputs, latency=latency, repeat=repeat)
    except BaseException:
        if owner is not None:
            owner.cleanup()
        raise
    return result


def check_exportable(model: nn.Module, inputs: Any, fmt: str) -> None:
    """Refuse what no format can export (meta tensors) and what ONNX cannot run (bfloat16), before writing."""
    check_not_meta(model, "export")
    tensors = [*model.parameters(), *model.buffers(), *tensors_in(inputs)]
    if any(t.device.type == "meta" for t in tensors):
        raise InputError(
            "the model or its inputs are on the meta device: meta tensors have shapes but no values, so there is "
            "nothing to export or check. Materialize the model with model.to_empty(device='cpu') and load its "
            "weights (model.load_state_dict(...)), and pass real input tensors.")
    if fmt == "onnx" and any(t.dtype == torch.bfloat16 for t in tensors):
        raise UnsupportedModelError(
            "ONNX export of a bfloat16 model or input: onnxruntime's CPU kernels have no bfloat16 Conv/Gemm/"
            "MatMul, so the exported file would not load. Export the float32 model instead "
            "(nbopt.export(model.float(), x.float())), or use format='torchscript', which runs bfloat16.")


def _write(fmt: Format, work: nn.Module, inputs: Any, tmp: Path, options: ExportOptions,
           model: nn.Module) -> Written:
    """``fmt.write`` under no_grad; a failure becomes an error naming the module of ``model`` at fault."""
    try:
        with torch.no_grad():
            return fmt.write(work, inputs, tmp, options)
    except NboptError:
        raise
    except Exception as exc:
        raise export_error(exc, model, fmt.name) from None


def verify(result: ExportResult, model: nn.Module, inputs: Any, *, latency: bool = True, repeat: int = 20) -> None:
    """Fill ``result`` with the runtime's max |diff| against eager and both latencies (one interleaved timing,
    ``repeat`` calls each in blocks of 3, after the runtime's first call has built its session)."""
    fmt = FORMATS[result.format]
    try:
        run = fmt.runner(result.path, inputs)
        with torch.no_grad():
            out = run()
    except (KeyboardInterrupt, NboptError):
        raise
    except Exception as exc:  # noqa: BLE001 - the runtime rejected the file: say so, without its ANSI codes
        raise UnsupportedModelError(
            f"the {result.format} file {result.path} was written but does not run in {result.runtime or 'its runtime'} "
            f"on inputs {describe_shapes(inputs)}: {strip_ansi(describe_exception(exc))}. Try another format, "
            "or float32 inputs and weights.") from None
    with torch.no_grad():
        result.max_abs_diff = max_abs_diff(call(model, inputs), out)
        if latency:
            pair = compare_pair(lambda: call(model, inputs), run, names=("eager", "runtime"), repeat=repeat)
            result.eager_latency_ms = pair.baseline.median_ms
            result.latency_ms = pair.other.median_ms
            result.latency, result.speedup_spread, result.noisy = pair.summaries(), pair.speedup, pair.noisy
            result.latency_note = pair.note(f"{result.runtime} speedup over eager")
