"""One home for turning a model into a graph, and for the errors when that fails.

* Capture: :func:`export_program` (``torch.export`` as nbopt calls it), :func:`capture` (a checked copy, for
  compatibility and memory analysis), :func:`capture_dynamic_batch` (batch dimension symbolic, non-strict
  then strict, for PT2E int8), and :func:`module_of` / :func:`op_name` to read the captured nodes.
* ONNX: :func:`export_onnx` (the dynamo exporter, for the onnxruntime int8 builder and ``nbopt.export``) and
  :func:`ort_session` (an onnxruntime CPU session: threads set, no busy-waiting).
* KV caches and output structure: :func:`cache_off` turns a Hugging Face model's ``use_cache`` off on a private
  copy (a ``DynamicCache`` output cannot be captured); :func:`check_tensor_outputs` refuses other non-tensor
  outputs clearly; :class:`OutputStructure` rebuilds what the model returns (a ``ModelOutput``, a dict, nested
  tuples) from a program's flat list of output tensors.
* Errors: :func:`failing_module` / :func:`module_at` find the module at fault; :func:`capture_error` and
  :func:`export_error` build the :class:`~nbopt.errors.UnsupportedModelError` that names it and the way out.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import re
import traceback
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn
from torch.utils import _pytree as pytree

from .errors import UnsupportedModelError, describe_exception, require
from .inputs import as_args
from .layers import ROOT
from .model_state import working_copy

# ---------------------------------------------------------------- capture


def export_program(model: nn.Module, inputs: Any) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``model`` on ``inputs`` with torch's defaults (non-strict, static shapes)."""
    args, kwargs = as_args(inputs)
    return torch.export.export(model, args, kwargs)


def capture(model: nn.Module, inputs: Any) -> torch.export.ExportedProgram:
    """``torch.export`` of an eval-mode copy of ``model`` under no_grad; a failure names the module at fault.

    torch's logging and prints during the capture (graph dumps of a failed guard, symbolic-shape warnings) are
    silenced (:func:`quiet`): the error nbopt raises says what went wrong.
    """
    work = working_copy(model).eval()
    cache_off(work)
    inputs = cache_free_inputs(inputs)
    try:
        with quiet(), torch.no_grad():
            return export_program(work, inputs)
    except Exception as exc:
        raise export_error(exc, model, "torch.export (graph capture)") from None


# ---------------------------------------------------------------- KV caches and output structure

CACHE_NOTE = ("use_cache was turned off on nbopt's private copy of the model (config.use_cache=False): a KV cache "
              "(DynamicCache) cannot be a graph output, so {what} returns the model's tensors (logits / hidden "
              "states) without past_key_values. Your model's config is unchanged.")


def cache_owners(model: nn.Module) -> list[str]:
    """Names of the modules of ``model`` (a Hugging Face model and its sub-stacks) whose config has ``use_cache`` on."""
    return [n for n, m in model.named_modules() if getattr(getattr(m, "config", None), "use_cache", False) is True]


def cache_configs(model: nn.Module) -> list[Any]:
    """The distinct configs in ``model`` with ``use_cache`` on."""
    found = {id(cfg): cfg for cfg in (model.get_submodule(n).config for n in cache_owners(model))}
    return list(found.values())


def cache_back(model: nn.Module, owners: list[str]) -> nn.Module:
    """Turn ``use_cache`` on again for the modules ``owners`` (from :func:`cache_owners` of the original)."""
    for name in owners:
        model.get_submodule(name).config.use_cache = True
    return model


def cache_off(copy: nn.Module) -> bool:
    """Set ``use_cache=False`` on every config of ``copy`` (nbopt's private copy, changed in place): its forward
    then returns no ``DynamicCache``, which torch.export, ONNX and TorchScript cannot output. True when a cache
    was on (the caller adds :data:`CACHE_NOTE` to its result)."""
    configs = cache_configs(copy)
    for cfg in configs:
        cfg.use_cache = False
    return bool(configs)


def cache_free_inputs(inputs: Any) -> Any:
    """``inputs`` with a ``use_cache=True`` keyword turned off (a dict of kwargs); a KV cache passed in is refused."""
    if not isinstance(inputs, Mapping):
        return inputs
    cache = next((k for k, v in inputs.items() if _is_cache(v)), None)
    if cache is not None:
        raise UnsupportedModelError(
            f"the inputs hold a KV cache ({cache}={type(inputs[cache]).__name__}): nbopt captures a model called on "
            "tensors, and a cache passed in is mutated by each call. Pass the whole prompt (input_ids, attention_mask) "
            f"without {cache}.")
    return {**inputs, "use_cache": False} if inputs.get("use_cache") is True else inputs


def _is_cache(value: Any) -> bool:
    return any(c.__name__.endswith("Cache") and c.__module__.startswith("transformers")
               for c in type(value).__mro__)


def odd_outputs(output: Any) -> list[str]:
    """Type names of the leaves of ``output`` that are neither tensors nor plain Python constants."""
    leaves = pytree.tree_leaves(output)
    return sorted({type(v).__name__ for v in leaves
                   if not isinstance(v, (torch.Tensor, int, float, bool, str, type(None)))})


def check_tensor_outputs(output: Any, what: str) -> None:
    """Refuse an eager output holding objects a graph cannot return (a cache, a custom class), naming them."""
    odd = odd_outputs(output)
    if odd:
        cache = any(n.endswith("Cache") for n in odd)
        fix = ("turn the cache off: model(..., use_cache=False) or model.config.use_cache = False on a copy"
               if cache else "return tensors (or tuples/lists/dicts of tensors) from forward, e.g. with a "
               "wrapper module")
        raise UnsupportedModelError(f"{what}: the model returns {', '.join(odd)}, which a captured graph cannot "
                                    f"output (only tensors and tuples/lists/dicts of them); {fix}.")


class OutputStructure:
    """What a model returns (a ``ModelOutput``, a dict, nested tuples/lists), rebuilt from a program's flat list
    of output tensors; non-tensor leaves (None, Python numbers) are kept from the example output."""

    def __init__(self, example_output: Any):
        leaves, self.spec = pytree.tree_flatten(example_output)
        self.leaves = [(isinstance(v, torch.Tensor), None if isinstance(v, torch.Tensor) else v) for v in leaves]
        self.tensors = sum(is_tensor for is_tensor, _ in self.leaves)

    def rebuild(self, outs: list[Any]) -> Any:
        """``outs`` in the example's structure; the flat value (one tensor, else a tuple) when counts differ."""
        if len(outs) != self.tensors:
            return outs[0] if len(outs) == 1 else tuple(outs)
        it = iter(outs)
        return pytree.tree_unflatten([next(it) if is_tensor else v for is_tensor, v in self.leaves], self.spec)


class FlatOutputs(nn.Module):
    """``model`` returning the flat tuple of its output tensors (for exporters that cannot output a ModelOutput
    or dict: the TorchScript tracer); :class:`OutputStructure` rebuilds the structure on the way out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, ...]:
        return tuple(t for t in pytree.tree_leaves(self.model(*args, **kwargs)) if isinstance(t, torch.Tensor))


def dynamic_batch_example(example: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Example args with batch >= 2 so export keeps the batch dimension symbolic."""
    args, kwargs = as_args(example)
    return tuple(_batch_of_two(a) for a in args), {k: _batch_of_two(v) for k, v in kwargs.items()}


def _batch_of_two(value: Any) -> Any:
    """A batch-1 tensor repeated to batch 2; anything else unchanged."""
    if isinstance(value, torch.Tensor) and value.shape[0] == 1:
        return value.repeat(2, *[1] * (value.dim() - 1))
    return value


def batch_dynamic_shapes(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``dynamic_shapes`` marking dim 0 of every tensor argument as one shared ``batch`` dimension."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    spec = lambda t: {0: batch} if isinstance(t, torch.Tensor) and t.dim() > 0 else None  # noqa: E731
    return tuple(spec(a) for a in args) + tuple(spec(v) for v in kwargs.values()) if kwargs else \
        tuple(spec(a) for a in args)


def capture_dynamic_batch(model: nn.Module, example: Any, *, backend: str,
                          then: Callable[[nn.Module], nn.Module] | None = None) -> nn.Module:
    """``torch.export`` with a dynamic batch, then ``then`` on the graph module (identity if None).

    Non-strict first, then strict: a graph that ``then`` rejects is retried strict (non-strict graphs of
    reused modules break the X86 quantizer's fusion patterns, strict ones do not). When both fail, the
    first error is raised as :func:`capture_error` for ``backend``.
    """
    args, kwargs = dynamic_batch_example(example)
    shapes = batch_dynamic_shapes(args, kwargs)
    first_error = None
    for strict in (False, True):
        try:
            graph = torch.export.export(model, args, kwargs or None, dynamic_shapes=shapes, strict=strict).module()
            return then(graph) if then is not None else graph
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - reported with the module that failed
            first_error = first_error or exc
    raise capture_error(first_error, model, backend)


def op_name(target: Any) -> str:
    """``aten.conv2d.default`` style name of a graph node target."""
    name = getattr(target, "__name__", None) or str(target)
    if hasattr(target, "_schema") or "." in name:
        return str(target).split(": schema")[0].replace("<EdgeOpOverload: ", "").rstrip(">")
    return name


def module_of(node: torch.fx.Node) -> tuple[str, str]:
    """(qualified name, type name) of the innermost module that produced ``node``; the model itself is ROOT."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ROOT, ""
    fqn, cls = list(stack.values())[-1]
    cls_name = cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
    return fqn or ROOT, cls_name.rsplit(".", 1)[-1]


# ---------------------------------------------------------------- ONNX


_QUIET_LOGGERS = ("torch", "executorch", "onnxscript")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Swallow the exporters' progress prints and torch's graph/export logging (core modules never print).

    stdout/stderr are redirected, and the ``torch`` (``torch.export``, ``torch.fx``, dynamo), ``executorch`` and
    ``onnxscript`` loggers are raised to ERROR for the block: their handlers hold the original stream, which a
    redirect does not reach.
    """
    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class _DropFrom(logging.Filter):
    """Drops log records emitted from files under one package directory (e.g. onnxruntime/quantization)."""

    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.pathname.replace(os.sep, "/") or record.levelno >= logging.ERROR


@contextlib.contextmanager
def quiet_root_logging(fragment: str = "onnxruntime/quantization") -> Iterator[None]:
    """Silence warnings a library logs on the *root* logger (onnxruntime's quantizer: "Please consider to run
    pre-processing..."), leaving progress bars and the user's logging alone. ``logging.warning()`` would also
    install a stderr handler on an unconfigured root logger for good; a NullHandler stands in for the block."""
    root = logging.getLogger()
    flt, stand_in = _DropFrom(fragment), None
    if not root.handlers:
        stand_in = logging.NullHandler()
        root.addHandler(stand_in)
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)
        if stand_in is not None:
            root.removeHandler(stand_in)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    """``text`` without terminal colour codes (torch.onnx colours its messages)."""
    return _ANSI.sub("", text)


def export_onnx(model: nn.Module, example: Any, path: str | os.PathLike, *, opset: int | None = None,
                dynamic_batch: bool = False, external_data: bool = True, silent: bool = False) -> None:
    """Write ``model`` on ``example`` to ``path`` with torch's dynamo ONNX exporter.

    ``opset``: the exporter's default when None. ``dynamic_batch``: dim 0 of every input symbolic (the
    example grown to batch 2 where it is 1). ``external_data``: torch's default (weights may go to a
    ``.data`` file beside ``path``); False writes one file. ``silent``: swallow stdout/stderr too.
    Exceptions propagate: each caller words its own error.
    """
    if dynamic_batch:
        args, kwargs = dynamic_batch_example(example)
        shapes = batch_dynamic_shapes(args, kwargs)
    else:
        (args, kwargs), shapes = as_args(example), None
    with quiet() if silent else contextlib.nullcontext():
        torch.onnx.export(model, args, str(path), kwargs=kwargs or None, opset_version=opset, dynamo=True,
                          external_data=external_data, dynamic_shapes=shapes, optimize=True, verbose=False)


def ort_session(source: bytes | str | os.PathLike, *, threads: int | None = None, extra: str = "deploy",
                purpose: str = "running an ONNX program") -> Any:
    """An onnxruntime CPU session on ``source`` (a file or the model's bytes).

    ``threads`` intra-op threads (torch's count when None), one inter-op thread, and no busy-waiting between
    calls: on 2 shared cores spinning measured slower (25 vs 18 ms, resnet18 int8 batch 1, under load) and
    slowed torch code running right after a call (585 vs 403 ms). ``extra``/``purpose`` word the error when
    onnxruntime is missing.
    """
    ort = require("onnxruntime", extra=extra, purpose=purpose)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    model = source if isinstance(source, (bytes, bytearray)) else str(source)
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------- the module at fault

_DATA_DEPENDENT = ("data-dependent", "GuardOnDataDependentSymNode", "Dynamic control flow", "data dependent")
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\w+)')


def failing_module(exc: BaseException, model: nn.Module) -> str | None:
    """Qualified name of the deepest module of ``model`` whose forward was running when ``exc`` was raised
    (read from the traceback's frames; the model itself is named by its class)."""
    names = {id(m): n or type(model).__name__ for n, m in model.named_modules()}
    found, tb = None, exc.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if id(owner) in names:
            found = names[id(owner)]
        tb = tb.tb_next
    return found


def module_at(model: nn.Module, filename: str, line: int) -> str | None:
    """``name (Type)`` of the deepest submodule whose ``forward`` source contains ``filename:line``
    (for errors that quote the user's frame only in their text); the model itself is ROOT."""
    found = None
    for name, m in model.named_modules():
        try:
            lines, start = inspect.getsourcelines(type(m).forward)
            src = inspect.getsourcefile(type(m).forward)
        except (OSError, TypeError):
            continue
        if src and src == filename and start <= line < start + len(lines):
            found = f"{name or ROOT} ({type(m).__name__})"
    return found


def user_line(exc: BaseException) -> str | None:
    """The last traceback line outside torch (the user's code that could not be captured)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/torch/" not in f.filename
              and "/torchao/" not in f.filename and "/nbopt/" not in f.filename]
    if frames:
        f = frames[-1]
        return f"{f.filename}:{f.lineno} `{(f.line or '').strip()}`"
    for line in str(exc).splitlines():  # dynamo (strict) errors quote the user frame in their message
        if line.strip().startswith("File ") and "/torch/" not in line:
            return line.strip()
    return None


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception ``exc`` was raised from (torch.onnx wraps the real error in a TorchExportError
    whose own message only says which step failed)."""
    seen = {id(exc)}
    while exc.__cause__ is not None and id(exc.__cause__) not in seen and str(exc.__cause__).strip():
        exc = exc.__cause__
        seen.add(id(exc))
    return exc


def _messages(exc: BaseException | None) -> str:
    """The messages of ``exc`` and every exception it was raised from or during."""
    parts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


# ---------------------------------------------------------------- errors


def capture_error(exc: BaseException, model: nn.Module, backend: str) -> UnsupportedModelError:
    """The error for a model the ``backend`` int8 path could not capture: the real cause (the innermost
    exception's first line, ANSI codes stripped), the module, the line, the ways out."""
    cause = root_cause(exc)
    where = failing_module(cause, model) or failing_module(exc, model)
    line = user_line(cause) or user_line(exc)
    loc = (f" in module {where!r}" if where else "") + (f" at {line}" if line else "")
    text = _messages(exc)
    if any(k in text for k in _DATA_DEPENDENT):
        why = ("Cause: data-dependent control flow (an `if` on tensor values). Ways out: rewrite that branch with "
               "torch.where/torch.cond, ")
    elif "in output" in text and "not a known type" in text:
        why = ("Cause: the model returns an object that is not a tensor (a cache or a custom class); return "
               "tensors (for Hugging Face models: use_cache=False). Ways out: ")
    else:
        why = "Ways out: "
    return UnsupportedModelError(
        f"the {backend} int8 path could not capture the model{loc}: {strip_ansi(describe_exception(cause))}. "
        f"{why}mode='dynamic' (weights only), mode='simulate' to study accuracy, another backend, or quantize the "
        "model without that module (exclude it by wrapping the rest).")


def export_error(exc: BaseException, model: nn.Module, fmt: str) -> UnsupportedModelError:
    """The error for a failed export or capture (``fmt`` names it): the module at fault for data-dependent
    control flow, else the exception's first line."""
    text = _messages(exc)
    if any(k in text for k in _DATA_DEPENDENT):
        frames = _FRAME.findall(text)
        where = next((module_at(model, f, int(n)) for f, n, _ in reversed(frames) if module_at(model, f, int(n))),
                     None)
        loc = f" in module {where}" if where else ""
        code = f" at {frames[-1][0]}:{frames[-1][1]}" if frames else ""
        return UnsupportedModelError(
            f"{fmt} export failed: data-dependent control flow{loc}{code} (a Python `if` on a tensor value "
            f"cannot be captured in a graph; {_first_line(_data_dependent_error(exc))}). Way out: rewrite the "
            "branch with tensor ops (torch.where) or torch.cond, or export with format='torchscript', whose tracer "
            "freezes the branch taken on the example inputs.")
    cause = root_cause(exc)
    where = failing_module(cause, model) or failing_module(exc, model)
    loc = f" in module {where!r}" if where else ""
    hint = "Check that the model runs under torch.export.export(model, args), or try another format."
    if "in output" in text and "not a known type" in text:
        hint = ("The model returns an object that is not a tensor (a cache or a custom class): return tensors "
                "(for Hugging Face models, use_cache=False), or wrap the model to return them.")
    return UnsupportedModelError(f"{fmt} export failed{loc}: {_first_line(cause)}. {hint}")


def _first_line(exc: BaseException) -> str:
    """``Type: first line`` of ``exc``'s message, without terminal colour codes."""
    return strip_ansi(describe_exception(exc))


def _data_dependent_error(exc: BaseException) -> BaseException:
    """The innermost exception in ``exc``'s chain whose message names the data-dependent guard (else ``exc``)."""
    seen, found = set(), exc
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if any(k in str(exc) for k in _DATA_DEPENDENT):
            found = exc  # the innermost one names the guard; the wrappers only say which step failed
        exc = exc.__cause__ or exc.__context__
    return found
