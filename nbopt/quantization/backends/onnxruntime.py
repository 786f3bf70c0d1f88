"""Real int8 through ONNX + onnxruntime: static QDQ (calibrated) or dynamic quantization of the exported graph."""
from __future__ import annotations

import os
import tempfile
from typing import Any

import torch
from torch import nn

from ... import graph
from ...cpu import Int8Settings, int8_settings
from ...inputs import tensors_in
from ..calibration import calibration_inputs
from .base import Int8Program, for_cpu, need


class OrtModule(nn.Module):
    """An onnxruntime session called like a torch module (tensors in, tensors out)."""

    def __init__(self, onnx_bytes: bytes, threads: int | None = None):
        super().__init__()
        self.onnx_bytes, self.threads = onnx_bytes, threads or torch.get_num_threads()
        self._session = None

    @property
    def session(self) -> Any:
        if self._session is None:
            self._session = graph.ort_session(self.onnx_bytes, threads=self.threads, extra="int8",
                                              purpose="the int8 path")
        return self._session

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_session": None}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        names = [i.name for i in self.session.get_inputs()]
        values = list(tensors_in((args, kwargs)))
        feed = {n: v.detach().cpu().numpy() for n, v in zip(names, values)}
        outs = [torch.from_numpy(o) for o in self.session.run(None, feed)]
        return outs[0] if len(outs) == 1 else tuple(outs)


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

    def __init__(self, names: list[str], calib: Any, progress: bool):
        from tqdm.auto import tqdm
        self.names = names
        self.it = iter(tqdm(calibration_inputs(calib), desc="calibrating (onnxruntime)", disable=not progress,
                            leave=False))

    def get_next(self) -> dict[str, Any] | None:
        x = next(self.it, None)
        if x is None:
            return None
        return {n: t.detach().cpu().numpy() for n, t in zip(self.names, tensors_in(x))}


def build_onnx(model: nn.Module, calib: Any, example: Any, *, dynamic: bool = False,
               progress: bool = True, settings: Int8Settings | None = None) -> Int8Program:
    """ONNX export + onnxruntime quantization: static QDQ per-channel, or dynamic.

    ``settings`` (default: :func:`nbopt.cpu.int8_settings` for this CPU): ``reduce_range`` (7-bit
    weights) on x86 CPUs without VNNI, where onnxruntime's u8 x s8 kernels saturate in 16 bits.
    """
    settings = settings or int8_settings()
    for mod in ("onnx", "onnxruntime", "onnxscript"):
        need(mod)
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
        export_onnx(model, example, fp32)
        if dynamic:
            quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8, per_channel=True,
                             reduce_range=settings.reduce_range)
        else:
            names = [i.name for i in ort.InferenceSession(fp32, providers=["CPUExecutionProvider"]).get_inputs()]
            quantize_static(fp32, int8, _Reader(names, calib, progress), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            reduce_range=settings.reduce_range)
        data = open(int8, "rb").read()
    return for_cpu(Int8Program("onnxruntime", OrtModule(data), _onnx_initializer_bytes(data), len(data)),
                    settings)


def _onnx_initializer_bytes(data: bytes) -> int:
    import onnx
    from onnx import numpy_helper
    model = onnx.load_from_string(data)
    return sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
