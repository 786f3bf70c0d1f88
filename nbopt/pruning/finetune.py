"""Fine-tune a (pruned) model on a copy, keeping its zeros, with a progress bar."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ..errors import NboptError
from ..inputs import batches, call, check_module
from ..model_state import working_copy


def finetune(model: nn.Module, train_data: Any, loss_fn: Callable[[Any, Any], torch.Tensor], *,
             epochs: int = 1, lr: float = 1e-3, weight_decay: float = 0.0, keep_sparsity: bool = True,
             seed: int | None = 0, progress: bool = True) -> nn.Module:
    """Train a copy of ``model`` with Adam for ``epochs`` over ``(inputs, target)`` batches; return it in eval mode.

    ``keep_sparsity`` keeps weights that are exactly zero at zero (so unstructured pruning survives).
    The model you pass is never modified, also when the loop is interrupted (Ctrl-C). ``seed`` makes
    dropout and the data order reproducible (None: leave the global RNG alone).
    """
    from tqdm.auto import tqdm

    check_module(model)
    if not isinstance(epochs, int) or epochs < 1:
        raise NboptError(f"epochs must be a positive int, got {epochs!r}")
    if not isinstance(lr, (int, float)) or not lr > 0:
        raise NboptError(f"lr must be a positive learning rate such as 1e-3, got {lr!r}")
    data = batches(train_data)
    tuned = working_copy(model)
    params = [p for p in tuned.parameters() if p.requires_grad]
    if not params:
        raise NboptError("the model has no trainable parameters (requires_grad=False everywhere); unfreeze some first")
    masks = {p: p.detach() != 0 for p in params if p.dim() > 1} if keep_sparsity else {}
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    tuned.train()
    with torch.random.fork_rng(enabled=seed is not None), torch.enable_grad():
        if seed is not None:
            torch.manual_seed(seed)
        for epoch in tqdm(range(epochs), desc="fine-tune", disable=not progress):
            for batch in tqdm(data, desc=f"epoch {epoch + 1}", leave=False, disable=not progress):
                x, y = _split(batch)
                opt.zero_grad()
                loss = loss_fn(call(tuned, x), y)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    for p, keep in masks.items():
                        p.mul_(keep)
    return tuned.eval()


def _split(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise NboptError("train_data must yield (inputs, target) pairs, e.g. a DataLoader over a TensorDataset(x, y)")
