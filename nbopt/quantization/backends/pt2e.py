"""Real int8 through torchao's PT2E flow: torch.export, the X86 inductor quantizer, then torch.compile.

:class:`CompiledInt8` keeps static programs for the first batch sizes and one dynamic-batch program after them.
"""
from __future__ import annotations

import copy
import io
from typing import Any

import torch
from torch import nn

from ... import graph
from ...cpu import Int8Settings, int8_settings
from ...inputs import tensors_in
from ..calibration import run_batches
from .base import Int8Program, for_cpu, need, tensor_bytes


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


def build_pt2e(model: nn.Module, calib: Any, example: Any, *, dynamic: bool = False,
               progress: bool = True, settings: Int8Settings | None = None) -> Int8Program:
    """torchao PT2E with the X86 inductor quantizer (static or dynamic), then torch.compile.

    ``settings`` (default: :func:`nbopt.cpu.int8_settings` for this CPU): ``reduce_range`` (7-bit
    activations) on x86 CPUs without VNNI, where oneDNN's u8 x s8 kernels saturate in 16 bits.
    """
    settings = settings or int8_settings()
    need("torchao")
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
    dense = tensor_bytes(converted.state_dict().values())
    return for_cpu(Int8Program("pt2e", CompiledInt8(converted), dense, buf.getbuffer().nbytes), settings)
