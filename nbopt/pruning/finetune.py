"""Fine-tune a (pruned) model on a copy, keeping its zeros, with a progress bar; Ctrl-C keeps the work done."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..errors import NboptError, PartialResultWarning, check_on_interrupt
from ..inputs import batches, call, check_module, check_not_meta
from ..model_state import working_copy


@dataclass
class FinetuneInfo:
    """What a fine-tuning run did (attached to the returned model as ``model.finetune_info``)."""

    partial: bool
    epochs_completed: int
    steps_completed: int
    steps_planned: int | None
    last_loss: float | None


def finetune(model: nn.Module, train_data: Any, loss_fn: Callable[[Any, Any], torch.Tensor], *,
             epochs: int = 1, lr: float = 1e-3, weight_decay: float = 0.0, keep_sparsity: bool = True,
             seed: int | None = 0, progress: bool = True, on_interrupt: str = "return") -> nn.Module:
    """Train a copy of ``model`` with Adam for ``epochs`` over ``(inputs, target)`` batches; return it in eval mode.

    ``keep_sparsity`` keeps weights that are exactly zero at zero (so unstructured pruning survives).
    ``seed`` makes dropout and the data order reproducible (None: leave the global RNG alone).
    The model you pass is never modified, also when the loop is interrupted.

    Interrupting (Ctrl-C, the notebook's stop button) with ``on_interrupt="return"`` (default) keeps the
    work: once at least one optimizer step has finished, the copy trained so far is returned with a
    :class:`PartialResultWarning`, and ``tuned.finetune_info.partial`` is True with the epochs and steps
    completed (the rest of the cell then runs on; press stop again to stop it too). Interrupted before
    any step finished, or with ``on_interrupt="raise"``, the KeyboardInterrupt propagates and the copy is
    discarded. A finished run has ``finetune_info.partial == False``.
    """
    check_module(model)
    check_not_meta(model, "finetune")
    _check_args(epochs, lr, on_interrupt)
    data = batches(train_data)
    tuned = working_copy(model)
    params = [p for p in tuned.parameters() if p.requires_grad]
    if not params:
        raise NboptError("the model has no trainable parameters (requires_grad=False everywhere); unfreeze some first")
    masks = {p: p.detach() != 0 for p in params if p.dim() > 1} if keep_sparsity else {}
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    info = FinetuneInfo(False, 0, 0, _planned(data, epochs), None)
    buffers = [b for b in tuned.buffers()]
    done = [b.detach().clone() for b in buffers]  # buffers (BN statistics) as of the last finished step
    tuned.train()
    try:
        with torch.random.fork_rng(enabled=seed is not None), torch.enable_grad():
            if seed is not None:
                torch.manual_seed(seed)
            _train(tuned, data, loss_fn, opt, masks, epochs, progress, info, (buffers, done))
    except KeyboardInterrupt:
        if on_interrupt == "raise" or info.steps_completed == 0:
            raise
        _reapply(masks)  # an interrupted optimizer step may have moved pruned weights
        _copy(buffers, done)  # the interrupted step's forward already updated BatchNorm statistics
        info.partial = True
        warnings.warn(f"fine-tuning was interrupted after {info.epochs_completed} of {epochs} epochs "
                      f"({info.steps_completed} steps); returning the partly trained copy "
                      "(model.finetune_info.partial is True).", PartialResultWarning, stacklevel=2)
    tuned.finetune_info = info
    return tuned.eval()


def _check_args(epochs: Any, lr: Any, on_interrupt: Any) -> None:
    if not isinstance(epochs, int) or epochs < 1:
        raise NboptError(f"epochs must be a positive int, got {epochs!r}")
    if not isinstance(lr, (int, float)) or not lr > 0:
        raise NboptError(f"lr must be a positive learning rate such as 1e-3, got {lr!r}")
    check_on_interrupt(on_interrupt)


def _planned(data: Any, epochs: int) -> int | None:
    try:
        return len(data) * epochs
    except TypeError:
        return None


def _train(tuned: nn.Module, data: Any, loss_fn: Callable, opt: torch.optim.Optimizer,
           masks: dict[torch.Tensor, torch.Tensor], epochs: int, progress: bool, info: FinetuneInfo,
           buffers: tuple[list[torch.Tensor], list[torch.Tensor]]) -> None:
    """The training loop; ``info`` counts finished steps and epochs, ``buffers[1]`` keeps the last step's buffers."""
    from tqdm.auto import tqdm

    with tqdm(total=epochs, desc="fine-tune", disable=not progress, leave=False) as outer:
        for epoch in range(epochs):
            with tqdm(data, desc=f"epoch {epoch + 1}", leave=False, disable=not progress) as inner:
                for batch in inner:
                    x, y = _split(batch)
                    opt.zero_grad()
                    loss = loss_fn(call(tuned, x), y)
                    loss.backward()
                    opt.step()
                    _reapply(masks)
                    _copy(buffers[1], buffers[0])
                    info.steps_completed += 1
                    info.last_loss = float(loss.detach())
            info.epochs_completed += 1
            outer.update(1)


def _reapply(masks: dict[torch.Tensor, torch.Tensor]) -> None:
    with torch.no_grad():
        for p, keep in masks.items():
            p.mul_(keep)


def _copy(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for d, s in zip(dst, src):
            d.copy_(s)


def _split(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise NboptError("train_data must yield (inputs, target) pairs, e.g. a DataLoader over a TensorDataset(x, y)")
