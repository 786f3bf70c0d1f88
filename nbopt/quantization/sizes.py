"""Model sizes three ways: dense in memory, on disk, and deployable (packed weights + qparams)."""
from __future__ import annotations

from torch import nn

from ..layers import out_axis, weighted_layers
from ..model_state import disk_bytes, size_bytes


def deployable_bytes(folded: nn.Module, bits: dict[str, int], *, symmetric: bool = True,
                     per_channel: bool = True, group_size: int | None = None) -> int:
    """Packed ``bits``-bit weights + fp32 scales (+ zero points) + every other tensor in fp32: one scale per
    output channel (``per_channel``), per tensor, or per ``group_size`` inputs of each output row.

    ``folded`` is the BN-folded float model; fp32 copies some converted programs keep are not counted.
    """
    layers = weighted_layers(folded)
    quantized = {id(layers[n].weight) for n in bits if n in layers}
    total = sum(t.numel() * t.element_size() for t in list(folded.parameters()) + list(folded.buffers())
                if id(t) not in quantized)
    for name, b in bits.items():
        w = layers[name].weight
        rows = w.shape[out_axis(layers[name])]  # Conv1D: outputs are dim 1
        n_scales = rows * -(-(w.numel() // rows) // group_size) if group_size else (rows if per_channel else 1)
        total += -(-w.numel() * b // 8) + n_scales * (4 if symmetric else 8)
    return int(total)


def fp32_sizes(model: nn.Module) -> dict[str, int]:
    return {"dense": size_bytes(model), "disk": disk_bytes(model), "deployable": size_bytes(model)}
