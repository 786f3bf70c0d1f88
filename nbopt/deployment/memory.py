"""Peak activation memory: estimated from tensor lifetimes over the captured graph, and measured."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import nn

from ..graph import capture, module_of, op_name
from ..inputs import as_args, call, check_device, check_module
from ..model_state import working_copy


@dataclass
class MemoryReport:
    """Peak activation bytes: lifetime estimate (with and without buffer reuse) beside the profiler's peak."""

    estimated_peak_bytes: int
    no_reuse_bytes: int                      # every intermediate kept alive: what an allocator without reuse needs
    measured_peak_bytes: int | None          # torch.profiler's peak of allocations during one forward
    input_bytes: int
    table: pd.DataFrame = field(repr=False)  # one row per graph step: operator, module, out_bytes, alive_bytes

    @property
    def estimate_ratio(self) -> float:
        """estimated / measured (1.0 = the estimate matches the allocator)."""
        return self.estimated_peak_bytes / self.measured_peak_bytes if self.measured_peak_bytes else float("nan")

    def __repr__(self) -> str:
        mb = lambda b: "n/a" if b is None else f"{b / 2**20:.3f} MiB"
        return (f"MemoryReport(estimated peak {mb(self.estimated_peak_bytes)}, measured peak "
                f"{mb(self.measured_peak_bytes)}, without reuse {mb(self.no_reuse_bytes)})")


def _bytes(val: Any) -> int:
    if isinstance(val, torch.Tensor):
        return val.numel() * val.element_size()
    if isinstance(val, (tuple, list)):
        return sum(_bytes(v) for v in val)
    return 0


def _is_view(node: torch.fx.Node) -> bool:
    """True when the op returns an alias of an input (view, reshape of contiguous data, getitem)."""
    if "getitem" in str(node.target):
        return True
    schema = getattr(node.target, "_schema", None)
    return bool(schema and schema.returns and schema.returns[0].alias_info is not None)


def lifetimes(graph: torch.fx.Graph) -> pd.DataFrame:
    """Per call_function node: bytes it allocates, the step it is created and the last step it is read.

    Views allocate nothing and keep their base alive until the view's own last use.
    """
    nodes = [n for n in graph.nodes if n.op == "call_function"]
    step = {n: i for i, n in enumerate(nodes)}
    base: dict[torch.fx.Node, torch.fx.Node] = {}
    rows = {}
    for n in nodes:
        src = next((a for a in n.all_input_nodes if a in step), None) if _is_view(n) else None
        base[n] = base.get(src, src) if src is not None else n
        size = 0 if base[n] is not n else _bytes(n.meta.get("val"))
        name, _ = module_of(n)
        rows[n] = {"step": step[n], "operator": op_name(n.target), "module": name, "out_bytes": size,
                   "last_use": step[n]}
    output_node = next(n for n in graph.nodes if n.op == "output")
    for n in nodes:
        last = max((step.get(u, len(nodes)) for u in n.users), default=step[n])
        if n in output_node.all_input_nodes:
            last = len(nodes)
        root = rows[base[n]]
        root["last_use"] = max(root["last_use"], last)
    return pd.DataFrame(list(rows.values()))


def alive_bytes(table: pd.DataFrame) -> pd.Series:
    """Bytes alive at each step: tensors created at or before it and read at or after it."""
    n = len(table)
    alive = [0] * (n + 1)
    for start, end, size in zip(table["step"], table["last_use"], table["out_bytes"]):
        for i in range(start, min(end, n) + 1):
            alive[i] += size
    return pd.Series(alive[:n], index=table.index)


def measured_peak(model: nn.Module, inputs: Any) -> int:
    """Peak of CPU allocations during one forward, from torch.profiler's per-op memory records."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        call(model, inputs)  # warm-up: one-time allocations (weight packing) are not activations
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            call(model, inputs)
    events = sorted(prof.events(), key=lambda e: (e.time_range.start, -e.time_range.end))
    current = peak = 0
    for e in events:
        current += e.self_cpu_memory_usage
        peak = max(peak, current)
    return int(peak)


def peak_memory(model: nn.Module, example_inputs: Any, *, measure: bool = True) -> MemoryReport:
    """Estimate peak activation memory from tensor lifetimes and (``measure=True``) measure it with torch.profiler.

    The estimate walks the ``torch.export`` graph in execution order; a tensor is alive from the op that
    creates it to the last op that reads it (model inputs and weights excluded, the output included), so
    the peak assumes an allocator that reuses freed buffers. ``no_reuse_bytes`` is the total without reuse.
    """
    check_module(model)
    check_device(model, example_inputs)
    program = capture(model, example_inputs)
    table = lifetimes(program.graph)
    table["alive_bytes"] = alive_bytes(table) if len(table) else pd.Series(dtype=int)
    measured = measured_peak(working_copy(model).eval(), example_inputs) if measure else None
    args, kwargs = as_args(example_inputs)
    return MemoryReport(int(table["alive_bytes"].max()) if len(table) else 0, int(table["out_bytes"].sum()),
                        measured, _bytes(list(args) + list(kwargs.values())), table)
