"""Real int8 backends behind one interface: torchao PT2E + torch.compile, and ONNX + onnxruntime.

Both return an :class:`Int8Program` whose ``.model`` is an ``nn.Module`` called with torch tensors.
"""
from __future__ import annotations

import copy
import io
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..cpu import Int8Settings, int8_settings
from ..errors import NboptError, require
from ..inputs import tensors_in
from .calibration import calibration_inputs, run_batches
from .. import graph


@dataclass
class Int8Program:
    """A converted model and what it weighs."""

    backend: str
    model: nn.Module
    dense_bytes: int
    disk_bytes: int
    cpu: str = ""  # the CPU it was quantized for, e.g. "AVX2, no VNNI" (nbopt.cpu.CpuInfo.label)
    settings: str = ""  # the quantizer choice made for that CPU (nbopt.cpu.Int8Settings.label)

    @property
    def cpu_note(self) -> str:
        """One sentence for the result's notes: the CPU and the int8 choice made for it."""
        return f"CPU {self.cpu}: int8 with {self.settings}." if self.cpu else ""


def _for_cpu(program: Int8Program, settings: Int8Settings) -> Int8Program:
    program.cpu, program.settings = settings.cpu.label, settings.label
    return program


def _need(module: str) -> None:
    require(module, extra="int8", purpose="the int8 path")


def capture_for_pt2e(model: nn.Module, example: Any, backend: str = "pt2e", prepare: Any = None) -> nn.Module:
    """The graph PT2E quantizes: torch.export with a dynamic batch, then ``prepare`` on it (identity if None).

    Non-strict first, then strict (:func:`nbopt.graph.capture_dynamic_batch`): non-strict graphs of reused
    modules (torchvision's ResNet reuses one ReLU) break the X86 quantizer's fusion patterns, strict ones
    do not. A model neither captures raises an ``UnsupportedModelError`` naming the module.
    """
    return graph.capture_dynamic_batch(model, example, backend=backend, then=prepare)


STATIC_BATCH_SIZES = 4  # batch sizes that get their own static program before a dynamic one takes over


class CompiledInt8(nn.Module):
    """A converted PT2E program compiled by inductor with freezing (int8 oneDNN kernels), any batch size.

    The first ``STATIC_BATCH_SIZES`` batch sizes each compile a static program: the fastest (in torch 2.14
    a dynamic-batch program skips inductor's weight prepacking and ran resnet50 at batch 8 in 191 ms vs
    104 ms). Further sizes run one dynamic-batch program instead of a recompile each: only dim 0 is marked
    dynamic (torch 2.14's quantized-conv lowering fails when the spatial dims are symbolic too), compiled
    on a private copy (its own dynamo cache), used once its first output matches the uncompiled graph.
    Where dynamic lowering fails (a one-channel input at batch >= 16 in torch 2.14), static programs
    continue for every size (up to dynamo's recompile limit, then the uncompiled int8 graph).
    """

    def __init__(self, converted: nn.Module):
        super().__init__()
        self.converted = converted
        self.static = torch.compile(converted, dynamic=False)
        self.static_sizes: list[int] = []
        # the dynamic program (compiled on a private copy of the graph), kept out of the module tree (no
        # state_dict duplicates); "state": "untried" | "ok" | "failed"
        self._dynamic: dict[str, Any] = {"state": "untried", "program": None}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        size = _batch_size(args, kwargs)
        state = self._dynamic["state"]
        if size is None or size in self.static_sizes or len(self.static_sizes) < STATIC_BATCH_SIZES \
                or state == "failed":
            if size is not None and size not in self.static_sizes:
                self.static_sizes.append(size)
            return _static_call(self.static, args, kwargs)
        if state == "untried":
            return self._first_dynamic(args, kwargs)
        try:
            return _dynamic_call(self._dynamic["program"], args, kwargs)
        except KeyboardInterrupt:
            raise
        except Exception:  # noqa: BLE001 - a batch range whose dynamic lowering fails: static from now on
            out = _static_call(self.static, args, kwargs)  # a bad input raises here and changes nothing
            self._drop_dynamic()
            return out

    def _first_dynamic(self, args: tuple, kwargs: dict) -> Any:
        """Compile the dynamic program on a copy; keep it if its output matches the uncompiled graph."""
        program = torch.compile(copy.deepcopy(self.converted), dynamic=None)
        try:
            out = _dynamic_call(program, args, kwargs)
            with torch.no_grad():
                ref = self.converted(*args, **kwargs)
            ok = all(_relative_error(a, b) < 0.05 for a, b in zip(tensors_in(out), tensors_in(ref)))
        except KeyboardInterrupt:
            raise
        except Exception:  # noqa: BLE001 - torch's dynamic lowering failed for this program
            ok = False
        if not ok:
            out = _static_call(self.static, args, kwargs)  # a bad input raises here and changes nothing
            self._drop_dynamic()
            return out
        self._dynamic.update(state="ok", program=program)
        return out

    def _drop_dynamic(self) -> None:
        self._dynamic.update(state="failed", program=None)

    @property
    def dynamic_batch(self) -> bool:
        """True once batch sizes beyond the static ones run one dynamic-batch program."""
        return self._dynamic["state"] == "ok"


def _batch_size(args: tuple, kwargs: dict) -> int | None:
    first = next(iter(tensors_in((args, kwargs))), None)
    return int(first.shape[0]) if first is not None and first.dim() > 0 else None


def _static_call(program: Any, args: tuple, kwargs: dict) -> Any:
    import torch._inductor.config as inductor_config
    with torch.no_grad(), inductor_config.patch(freezing=True):
        return program(*args, **kwargs)


def _dynamic_call(program: Any, args: tuple, kwargs: dict) -> Any:
    import torch._inductor.config as inductor_config

    args, kwargs = torch.utils._pytree.tree_map_only(torch.Tensor, _batch_dynamic_alias, (args, kwargs))
    with torch.no_grad(), inductor_config.patch(freezing=True), \
            torch._dynamo.config.patch(automatic_dynamic_shapes=False):
        return program(*args, **kwargs)


def _batch_dynamic_alias(t: torch.Tensor) -> torch.Tensor:
    """A view of ``t`` with dim 0 marked dynamic (marking ``t`` itself would make later static compiles of
    the same tensor dynamic too)."""
    import torch._dynamo

    alias = t.view_as(t)
    if alias.dim() > 0:
        torch._dynamo.maybe_mark_dynamic(alias, 0)
    return alias


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref||: int8 kernels differ from the reference graph by rounding, not by garbage."""
    return float((out.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-12))


def _tensor_bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def build_pt2e(model: nn.Module, calib: Any, example: Any, *, dynamic: bool = False,
               progress: bool = True, settings: Int8Settings | None = None) -> Int8Program:
    """torchao PT2E with the X86 inductor quantizer (static or dynamic), then torch.compile.

    ``settings`` (default: :func:`nbopt.cpu.int8_settings` for this CPU): ``reduce_range`` (7-bit
    activations) on x86 CPUs without VNNI, where oneDNN's u8 x s8 kernels saturate in 16 bits.
    """
    settings = settings or int8_settings()
    _need("torchao")
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config(
        is_dynamic=dynamic, reduce_range=settings.reduce_range))
    prepared = capture_for_pt2e(model, example, prepare=lambda g: prepare_pt2e(g, quantizer))
    run_batches(prepared, calib if calib is not None else example, progress=progress, desc="calibrating (pt2e)")
    converted = convert_pt2e(prepared)
    buf = io.BytesIO()
    torch.save(converted.state_dict(), buf)
    dense = _tensor_bytes(converted.state_dict().values())
    return _for_cpu(Int8Program("pt2e", CompiledInt8(converted), dense, buf.getbuffer().nbytes), settings)


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
        _need(mod)
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
    return _for_cpu(Int8Program("onnxruntime", OrtModule(data), _onnx_initializer_bytes(data), len(data)),
                    settings)


def _onnx_initializer_bytes(data: bytes) -> int:
    import onnx
    from onnx import numpy_helper
    model = onnx.load_from_string(data)
    return sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)


BUILDERS = {"pt2e": build_pt2e, "onnxruntime": build_onnx}
