"""Real int8 through ONNX + onnxruntime: static QDQ (calibrated) or dynamic quantization of the exported graph."""
from __future__ import annotations

import os
import tempfile
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from ... import graph
from ...errors import require
from ...cpu import Int8Settings, int8_settings
from ...inputs import call, tensors_in
from ...model_state import working_copy
from ..calibration import calibration_inputs
from .base import Int8Program, check_program_inputs, dtype_name as _dtype, for_cpu, need

ONNX_MODULES = ("onnx", "onnxruntime", "onnxscript")  # what exporting and running an ONNX program imports


class OrtModule(nn.Module):
    """An onnxruntime session called like a torch module (tensors in; what the model returns out).

    ``outputs``: the :class:`~nbopt.graph.OutputStructure` of the model's eager output on the example, so a
    ``ModelOutput``, a dict, a nested tuple/list or a one-entry dict comes back as the model returned it, not as
    ONNX's flat list. ``inputs``: the (shape, dtype) of each input it was built for, dim 0 free: another resolution or
    dtype is a clear :class:`~nbopt.errors.InputError` instead of onnxruntime's INVALID_ARGUMENT. ``dtype``:
    the model's floating dtype when it was converted to float32 for ONNX (bfloat16, float16): inputs are
    cast to float32 and float outputs back to it.
    """

    def __init__(self, onnx_bytes: bytes, threads: int | None = None, *, outputs: graph.OutputStructure | None = None,
                 inputs: list[tuple[tuple[int, ...], torch.dtype]] | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.onnx_bytes, self.threads = onnx_bytes, threads or torch.get_num_threads()
        self.outputs, self.inputs, self.dtype = outputs, inputs, dtype
        self._session, self._names, self._checked = None, [], None

    @property
    def session(self) -> Any:
        if self._session is None:
            self._session = graph.ort_session(self.onnx_bytes, threads=self.threads, extra="int8",
                                              purpose="the int8 path")
            self._names = [i.name for i in self._session.get_inputs()]
        return self._session

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_session": None, "_names": [], "_checked": None}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        session = self.session
        one = not kwargs and len(args) == 1 and isinstance(args[0], torch.Tensor)  # the common call, no tree walk
        values = [args[0]] if one else list(tensors_in((args, kwargs)))
        signature = tuple((v.dim(), v.shape[1:], v.dtype) for v in values)  # what _check looks at (dim 0 free)
        if signature != getattr(self, "_checked", None):
            self._check(values, (args, kwargs))
            self._checked = signature
        if self.dtype is not None:
            values = [v.float() if v.is_floating_point() else v for v in values]
        feed = {n: v.detach().cpu().numpy() for n, v in zip(self._names, values)}
        outs = [torch.from_numpy(o) for o in self.session.run(None, feed)]
        if self.dtype is not None:
            outs = [o.to(self.dtype) if o.is_floating_point() else o for o in outs]
        if self.outputs is not None:
            return self.outputs.rebuild(outs)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _check(self, values: list[torch.Tensor], given: Any) -> None:
        """Inputs of the shape (dim 0 free) and dtype the program was built for, else a clear InputError."""
        check_program_inputs("onnxruntime", self.inputs, values, given, self.dtype)


def export_onnx(model: nn.Module, example: Any, path: str) -> None:
    """ONNX via the dynamo exporter (:func:`nbopt.graph.export_onnx`), batch dimension dynamic, one file."""
    try:
        graph.export_onnx(model, example, path, dynamic_batch=True)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001
        raise graph.capture_error(exc, model, "onnxruntime") from None
    import onnx
    onnx.save(onnx.load(path), path, save_as_external_data=False)  # one self-contained file (no .data)


class _Reader:
    """onnxruntime CalibrationDataReader over nbopt calibration batches."""

    def __init__(self, names: list[str], calib: Any, progress: bool, float32: bool = False):
        from tqdm.auto import tqdm
        self.names, self.float32 = names, float32
        self.it = iter(tqdm(calibration_inputs(calib), desc="calibrating (onnxruntime)", disable=not progress,
                            leave=False))

    def get_next(self) -> dict[str, Any] | None:
        x = next(self.it, None)
        if x is None:
            return None
        return {n: (t.float() if self.float32 and t.is_floating_point() else t).detach().cpu().numpy()
                for n, t in zip(self.names, tensors_in(x))}


def build_onnx(model: nn.Module, calib: Any, example: Any, *, dynamic: bool = False,
               progress: bool = True, settings: Int8Settings | None = None) -> Int8Program:
    """ONNX export + onnxruntime quantization: static QDQ per-channel, or dynamic.

    ``settings`` (default: :func:`nbopt.cpu.int8_settings` for this CPU): ``reduce_range`` (7-bit
    weights) on x86 CPUs without VNNI, where onnxruntime's u8 x s8 kernels saturate in 16 bits.
    """
    settings = settings or int8_settings()
    for mod in ONNX_MODULES:
        need(mod)
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    import onnxruntime as ort

    model, example, dtype = _float32(model, example)
    eager, inputs = _reference(model, example, "the onnxruntime int8 path")
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
        export_onnx(model, example, fp32)
        with graph.quiet_root_logging():  # onnxruntime's "consider pre-processing" warning, twice per build
            if dynamic:
                quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8, per_channel=True,
                                 reduce_range=settings.reduce_range)
            else:
                names = [i.name for i in ort.InferenceSession(fp32, providers=["CPUExecutionProvider"]).get_inputs()]
                reader = _Reader(names, calib, progress, float32=dtype is not None)
                quantize_static(fp32, int8, reader, quant_format=QuantFormat.QDQ,
                                per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                reduce_range=settings.reduce_range)
        data = open(int8, "rb").read()
    module = OrtModule(data, outputs=graph.OutputStructure(eager), inputs=inputs, dtype=dtype)
    program = for_cpu(Int8Program("onnxruntime", module, _onnx_initializer_bytes(data), len(data)), settings)
    if dtype is not None:
        program.notes.append(f"The {_dtype(dtype)} model was converted to float32 for ONNX export (onnxruntime "
                             f"quantizes float32 graphs); the int8 program takes and returns {_dtype(dtype)}.")
    return program


def build_fp32(model: nn.Module, example: Any) -> OrtModule:
    """``model``'s float32 graph (batch dimension free) run by onnxruntime, not quantized: the int8 programs'
    exporter and session module (what the search's ``runtime="onnxruntime"`` trials run)."""
    for mod in ONNX_MODULES:
        require(mod, extra="deploy", purpose='runtime="onnxruntime" (an fp32 ONNX program)')
    eager, inputs = _reference(model, example, "the fp32 onnxruntime runtime")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "fp32.onnx")
        export_onnx(model, example, path)
        data = open(path, "rb").read()
    return OrtModule(data, outputs=graph.OutputStructure(eager), inputs=inputs)


def _reference(model: nn.Module, example: Any, what: str) -> tuple[Any, list[tuple[tuple[int, ...], torch.dtype]]]:
    """The eager output on ``example`` (tensors only, else an error naming ``what``) and each input's (shape,
    dtype): what an :class:`OrtModule` is built with."""
    with torch.no_grad():
        eager = call(model, example)
    graph.check_tensor_outputs(eager, what)
    return eager, [(tuple(t.shape), t.dtype) for t in tensors_in(example)]


def _float32(model: nn.Module, example: Any) -> tuple[nn.Module, Any, torch.dtype | None]:
    """A float32 copy of a bfloat16/float16 model and example (ONNX export and onnxruntime's quantizer reject
    them: InvalidGraph), and the original dtype; the model itself when it is float32 already."""
    low = {p.dtype for p in [*model.parameters(), *model.buffers()] if p.is_floating_point()} \
        & {torch.bfloat16, torch.float16}
    if not low:
        return model, example, None
    dtype = low.pop()
    copy = working_copy(model).float()
    return copy, pytree.tree_map_only(torch.Tensor, lambda t: t.float() if t.is_floating_point() else t,
                                      example), dtype


def _onnx_initializer_bytes(data: bytes) -> int:
    import onnx
    from onnx import numpy_helper
    model = onnx.load_from_string(data)
    return sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
