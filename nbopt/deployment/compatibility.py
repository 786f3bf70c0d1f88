"""Which operators of a model each deployment target supports, the module using them, and what to use instead."""
from __future__ import annotations

from typing import Any, Iterable

import pandas as pd
import torch
from torch import nn

from ..errors import NboptError, require
from ..graph import CACHE_NOTE, cache_configs, capture, module_of, op_name
from ..inputs import check_device, check_module, check_not_meta

TARGETS = ("onnx", "executorch", "torchscript")
_GLUE = ("getitem", "_to_dim_order_copy", "executorch_call_delegate", "alloc", "sym_size")

# operator family -> replacement that the targets accelerate
SUGGESTIONS = {
    "hardswish": "nn.ReLU6 (Hardtanh(0, 6)); fine-tune briefly after the swap",
    "hardsigmoid": "ReLU6(x + 3) / 6 or nn.Sigmoid",
    "group_norm": "an InstanceNorm-like rewrite (GroupNorm(C, C) == InstanceNorm2d(C, affine=True)) or "
                  "BatchNorm2d, which nbopt.fuse folds into the preceding conv",
    "adaptive_avg_pool2d": "fixed pooling at the known input size: nn.AvgPool2d(kernel_size=stride=in // out); "
                           "output 1x1 -> x.mean((2, 3), keepdim=True)",
    "adaptive_max_pool2d": "fixed nn.MaxPool2d(kernel_size=stride=in // out) at the known input size",
    "gelu": "nn.GELU(approximate='tanh') or nn.ReLU",
    "silu": "x * torch.sigmoid(x) or nn.ReLU6",
    "upsample_nearest2d": "nn.Upsample with a fixed scale_factor (integer) or a transposed conv",
}


def check_targets(targets: Iterable[str] | str) -> tuple[str, ...]:
    """Normalised target names, or an error listing the valid ones."""
    names = (targets,) if isinstance(targets, str) else tuple(targets)
    bad = [t for t in names if str(t).lower() not in TARGETS]
    if bad or not names:
        raise NboptError(f"unknown deployment target(s) {bad or names!r}; valid targets: {', '.join(TARGETS)}.")
    return tuple(str(t).lower() for t in names)


def family(name: str) -> str:
    """``aten._adaptive_avg_pool2d.default`` -> ``adaptive_avg_pool2d``."""
    parts = name.split(".")
    base = parts[1] if len(parts) > 1 and parts[0] in ("aten", "quantized_decomposed", "torchao") else parts[0]
    base = base.lstrip("_")
    return base[len("native_"):] if base.startswith("native_") else base


def graph_ops(program: torch.export.ExportedProgram) -> pd.DataFrame:
    """One row per (operator, module) with its count."""
    rows = []
    for node in program.graph.nodes:
        if node.op == "call_function" and not any(g in str(node.target) for g in _GLUE):
            name, cls = module_of(node)
            rows.append({"operator": op_name(node.target), "module": name, "module_type": cls})
    df = pd.DataFrame(rows, columns=["operator", "module", "module_type"])
    return df.groupby(["operator", "module", "module_type"], sort=False).size().rename("count").reset_index()


def onnx_support(ops: pd.Series) -> pd.Series:
    """'yes (opset N)' when torchlib translates the op, 'decomposed' when it lowers to translated ops, else 'no'."""
    require("onnxscript", extra="deploy", purpose="the onnx target")
    from torch.onnx._internal.exporter._registration import ONNXRegistry

    registry = ONNXRegistry.from_torchlib()
    decomps = torch.export.default_decompositions()
    lookup = {}
    for name in ops.unique():
        op = _resolve(_functional(name))
        if op is not None and registry.is_registered(op):
            lookup[name] = f"yes (opset {registry.opset_version})"
        elif op is not None and (op in decomps or _composite(op)):
            lookup[name] = "decomposed"
        else:
            lookup[name] = "no"
    return ops.map(lookup)


def _functional(name: str) -> str:
    """``aten.relu_.default`` -> ``aten.relu.default``: exporters functionalize in-place ops first."""
    parts = name.split(".")
    if len(parts) > 1 and parts[1].endswith("_") and not parts[1].startswith("_"):
        parts[1] = parts[1][:-1]
    return ".".join(parts)


def _composite(op: Any) -> bool:
    """True when the op is defined in terms of other ATen ops (decomposed before translation)."""
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CompositeImplicitAutograd")
    except (AttributeError, RuntimeError):
        return False


def _resolve(name: str) -> Any:
    """The OpOverload object for ``aten.x.overload`` (None if unknown)."""
    parts = name.split(".")
    try:
        packet = getattr(getattr(torch.ops, parts[0]), parts[1])
        return getattr(packet, parts[2] if len(parts) > 2 else "default")
    except (AttributeError, IndexError, RuntimeError):
        return None


def executorch_support(program: torch.export.ExportedProgram) -> dict[str, str]:
    """Module -> 'xnnpack' when all its ops go to the XNNPACK delegate, else 'portable (ops...)'."""
    from .export import lower_executorch

    edge = lower_executorch(program, None).exported_program()
    delegated: dict[str, set[str]] = {}
    portable: dict[str, set[str]] = {}
    for node in edge.graph.nodes:
        if node.op == "get_attr" and hasattr(getattr(edge.graph_module, str(node.target)), "original_module"):
            inner = getattr(edge.graph_module, str(node.target)).original_module
            for n in inner.graph.nodes:
                if n.op == "call_function":
                    delegated.setdefault(module_of(n)[0], set()).add(family(op_name(n.target)))
        elif node.op == "call_function" and not any(g in str(node.target) for g in _GLUE):
            portable.setdefault(module_of(node)[0], set()).add(family(op_name(node.target)))
    out = {m: "xnnpack" for m in delegated}
    out.update({m: f"portable ({', '.join(sorted(ops))})" for m, ops in portable.items()})
    return out


def _executorch_column(df: pd.DataFrame, program: torch.export.ExportedProgram) -> pd.Series:
    try:
        import executorch  # noqa: F401
    except ImportError:
        return pd.Series(["unknown (pip install nbopt[deploy])"] * len(df), index=df.index)
    by_module = executorch_support(program)
    return df["module"].map(lambda m: by_module.get(m, "xnnpack"))


def _suggest(row: pd.Series, targets: tuple[str, ...]) -> str:
    ok = all(str(row[t]).startswith(("yes", "xnnpack", "decomposed")) for t in targets)
    if ok:
        return ""
    fam = family(row["operator"])
    return SUGGESTIONS.get(fam, "keep (runs outside the accelerated path) or replace with a supported op")


def compatibility(model: nn.Module, example_inputs: Any,
                  targets: Iterable[str] | str = ("onnx", "executorch")) -> pd.DataFrame:
    """Per operator and module: support on each target and a suggested replacement where it is missing.

    Operators come from ``torch.export`` of the model on ``example_inputs`` (ATen level, with the module
    that called them). ``onnx``: translated by the torch.onnx (torchlib) registry directly ("yes (opset N)")
    or through a decomposition ("decomposed"). ``executorch``: the model is lowered with the XNNPACK
    partitioner; "xnnpack" means delegated, "portable (...)" lists ops left to ExecuTorch's slower portable
    kernels. ``torchscript`` runs every ATen op. A Hugging Face model is captured with ``use_cache=False`` (on a
    copy; a KV cache cannot be a graph output), said in ``df.attrs["notes"]``.
    """
    names = check_targets(targets)
    check_module(model)
    check_not_meta(model, "compatibility")
    check_device(model, example_inputs)
    program = capture(model, example_inputs)
    df = graph_ops(program)
    for target in names:
        if target == "onnx":
            df["onnx"] = onnx_support(df["operator"])
        elif target == "executorch":
            df["executorch"] = _executorch_column(df, program)
        else:
            df["torchscript"] = "yes"
    df["suggestion"] = df.apply(_suggest, axis=1, targets=names) if len(df) else pd.Series(dtype=str)
    df.attrs["notes"] = [CACHE_NOTE.format(what="the captured graph")] if cache_configs(model) else []
    return df
