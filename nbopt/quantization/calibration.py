"""Run calibration data through a model with a progress bar, rejecting batches of the wrong shape."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import ForwardError, NboptError
from ..inputs import batch_inputs, batches, call, describe_shapes, tensors_in


EMPTY_CALIBRATION = ("the calibration data is empty; pass at least one batch with samples (e.g. a tensor of "
                     "inputs); batches of 0 samples do not count.")


def batch_samples(inputs: Any) -> int | None:
    """Samples in one batch (first dimension of its first tensor; None when it has no batch dimension)."""
    return next((t.shape[0] for t in tensors_in(inputs) if t.dim() > 0), None)


def _shapes(inputs: Any) -> list[tuple[int, ...]]:
    return [tuple(t.shape[1:]) for t in tensors_in(inputs)]


def calibration_inputs(calib: Any) -> Iterator[Any]:
    """Model inputs of every calibration batch (batches of 0 samples skipped); all share non-batch dimensions."""
    first = None
    for i, batch in enumerate(batches(calib)):
        x = batch_inputs(batch)
        if batch_samples(x) == 0:
            continue
        if first is None:
            first = (_shapes(x), describe_shapes(x))
        elif _shapes(x) != first[0]:
            raise NboptError(
                f"calibration batch {i} has shape {describe_shapes(x)} but batch 0 has {first[1]}; every "
                "batch must have the same shape apart from the batch size (resize/crop them the same way).")
        yield x


def reusable(calib: Any) -> Any:
    """``calib`` as data that can be read more than once: a one-shot iterator (a generator, ``iter(list)``,
    ``map(...)``) is read once into a list, so every batch it yields is held in memory; anything else (a tensor,
    a list, a DataLoader, which re-iterates) is returned as it is."""
    return list(calib) if isinstance(calib, Iterator) else calib


def first_input(calib: Any) -> Any:
    """The first calibration batch's inputs (the example for export and timing).

    ``calib`` must be re-iterable (see :func:`reusable`): reading the first batch of a one-shot iterator would
    take it away from calibration, so that is refused with a clear error."""
    if isinstance(calib, Iterator):
        raise NboptError(f"the calibration data is a one-shot iterator ({type(calib).__name__}), which can be read "
                         "only once but is needed several times: pass a list of batches or a DataLoader "
                         "(e.g. calib=list(batches)).")
    for x in calibration_inputs(calib):
        return x
    raise NboptError(EMPTY_CALIBRATION)


def run_batches(model: nn.Module, calib: Any, *, progress: bool = True, desc: str = "calibrating",
                limit: int | None = None) -> list[Any]:
    """Forward every calibration batch through ``model`` (no grad); returns the outputs."""
    outs = []
    with torch.no_grad():
        for i, x in enumerate(tqdm(calibration_inputs(calib), desc=desc, disable=not progress, leave=False)):
            if limit is not None and i >= limit:
                break
            try:
                outs.append(call(model, x))
            except ForwardError as exc:
                raise NboptError(f"calibration batch {i} could not run through the model: {exc}") from None
    if not outs:
        raise NboptError(EMPTY_CALIBRATION)
    return outs
