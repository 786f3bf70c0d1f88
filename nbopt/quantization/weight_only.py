"""Real weight-only int8/int4 linears for CPU decoding, and torchao's ``quantize_`` configs, on a private copy.

Decoding one token reads every weight once, so on a CPU it is bound by the bytes of weights read: int8 weights
read 4x fewer bytes than fp32, int4 8x. The kernels are PyTorch's own, the ones torchao's CPU paths call:

* ``kernel="aten"`` (default): int8 -> ``aten._weight_int8pack_mm`` (per-output-channel symmetric int8, bf16
  activations); int4 -> ``aten._weight_int4pack_mm_for_cpu`` (the tinygemm layout of torchao's
  ``Int4WeightOnlyQuantizer``; group-wise asymmetric 4-bit, bf16 activations). Both run in eager mode; on an
  AVX2 CPU they are compute-bound (~5 GB/s of weights), not bound by the bytes they read.
* ``kernel="onnxruntime"``: onnxruntime's ``MatMulNBits`` contrib op (MLAS kernels), one small session per
  linear, fp32 activations in and out. With ``accuracy_level=4`` it rounds each block of activations to int8 and
  multiplies in integers, which on an AVX2 CPU without VNNI measured 2.6x (int8) and 4x (int4 g128) less CPU time
  than fp32 over the 84 linears of a 200M Llama at batch 1 (1 thread), against 1.5x and 1.8x for the aten kernels
  (measured in the same way). The weights are the same codes as the aten kernels' (RTN or GPTQ).
* ``kernel="auto"``: times both kernels on one layer of each weight shape (batch 1, interleaved) and keeps the
  faster for the whole model; the numbers are in ``notes``.
* ``kernel="torchao"``: ``torchao.quantization.quantize_`` with ``Int8WeightOnlyConfig`` (an ``Int8Tensor``
  weight subclass); measured here it dequantizes on the CPU and is slower than fp32, so it is the reference,
  not the fast path. torchao 0.18's ``Int4WeightOnlyConfig`` needs the ``mslk`` (CUDA) package and does not run
  on a CPU. :func:`dynamic_int8` applies ``Int8DynamicActivationInt8WeightConfig``.

The codes may come from round-to-nearest (``method="rtn"``) or from GPTQ (``method="gptq"``, calibration data
needed, :mod:`nbopt.quantization.gptq`).
"""
from __future__ import annotations

import functools
import itertools
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import InputError, NboptError, require
from ..inputs import check_module
from ..layers import is_linear_like, linear_weight_view, set_submodule
from ..model_state import size_bytes, working_copy
from .observers import QParams, groupwise_qparams, quantize_groupwise

KERNELS = ("aten", "onnxruntime", "auto", "torchao")
METHODS = ("rtn", "gptq")
WEIGHT_BITS = (4, 8)
_INNER_K_TILES = 8
ORT_ACCURACY_LEVEL = 4  # MatMulNBits: int8 activations per block, integer products (MLAS CompInt8)


def _bias(layer: nn.Module) -> torch.Tensor | None:
    b = getattr(layer, "bias", None)
    return None if b is None else b.detach().float().clone()


class Int8WeightOnlyLinear(nn.Module):
    """``y = x @ (q * scale).T + b`` with int8 ``q`` (out, in) and one bf16 scale per output channel."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.register_buffer("weight", q.to(torch.int8).contiguous())
        self.register_buffer("scales", scale.reshape(-1).to(torch.bfloat16).contiguous())
        self.register_buffer("bias", bias)

    @classmethod
    def from_weight(cls, w: torch.Tensor, bias: torch.Tensor | None) -> "Int8WeightOnlyLinear":
        """Round-to-nearest symmetric per-channel int8 of a (out, in) float weight."""
        scale = (w.detach().float().abs().amax(1) / 127).clamp_min(torch.finfo(torch.float32).eps)
        q = torch.clamp(torch.round(w.detach().float() / scale[:, None]), -128, 127)
        return cls(q, scale, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, self.in_features).to(torch.bfloat16),
                                               self.weight, self.scales)
        y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


class Int4WeightOnlyLinear(nn.Module):
    """Group-wise 4-bit weights packed two per byte in the tinygemm CPU layout (bf16 scales and zeros).

    The output dimension is padded to a multiple of 16 (the kernel's tile) with zero rows and sliced back.
    """

    def __init__(self, q: torch.Tensor, qp: QParams, bias: torch.Tensor | None) -> None:
        super().__init__()
        n, k = q.shape
        self.out_features, self.in_features, self.group_size = n, k, int(qp.group_size)
        # tinygemm dequantizes (u - 8) * scale + zero with u in [0, 15]; map nbopt's (q - zp) * scale onto it
        u = q - qp.qmin if qp.symmetric else q
        zero = (8 - (qp.zero_point.float() - qp.qmin)) * qp.scale if qp.symmetric else \
            (8 - qp.zero_point.float()) * qp.scale
        pad = -n % 16
        u = torch.cat([u, torch.full((pad, k), 8, dtype=u.dtype)]) if pad else u
        scale = torch.cat([qp.scale, torch.ones(pad, qp.scale.shape[1])]) if pad else qp.scale
        zero = torch.cat([zero, torch.zeros(pad, zero.shape[1])]) if pad else zero
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(u.to(torch.int32).contiguous(), _INNER_K_TILES)
        self.register_buffer("weight", packed)
        self.register_buffer("scales_and_zeros",
                             torch.stack([scale, zero], -1).transpose(0, 1).contiguous().to(torch.bfloat16))
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.reshape(-1, self.in_features).to(torch.bfloat16),
                                                       self.weight, self.group_size, self.scales_and_zeros)
        y = y[:, : self.out_features].to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, int4 "
                f"group_size={self.group_size}")


_LAYERS: "weakref.WeakValueDictionary[int, MatMulNBitsLinear]" = weakref.WeakValueDictionary()
_KEYS = itertools.count()


@torch.library.custom_op("nbopt::matmul_nbits", mutates_args=())
def _matmul_nbits(x: torch.Tensor, key: int, out_features: int) -> torch.Tensor:
    """The onnxruntime call of layer ``key`` as one opaque op, so ``torch.compile`` keeps it whole."""
    return _LAYERS[key].matmul(x)


@_matmul_nbits.register_fake
def _(x: torch.Tensor, key: int, out_features: int) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], out_features))


@torch.library.custom_op("nbopt::matmul_nbits_packed", mutates_args=())
def matmul_nbits_packed(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor,
                        in_features: int, out_features: int, bits: int, block_size: int,
                        accuracy_level: int) -> torch.Tensor:
    """``x @ W.T`` with ``W`` given in ``MatMulNBits``' packed layout (the form a layer takes in an exported
    graph, where the ONNX exporter writes it as the ``com.microsoft::MatMulNBits`` node). Eager: dequantized
    float weights (a reference, not a fast path)."""
    w = unpack_nbits(weight, scales, zero_points, in_features, bits, block_size)
    return x @ w.T.to(x.dtype)


@matmul_nbits_packed.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor, in_features: int,
      out_features: int, bits: int, block_size: int, accuracy_level: int) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], out_features))


def unpack_nbits(weight: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor, in_features: int,
                 bits: int, block_size: int) -> torch.Tensor:
    """Float (out, in) weights of a ``MatMulNBits`` layout: ``(u - zero) * scale`` per block of inputs."""
    n, blocks = scales.shape
    u, z = weight.to(torch.int16), zero_points.to(torch.int16)
    if bits == 4:
        u = torch.stack([u & 15, u >> 4], -1).reshape(n, blocks, block_size)
        z = torch.stack([z & 15, z >> 4], -1).reshape(n, -1)[:, :blocks]
    w = (u.float() - z.float()[..., None]) * scales.float()[..., None]
    return w.reshape(n, blocks * block_size)[:, :in_features]


def _register_matmul_nbits_schema(onnx: Any) -> None:
    """Tell onnx (and so onnxscript) the signature of onnxruntime's contrib op, which onnx itself lacks."""
    defs = onnx.defs
    if defs.has("MatMulNBits", "com.microsoft"):
        return
    param, attr = defs.OpSchema.FormalParameter, defs.OpSchema.Attribute
    kind = defs.OpSchema.AttrType.INT
    schema = defs.OpSchema(
        "MatMulNBits", "com.microsoft", 1, doc="onnxruntime contrib op: y = x @ dequantize(B).T",
        inputs=[param("A", "T1"), param("B", "T2"), param("scales", "T1"), param("zero_points", "T3")],
        outputs=[param("Y", "T1")],
        type_constraints=[("T1", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "activations"),
                          ("T2", ["tensor(uint8)", "tensor(int32)"], "packed weights"),
                          ("T3", ["tensor(uint8)", "tensor(int32)", "tensor(float)", "tensor(float16)"], "zeros")],
        attributes=[attr(n, kind, n) for n in ("K", "N", "bits", "block_size")] +
                   [attr("accuracy_level", onnx.helper.make_attribute("accuracy_level", 0), "compute precision")])
    defs.register_schema(schema)


@functools.cache
def onnx_translations() -> dict[Any, Callable[..., Any]]:
    """torch.onnx's ``custom_translation_table`` for these layers: :func:`matmul_nbits_packed` becomes one
    ``com.microsoft::MatMulNBits`` node (built on first use)."""
    onnx = require("onnx", extra="int8", purpose="exporting MatMulNBits layers to ONNX")
    onnxscript = require("onnxscript", extra="int8", purpose="exporting MatMulNBits layers to ONNX")
    _register_matmul_nbits_schema(onnx)
    msft = onnxscript.values.Opset("com.microsoft", 1)

    def matmul_nbits(x: Any, weight: Any, scales: Any, zero_points: Any, in_features: int, out_features: int,
                     bits: int, block_size: int, accuracy_level: int) -> Any:
        return msft.MatMulNBits(x, weight, scales, zero_points, K=in_features, N=out_features, bits=bits,
                                block_size=block_size, accuracy_level=accuracy_level)

    return {torch.ops.nbopt.matmul_nbits_packed.default: matmul_nbits}


class MatMulNBitsLinear(nn.Module):
    """int8 or group-wise int4 weights in onnxruntime's ``MatMulNBits`` layout, run by an onnxruntime session.

    ``weight`` is uint8 (N, blocks, bytes per block): unsigned codes ``u`` (int8 codes + 128; int4 codes two per
    byte, low nibble first) that dequantize to ``(u - zero) * scale`` per block of ``block_size`` inputs.
    Per-channel int8 repeats each row's scale over its blocks. The session is built on first use (and rebuilt
    when torch's thread count changes); it is not copied with the module. ``accuracy_level=4`` rounds each
    block of activations to int8 inside the kernel. Under ``torch.compile`` the session call is the custom op
    ``nbopt::matmul_nbits`` (no graph break), so a compiled decode step fuses everything around it.
    """

    def __init__(self, u: torch.Tensor, zero: torch.Tensor, scale: torch.Tensor, bits: int, block_size: int,
                 bias: torch.Tensor | None, *, in_features: int, accuracy_level: int = ORT_ACCURACY_LEVEL) -> None:
        super().__init__()
        n = u.shape[0]
        self.out_features, self.in_features, self.bits, self.block_size = n, in_features, bits, block_size
        self.accuracy_level = accuracy_level
        blocks = zero.shape[1]
        pad = blocks * block_size - u.shape[1]
        if pad:  # pad the last block with its zero code: the padded inputs contribute exactly 0
            u = torch.cat([u, zero[:, -1:].expand(n, pad).to(u.dtype)], 1)
        u = u.to(torch.uint8).reshape(n, blocks, block_size)
        zero = zero.to(torch.uint8)
        if bits == 4:
            u = u[..., 0::2] | (u[..., 1::2] << 4)
            zero = torch.cat([zero, torch.zeros(n, 1, dtype=torch.uint8)], 1) if blocks % 2 else zero
            zero = zero[:, 0::2] | (zero[:, 1::2] << 4)
        self.register_buffer("weight", u.contiguous())
        self.register_buffer("scales", scale.float().contiguous())
        self.register_buffer("zero_points", zero.contiguous())
        self.register_buffer("bias", bias)
        self._session: Any = None
        self._threads = 0
        self._register()

    def _register(self) -> None:
        self._key = next(_KEYS)
        _LAYERS[self._key] = self

    @classmethod
    def from_codes(cls, q: torch.Tensor, qp: QParams, bias: torch.Tensor | None) -> "MatMulNBitsLinear":
        """The kernel for codes ``q`` (out, in) with parameters ``qp`` (what :func:`codes` / GPTQ return)."""
        n, k = q.shape
        if qp.bits == 8:
            block = next((b for b in (128, 64, 32, 16) if k % b == 0), 32)
            blocks = -(-k // block)
            return cls(q + 128, torch.full((n, blocks), 128), qp.scale.reshape(n, 1).expand(n, blocks), 8, block,
                       bias, in_features=k)
        shift = -qp.qmin if qp.symmetric else 0  # symmetric codes [-8, 7] -> [0, 15]
        return cls(q + shift, qp.zero_point + shift, qp.scale, 4, int(qp.group_size), bias, in_features=k)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_session"], state["_threads"] = None, 0
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._register()  # a copy is a layer of its own

    def _onnx(self) -> bytes:
        helper = require("onnx.helper", extra="int8", purpose="onnxruntime MatMulNBits kernels")
        numpy_helper = require("onnx.numpy_helper", extra="int8", purpose="onnxruntime MatMulNBits kernels")
        from onnx import TensorProto
        k, n = self.in_features, self.out_features
        node = helper.make_node("MatMulNBits", ["x", "B", "scales", "zeros"], ["y"], domain="com.microsoft", K=k,
                                N=n, bits=self.bits, block_size=self.block_size, accuracy_level=self.accuracy_level)
        inits = [numpy_helper.from_array(t.numpy(), name) for name, t in
                 (("B", self.weight), ("scales", self.scales), ("zeros", self.zero_points))]
        graph = helper.make_graph([node], "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                        helper.make_opsetid("com.microsoft", 1)])
        return model.SerializeToString()

    def session(self) -> Any:
        """The onnxruntime session (built now if needed, with torch's current thread count)."""
        threads = torch.get_num_threads()
        if self._session is None or self._threads != threads:
            from ..graph import ort_session
            self._session = ort_session(self._onnx(), threads=threads, extra="int8",
                                        purpose="onnxruntime MatMulNBits kernels")
            self._threads = threads
        return self._session

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T`` for float32 ``x`` (..., in_features), by the onnxruntime session."""
        a = np.ascontiguousarray(x.detach().reshape(-1, self.in_features).numpy())
        y = self.session().run(None, {"x": a})[0]
        return torch.from_numpy(y).reshape(*x.shape[:-1], self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x if x.dtype == torch.float32 else x.float()
        if torch.compiler.is_exporting():  # an exported graph holds the packed weights: ONNX MatMulNBits
            y = matmul_nbits_packed(a, self.weight, self.scales, self.zero_points, self.in_features,
                                    self.out_features, self.bits, self.block_size, self.accuracy_level)
        elif torch.compiler.is_compiling():
            y = torch.ops.nbopt.matmul_nbits(a, self._key, self.out_features)
        else:
            y = self.matmul(a)
        y = y.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        what = "int8 per-channel" if self.bits == 8 else f"int4 group_size={self.block_size}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, {what}, onnxruntime "
                f"MatMulNBits accuracy_level={self.accuracy_level}")


@dataclass
class WeightOnlyResult:
    """A weight-only quantized copy of a model and what changed.

    ``layers``: quantized layer names; ``skipped``: name -> reason; ``weight_dtypes``: name -> stored dtype of
    the weight (``int8``, or ``uint8`` holding two int4 codes per byte); ``fp32_bytes``/``size_bytes``: the
    in-memory size of parameters and buffers before and after.
    """

    model: nn.Module
    bits: int
    group_size: int | None
    kernel: str
    method: str
    layers: list[str]
    skipped: dict[str, str]
    weight_dtypes: dict[str, str]
    fp32_bytes: int
    size_bytes: int
    notes: list[str] = field(default_factory=list)

    def decode_step(self) -> Callable[..., Any]:
        """``torch.compile`` of the program's forward, for decode steps with a fixed-shape KV cache.

        Call it with a transformers ``StaticCache`` (``cache_implementation="static"``) and ``cache_position``, so
        every step has the same shapes and compiles once; run the prefill with ``self.model``. It removes
        transformers' per-module Python work between the kernels (measured: a third of the int8 program's
        CPU time per token on a 200M Llama, same greedy tokens); onnxruntime layers stay single ops
        (``nbopt::matmul_nbits``). The first call compiles: minutes for a 200M model on 2 cores.
        """
        return torch.compile(self.model.forward, dynamic=False)

    def decoder(self, path: Any = None, *, threads: int | None = None) -> Any:
        """The program's generation as one onnxruntime session (:func:`nbopt.deployment.export_decoder`): the
        whole decode step, KV cache in and out, these layers as ``MatMulNBits`` nodes. Needs
        ``kernel="onnxruntime"`` (the aten kernels have no ONNX form). Measured on a 200M Llama (AVX2, 1
        thread): int8 3.1x and int4 g128 4.3x the decode tokens/s of fp32 eager (benchmarks/llm_decode.py)."""
        if self.kernel != "onnxruntime":
            raise InputError(f"decoder() exports MatMulNBits layers; this program uses kernel={self.kernel!r}. "
                             "Quantize with kernel='onnxruntime' (quantize_weights(..., kernel='onnxruntime') or "
                             "quantize(mode='weight_only', backend='onnxruntime')), then call decoder().")
        from ..deployment.decoder import export_decoder
        return export_decoder(self.model, path, threads=threads)

    @property
    def compression(self) -> float:
        """fp32 size / quantized size (whole model: embeddings and norms included)."""
        return self.fp32_bytes / max(1, self.size_bytes)

    def __repr__(self) -> str:
        g = f", group_size={self.group_size}" if self.group_size else ""
        return (f"WeightOnlyResult(int{self.bits}{g}, kernel={self.kernel!r}, method={self.method!r}, "
                f"{len(self.layers)} layers, {self.fp32_bytes / 2**20:.2f} MiB -> {self.size_bytes / 2**20:.2f} MiB)")


def _check(bits: int, group_size: int | None, kernel: str, method: str) -> int | None:
    if bits not in WEIGHT_BITS:
        raise InputError(f"bits={bits!r}: weight-only kernels exist for 4 and 8 bits; use bits=4 or bits=8 "
                         f"(other widths: quantize(mode='simulate', weight_bits=...)).")
    if kernel not in KERNELS:
        raise InputError(f"kernel={kernel!r} is not one of {KERNELS}; pick one of those.")
    if method not in METHODS:
        raise InputError(f"method={method!r} is not one of {METHODS}; pick one of those.")
    if bits == 8 and group_size is not None:
        raise InputError("int8 weight-only kernels use one scale per output channel: pass group_size=None with "
                         "bits=8 (group-wise 8-bit: quantize(mode='simulate', granularity='per_group')).")
    if bits == 4:
        group_size = 128 if group_size is None else group_size
        if group_size not in (32, 64, 128, 256):
            raise InputError(f"group_size={group_size!r}: the int4 CPU kernel takes 32, 64, 128 or 256.")
        if kernel == "torchao":
            raise NboptError("torchao 0.18's Int4WeightOnlyConfig needs the CUDA-only mslk package; use "
                             "kernel='aten' (the same int4 CPU kernel torchao's Int4WeightOnlyQuantizer calls).")
    if method == "gptq" and kernel == "torchao":
        raise InputError("method='gptq' builds nbopt's own int8/int4 linears: use kernel='aten'.")
    return group_size


def _reason(name: str, layer: nn.Module, bits: int, group_size: int | None) -> str | None:
    k = linear_weight_view(layer).shape[1]
    if bits == 4 and k % group_size:
        return f"in_features {k} is not a multiple of group_size {group_size}"
    return None


def _targets(model: nn.Module, skip: tuple[str, ...]) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if is_linear_like(m) and n and not any(
        n == s or n.startswith(s + ".") for s in skip)}


def codes(w: torch.Tensor, bits: int, group_size: int | None, *, symmetric: bool | None = None
          ) -> tuple[torch.Tensor, QParams]:
    """Round-to-nearest integer codes and their parameters for a (out, in) weight (what the kernels store)."""
    if bits == 8:
        scale = (w.detach().float().abs().amax(1) / 127).clamp_min(torch.finfo(torch.float32).eps)
        q = torch.clamp(torch.round(w.detach().float() / scale[:, None]), -128, 127).to(torch.int32)
        qp = QParams(scale[:, None], torch.zeros_like(scale[:, None], dtype=torch.int32), 8, True, 0,
                     w.shape[1])
        return q, qp
    qp = groupwise_qparams(w, bits, group_size, symmetric=bool(symmetric))
    return quantize_groupwise(w, qp), qp


def kernel_linear(q: torch.Tensor, qp: QParams, bias: torch.Tensor | None, kernel: str = "aten") -> nn.Module:
    """The int8 or int4 kernel module (``kernel``: "aten" or "onnxruntime") holding codes ``q`` (out, in)."""
    if kernel == "onnxruntime":
        return MatMulNBitsLinear.from_codes(q, qp, bias)
    if qp.bits == 8:
        return Int8WeightOnlyLinear(q, qp.scale.reshape(-1), bias)
    return Int4WeightOnlyLinear(q, qp, bias)


def _has_onnxruntime() -> bool:
    try:
        require("onnxruntime", extra="int8", purpose="onnxruntime MatMulNBits kernels")
        require("onnx", extra="int8", purpose="onnxruntime MatMulNBits kernels")
    except NboptError:
        return False
    return True


def pick_kernel(layers: dict[str, nn.Module], codes_of: Callable[[str], tuple[torch.Tensor, QParams]], *,
                repeat: int = 7) -> tuple[str, dict[str, float]]:
    """The faster of the aten and onnxruntime kernels for ``layers`` at batch 1, and each one's ms per token.

    One layer of each distinct weight shape is built both ways from its codes (``codes_of(name)``) and timed
    interleaved (:func:`nbopt.timing.compare`); each median counts once per layer of that shape.
    """
    from ..timing import compare
    shapes: dict[tuple[int, int], list[str]] = {}
    for name, layer in layers.items():
        shapes.setdefault(tuple(linear_weight_view(layer).shape), []).append(name)
    totals = {"aten": 0.0, "onnxruntime": 0.0}
    for (n, k), names in shapes.items():
        q, qp = codes_of(names[0])
        mods = {kern: kernel_linear(q, qp, None, kern) for kern in totals}
        x = torch.randn(1, k)
        timings = compare({kern: (lambda m=m: m(x)) for kern, m in mods.items()}, warmup=1, repeat=repeat)
        for kern, t in timings.items():
            totals[kern] += t.median_ms * len(names)
    return min(totals, key=totals.get), totals


def quantize_weights(model: nn.Module, bits: int = 4, group_size: int | None = None, *, kernel: str = "aten",
                     method: str = "rtn", calib: Any = None, symmetric: bool | None = None,
                     skip: tuple[str, ...] = (), progress: bool = True) -> WeightOnlyResult:
    """Weight-only int8 or int4 quantization of every linear layer of a copy of ``model`` (never changed).

    Args:
        bits: 8 (per-channel symmetric) or 4 (group-wise, asymmetric unless ``symmetric=True``).
        group_size: 4-bit only: 32, 64, 128 (default) or 256 input values per scale.
        kernel: "aten" (PyTorch's int8/int4 CPU kernels, bf16 activations), "onnxruntime" (``MatMulNBits``,
            activations rounded to int8 per block inside the kernel), "auto" (times both on one layer of each
            weight shape at batch 1 and keeps the faster; aten when onnxruntime is not installed) or "torchao"
            (``quantize_`` with ``Int8WeightOnlyConfig``; 8 bits).
        method: "rtn" (round to nearest) or "gptq" (error-compensating, needs ``calib``: batches of input ids).
        skip: layer names (and everything below them) to keep in float, e.g. ``("lm_head",)``.
    """
    check_module(model)
    group_size = _check(bits, group_size, kernel, method)
    if method == "gptq" and calib is None:
        raise InputError("method='gptq' needs calib: a few batches of inputs (e.g. nbopt.demo.lm.calibration_data()).")
    fp32 = size_bytes(model)
    qmodel = working_copy(model).eval()
    if kernel == "torchao":
        return _torchao(qmodel, fp32, require("torchao.quantization", extra="int8",
                                              purpose="torchao weight-only quantization").Int8WeightOnlyConfig(),
                        bits=8, kernel="torchao", method="rtn", skip=skip)
    targets = _targets(qmodel, skip)
    skipped = {n: r for n, m in targets.items() if (r := _reason(n, m, bits, group_size))}
    todo = {n: m for n, m in targets.items() if n not in skipped}
    if method == "gptq":
        from .gptq import gptq_codes
        found = gptq_codes(qmodel, todo, calib, bits=bits, group_size=group_size if bits == 4 else None,
                           symmetric=bool(symmetric) if bits == 4 else True, progress=progress)
    else:
        found = {}

    def codes_of(name: str) -> tuple[torch.Tensor, QParams]:  # RTN codes are made one layer at a time
        if name not in found:
            found[name] = codes(linear_weight_view(todo[name]).detach().float(), bits, group_size,
                                symmetric=symmetric)
        return found[name]

    notes = []
    if kernel == "auto":
        kernel, notes = _auto_kernel(todo, codes_of)
    elif kernel == "onnxruntime":
        require("onnxruntime", extra="int8", purpose="onnxruntime MatMulNBits kernels")
        require("onnx", extra="int8", purpose="onnxruntime MatMulNBits kernels")
    dtypes = {}
    for name, layer in tqdm(todo.items(), desc=f"int{bits} weights", disable=not progress, leave=False):
        q, qp = codes_of(name)
        found.pop(name)
        module = kernel_linear(q, qp, _bias(layer), kernel)
        if kernel == "onnxruntime":
            module.session()  # built now: a missing kernel fails here, not in the first forward
        set_submodule(qmodel, name, module)
        dtypes[name] = _stored(bits, kernel)
    notes.append(f"activations run in bfloat16 inside the int{bits} kernels" if kernel == "aten" else
                 f"onnxruntime MatMulNBits (accuracy_level={ORT_ACCURACY_LEVEL}): fp32 activations, rounded to int8 "
                 f"per block of inputs inside the int{bits} kernels")
    if skipped:
        notes.append(f"{len(skipped)} linear layers kept in float: " +
                     "; ".join(f"{n}: {r}" for n, r in list(skipped.items())[:4]))
    return WeightOnlyResult(qmodel, bits, group_size if bits == 4 else None, kernel, method, list(todo), skipped,
                            dtypes, fp32, size_bytes(qmodel), notes)


def _stored(bits: int, kernel: str) -> str:
    if kernel == "onnxruntime":
        return "uint8 (int8 codes + 128)" if bits == 8 else "uint8 (two int4 codes per byte)"
    return "int8" if bits == 8 else "uint8 (two int4 codes per byte)"


def _auto_kernel(todo: dict[str, nn.Module], codes_of: Callable[[str], tuple[torch.Tensor, QParams]]
                 ) -> tuple[str, list[str]]:
    """kernel="auto": onnxruntime or aten, whichever :func:`pick_kernel` times faster here, and why."""
    if not todo:
        return "aten", []
    if not _has_onnxruntime():
        return "aten", ["kernel='auto' kept the aten kernels: onnxruntime is not installed (pip install "
                        "\"nbopt[int8]\" adds its MatMulNBits kernels)"]
    from ..timing import machine_load
    kernel, totals = pick_kernel(todo, codes_of)
    load = machine_load()
    return kernel, [f"kernel='auto' picked {kernel}: the linears at batch 1 took aten {totals['aten']:.1f} ms vs "
                    f"onnxruntime {totals['onnxruntime']:.1f} ms per token (one layer per weight shape timed "
                    f"interleaved here, load {load.load_1min:.1f} on {load.cores} cores)"]


def dynamic_int8(model: nn.Module, *, skip: tuple[str, ...] = ()) -> WeightOnlyResult:
    """torchao's ``Int8DynamicActivationInt8WeightConfig`` (int8 weights, activations quantized per token)."""
    check_module(model)
    ao = require("torchao.quantization", extra="int8", purpose="int8 dynamic-activation quantization")
    fp32 = size_bytes(model)
    return _torchao(working_copy(model).eval(), fp32, ao.Int8DynamicActivationInt8WeightConfig(), bits=8,
                    kernel="torchao", method="dynamic", skip=skip)


def _torchao(qmodel: nn.Module, fp32: int, config: Any, *, bits: int, kernel: str, method: str,
             skip: tuple[str, ...]) -> WeightOnlyResult:
    ao = require("torchao.quantization", extra="int8", purpose="torchao quantization")
    names = set(_targets(qmodel, skip))
    ao.quantize_(qmodel, config, filter_fn=lambda m, fqn: fqn in names and isinstance(m, nn.Linear))
    layers = [n for n in names if type(qmodel.get_submodule(n).weight).__name__ not in ("Parameter", "Tensor")]
    dtypes = {n: f"{type(qmodel.get_submodule(n).weight).__name__}"
                 f"[{_inner_dtype(qmodel.get_submodule(n).weight)}]" for n in layers}
    notes = [f"torchao {type(config).__name__}: a tensor subclass weight; measure its speed on your CPU "
             f"(without VNNI/AMX it may run slower than fp32)"]
    return WeightOnlyResult(qmodel, bits, None, kernel, method, layers, {}, dtypes, fp32, _subclass_bytes(qmodel),
                            notes)


def _inner_dtype(w: torch.Tensor) -> str:
    qdata = getattr(w, "qdata", None)
    return str(qdata.dtype).replace("torch.", "") if isinstance(qdata, torch.Tensor) else str(w.dtype)


def _subclass_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers, counting a tensor subclass by its inner tensors."""
    total, seen = 0, set()
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        inner = getattr(t, "__tensor_flatten__", None)
        if inner is not None and type(t) not in (torch.Tensor, nn.Parameter):
            names = inner()[0]
            total += sum(getattr(t, n).numel() * getattr(t, n).element_size() for n in names)
        else:
            total += t.numel() * t.element_size()
    return total
