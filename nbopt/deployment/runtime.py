"""An exported file loaded in its own runtime, called like a torch module (for evaluation and timing)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..graph import OutputStructure
from ..inputs import tensors_in
from .export import FORMATS, check_format, owner_of


class RuntimeModule(nn.Module):
    """Runs an exported program (onnxruntime, torch.jit, ExecuTorch or any format in ``FORMATS``) on torch
    tensors, through its format's ``runner``.

    With ``outputs`` (``ExportResult.outputs``, or :meth:`from_export`) it returns what the model returns (a
    ``ModelOutput``, a dict, nested tuples); without, one tensor or a flat tuple.

    Programs of a format with a fixed batch size get other batch sizes in chunks of the example's size
    (the last chunk padded), so ``demo.evaluate`` and other loaders work unchanged.

    A file in a temporary folder of ``export(path=None)`` stays as long as this module exists (it holds the
    folder's owner), however long the export result lives.
    """

    def __init__(self, path: str | Path, format: str, example_inputs: Any, *, outputs: OutputStructure | None = None):
        super().__init__()
        self.path, self.format = Path(path), check_format(format)
        self.outputs = outputs  # the model's output structure (ExportResult.outputs): rebuilt on every call
        self._owner = owner_of(self.path)  # keeps nbopt's temp folder (if any) alive while this module is
        self.example = [t.clone() for t in tensors_in(example_inputs)]
        self.batch = self.example[0].shape[0] if self.example and self.example[0].dim() else None
        self._runners: dict[tuple, Any] = {}
        self._make = FORMATS[self.format].runner
        self._fixed_batch = FORMATS[self.format].fixed_batch

    def _run(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        key = tuple(tuple(t.shape) for t in tensors)
        if key not in self._runners:  # the runner binds its inputs; keep one per shape
            holder = [t.clone() for t in tensors]
            self._runners[key] = (holder, self._make(self.path, tuple(holder)))
        holder, run = self._runners[key]
        for h, t in zip(holder, tensors):
            h.copy_(t)
        out = run()
        return list(out) if isinstance(out, (list, tuple)) else [out]

    def forward(self, *args: Any) -> Any:
        tensors = list(tensors_in(args))
        n = tensors[0].shape[0] if tensors and tensors[0].dim() else None
        if self.batch is None or n == self.batch or not self._fixed_batch:
            outs = self._run(tensors)
        else:
            outs = self._chunked(tensors, n)
        outs = [torch.as_tensor(o) for o in outs]
        if self.outputs is not None:
            return self.outputs.rebuild(outs)
        return outs[0] if len(outs) == 1 else tuple(outs)

    @classmethod
    def from_export(cls, result: Any, example_inputs: Any) -> "RuntimeModule":
        """The file of ``result`` (an :class:`~nbopt.deployment.export.ExportResult`) in its runtime, returning
        what the model returned (a ``ModelOutput``, a dict, nested tuples), not the runtime's flat list."""
        return cls(result.path, result.format, example_inputs, outputs=result.outputs)

    def _chunked(self, tensors: list[torch.Tensor], n: int) -> list[torch.Tensor]:
        pieces = []
        for start in range(0, n, self.batch):
            chunk = [t[start:start + self.batch] for t in tensors]
            size = chunk[0].shape[0]
            if size < self.batch:
                chunk = [torch.cat([c, c[-1:].expand(self.batch - size, *c.shape[1:])]) for c in chunk]
            pieces.append([o[:size] for o in self._run(chunk)])
        return [torch.cat(parts) for parts in zip(*pieces)]
