"""Real int8 through torchao's PT2E flow: torch.export, the X86 inductor quantizer, then torch.compile.

:class:`CompiledInt8` keeps static programs for the first batch sizes and one dynamic-batch program after them.
"""
from __future__ import annotations

import copy
import functools
import io
import warnings
from typing import Any

import torch
from torch import nn

from ... import graph
from ...cpu import Int8Settings, int8_settings
from ...errors import UnsupportedModelError, describe_exception
from ...inputs import call, tensors_in
from ..calibration import run_batches
from .base import Int8Program, check_program_inputs, for_cpu, need, tensor_bytes


def capture_for_pt2e(model: nn.Module, example: Any, backend: str = "pt2e", prepare: Any = None) -> nn.Module:
    """The graph PT2E quantizes: torch.export with a dynamic batch, then ``prepare`` on it (identity if None).

    Non-strict first, then strict (:func:`nbopt.graph.capture_dynamic_batch`): non-strict graphs of reused
    modules (torchvision's ResNet reuses one ReLU) break the X86 quantizer's fusion patterns, strict ones
    do not. A model neither captures raises an ``UnsupportedModelError`` naming the module.
    """
    return graph.capture_dynamic_batch(model, example, backend=backend, then=prepare)


def shared_conv_bn_safe(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Make the exported graph safe for PT2E's conv + BatchNorm folding (``_fuse_conv_bn_``) when one conv is
    called several times (a module reused in ``forward``), in place; returns ``gm``.

    torchao folds each (conv, BN) call pair into the conv's weight, skipping a weight it has already folded;
    for a bias-less conv it then writes a *zero* bias over the folded one (the BN shift is lost: a module
    called twice gave cosine 0.65 vs fp32). Here every call of a shared bias-less conv gets one explicit
    zero bias, and duplicate weight reads are merged so the weight is folded once. A shared conv followed by
    different BatchNorms cannot be folded into one weight: an :class:`UnsupportedModelError`.
    """
    from torchao.quantization.pt2e.utils import _is_bn_node, _is_conv_or_conv_transpose_node

    groups: dict[str, list[tuple[torch.fx.Node, torch.fx.Node]]] = {}
    for bn in gm.graph.nodes:
        if bn.op != "call_function" or not (_is_bn_node(bn) or bn.target == torch.ops.aten.batch_norm.default):
            continue
        conv = bn.args[0]
        if isinstance(conv, torch.fx.Node) and _is_conv_or_conv_transpose_node(conv) \
                and isinstance(conv.args[1], torch.fx.Node) and conv.args[1].op == "get_attr":
            groups.setdefault(conv.args[1].target, []).append((conv, bn))
    changed = False
    for target, pairs in groups.items():
        if len(pairs) < 2:
            continue
        bn_params = {tuple(getattr(a, "target", a) for a in bn.args[1:5]) for _, bn in pairs}
        if len(bn_params) > 1:
            raise UnsupportedModelError(
                f"the conv with weight {target!r} is called {len(pairs)} times, followed by different "
                "BatchNorms: PT2E folds BatchNorm into the conv's one weight and would give wrong int8 outputs. Use "
                "backend='onnxruntime', or give each call its own conv layer.")
        first = pairs[0][0].args[1]
        for conv, _ in pairs[1:]:  # one weight read: torchao then folds the shared weight exactly once
            if conv.args[1] is not first:
                conv.args = (conv.args[0], first, *conv.args[2:])
        if len(pairs[0][0].args) < 3 or pairs[0][0].args[2] is None:
            name = f"{target.replace('.', '_')}_nbopt_zero_bias"
            out_channels = _constant(gm, pairs[0][1].args[3]).shape[0]  # the BN's running mean
            gm.register_parameter(name, nn.Parameter(torch.zeros(out_channels), requires_grad=False))
            with gm.graph.inserting_before(first.next):
                bias = gm.graph.get_attr(name)
            if "val" in first.meta:
                bias.meta["val"] = first.meta["val"].new_zeros(out_channels)
            for conv, _ in pairs:
                args = list(conv.args) + [None] * max(0, 3 - len(conv.args))
                args[2] = bias
                conv.args = tuple(args)
        changed = True
    if changed:
        gm.graph.lint()
        gm.recompile()
    return gm


def _constant(gm: torch.fx.GraphModule, node: torch.fx.Node) -> torch.Tensor:
    """The tensor a ``get_attr`` node reads."""
    return functools.reduce(getattr, node.target.split("."), gm)


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
    Where the static compile itself fails (an Inductor lowering error: squeezenet at 32 px in torch 2.14) and
    the uncompiled converted graph runs on the same input, that graph serves every call from then on, with a
    warning and ``fallback`` saying why (a bad input fails in the uncompiled graph too, and raises its error).
    """

    def __init__(self, converted: nn.Module):
        super().__init__()
        self.converted = converted
        self.static = torch.compile(converted, dynamic=False)
        self.static_sizes: list[int] = []
        # the dynamic program (compiled on a private copy of the graph), kept out of the module tree (no
        # state_dict duplicates); "state": "untried" | "ok" | "failed"
        self._dynamic: dict[str, Any] = {"state": "untried", "program": None}
        self.fallback = ""  # why the uncompiled int8 graph runs instead of the compiled one ("" while compiled)
        self.inputs: list[tuple[tuple[int, ...], torch.dtype]] | None = None  # (shape, dtype) built for, dim 0 free

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        check_program_inputs("pt2e", self.inputs, list(tensors_in((args, kwargs))), (args, kwargs))
        if self.fallback:
            return _uncompiled_call(self.converted, args, kwargs)
        size = _batch_size(args, kwargs)
        state = self._dynamic["state"]
        if size is None or size in self.static_sizes or len(self.static_sizes) < STATIC_BATCH_SIZES \
                or state == "failed":
            if size is not None and size not in self.static_sizes:
                self.static_sizes.append(size)
            return self._static(args, kwargs)
        if state == "untried":
            return self._first_dynamic(args, kwargs)
        try:
            return _dynamic_call(self._dynamic["program"], args, kwargs)
        except KeyboardInterrupt:
            raise
        except Exception:  # noqa: BLE001 - a batch range whose dynamic lowering fails: static from now on
            out = self._static(args, kwargs)  # a bad input raises here and changes nothing
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
            out = self._static(args, kwargs)  # a bad input raises here and changes nothing
            self._drop_dynamic()
            return out
        self._dynamic.update(state="ok", program=program)
        return out

    def _static(self, args: tuple, kwargs: dict) -> Any:
        """The static compiled program; where it fails but the uncompiled graph runs, that graph from now on."""
        try:
            return _static_call(self.static, args, kwargs)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - a compile/lowering failure, or a bad input (re-raised below)
            out = _uncompiled_call(self.converted, args, kwargs)  # a bad input raises its own error here
            reason = describe_exception(exc)[:300]
            self.fallback = (f"torch.compile could not compile the int8 graph ({reason}); the uncompiled int8 "
                             "graph runs instead: the same int8 arithmetic, without Inductor's fused kernels "
                             "(slower).")
            self._drop_dynamic()
            warnings.warn(f"nbopt: {self.fallback}", stacklevel=2)
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


def _uncompiled_call(program: Any, args: tuple, kwargs: dict) -> Any:
    with torch.no_grad():
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
    prepared = capture_for_pt2e(model, example, prepare=lambda g: prepare_pt2e(shared_conv_bn_safe(g), quantizer))
    run_batches(prepared, calib if calib is not None else example, progress=progress, desc="calibrating (pt2e)")
    converted = convert_pt2e(prepared)
    buf = io.BytesIO()
    torch.save(converted.state_dict(), buf)
    dense = tensor_bytes(converted.state_dict().values())
    compiled = CompiledInt8(converted)
    compiled.inputs = [(tuple(t.shape), t.dtype) for t in tensors_in(example)]
    program = for_cpu(Int8Program("pt2e", compiled, dense, buf.getbuffer().nbytes), settings)
    with warnings.catch_warnings():  # compile once on the example: a lowering failure becomes a note here
        warnings.simplefilter("ignore")
        call(compiled, example)
    if compiled.fallback:
        program.notes.append(compiled.fallback)
    return program
