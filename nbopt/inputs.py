"""One way to accept model inputs: a tensor, a tuple of positional tensors, or a dict of kwargs."""
from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import ForwardError, InputError, InputTypeError, NboptError, describe_exception

Args = tuple[tuple[Any, ...], dict[str, Any]]


def check_module(model: Any, what: str = "model") -> nn.Module:
    """Return ``model`` if it is an ``nn.Module``; otherwise raise a TypeError saying what to pass."""
    if not isinstance(model, nn.Module):
        raise InputTypeError(
            f"{what} must be a torch.nn.Module, got {type(model).__name__}. "
            "Pass the model object itself (e.g. `model`, not `model(x)` or its state_dict)."
        )
    return model


def on_meta(model: nn.Module, inputs: Any = None) -> bool:
    """True when any parameter or buffer of ``model`` (or any tensor in ``inputs``) is on the meta device."""
    return any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers(), tensors_in(inputs)))


def check_not_meta(model: nn.Module, what: str) -> None:
    """Refuse a model whose weights are on the meta device (shapes, no values): ``what`` (e.g. "quantize")
    needs real weights. Counting (``nbopt.profile``) works on meta models and does not call this."""
    if on_meta(model):
        raise InputError(
            f"{what} needs the model's weight values, but the model's weights are on the meta device (no values); "
            "create them with model.to_empty(device='cpu') and load the weights (load_state_dict / "
            "from_pretrained), then call again. (nbopt.profile counts a meta model without weights.)")


def as_args(inputs: Any) -> Args:
    """Split ``inputs`` into positional and keyword arguments for ``model(*args, **kwargs)``."""
    if isinstance(inputs, torch.Tensor):
        return (inputs,), {}
    if isinstance(inputs, Mapping):
        if not all(isinstance(k, str) for k in inputs):
            raise InputTypeError("a dict of inputs must map argument names (str) to values")
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    raise InputTypeError(
        f"inputs must be a tensor, a tuple of positional tensors or a dict of keyword arguments, "
        f"got {type(inputs).__name__}. Example: nbopt.profile(model, torch.randn(1, 3, 224, 224))."
    )


def tensors_in(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor inside nested tuples, lists and dicts."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from tensors_in(v)
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            yield from tensors_in(v)


def tensor_list(obj: Any) -> list[torch.Tensor]:
    """:func:`tensors_in` as a list, with a fast path for the common ``(tensor,)`` (called per module)."""
    if type(obj) is tuple and len(obj) == 1 and isinstance(obj[0], torch.Tensor):
        return [obj[0]]
    if isinstance(obj, torch.Tensor):
        return [obj]
    return list(tensors_in(obj))


def channels_last(inputs: Any) -> Any:
    """``inputs`` (same structure) with every 4-d tensor in the channels-last memory format (same values)."""
    return torch.utils._pytree.tree_map_only(
        torch.Tensor, lambda t: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t, inputs)


def _checkable(t: torch.Tensor) -> torch.Tensor:
    """``t``, or float8 (no ``isfinite``/``isnan`` kernels) in float32, which holds every float8 value exactly."""
    return t.to(torch.float32) if t.element_size() == 1 else t


def _all_finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(_checkable(t)).all())


def check_finite(inputs: Any, what: str = "inputs") -> None:
    """Raise if a floating-point input holds NaN or Inf (float8 included)."""
    for t in tensors_in(inputs):
        if t.is_floating_point() and t.device.type != "meta" and not _all_finite(t):
            raise NboptError(f"{what} contain NaN or Inf values; clean the data (e.g. torch.nan_to_num) first.")


def check_finite_weights(model: nn.Module, consequence: str) -> None:
    """Raise naming the first parameter or buffer holding NaN or Inf; ``consequence`` says what that breaks."""
    tensors = [("parameter", n, t) for n, t in model.named_parameters()]
    for what, name, t in tensors + [("buffer", n, t) for n, t in model.named_buffers()]:
        if not t.is_floating_point() or t.device.type == "meta" or _all_finite(t):
            continue
        t = _checkable(t)
        kind = "NaN" if bool(torch.isnan(t).any()) else "Inf"
        raise InputError(f"{what} {name!r} holds {kind} values ({int((~torch.isfinite(t)).sum())} of "
                         f"{t.numel()}), so {consequence}. Fix the model first: reload a good checkpoint or find "
                         f"where training diverged (torch.isfinite(model.state_dict()[{name!r}]).all() is False).")


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a stateless model)."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def check_device(model: nn.Module, inputs: Any) -> None:
    """Raise if inputs live on another device than the model."""
    dev = model_device(model)
    for t in tensors_in(inputs):
        if t.device.type != "meta" and t.device != dev:
            if dev.type == "meta":
                raise InputError(
                    f"inputs are on {t.device} but the model's weights are on the meta device (no values): to "
                    "count work without weights pass meta inputs too (x.to('meta')); to run it, create the weights "
                    "with model.to_empty(device='cpu') and load them (load_state_dict / from_pretrained).")
            raise NboptError(
                f"inputs are on {t.device} but the model is on {dev}; move one of them, "
                f"e.g. x.to('{dev}') or model.to('{t.device}')."
            )


def call(model: nn.Module, inputs: Any) -> Any:
    """Run ``model`` on ``inputs``; a failure becomes a ForwardError naming the input shapes."""
    args, kwargs = as_args(inputs)
    try:
        return model(*args, **kwargs)
    except (KeyboardInterrupt, NboptError):
        raise
    except Exception as exc:  # the model's own error: re-raise with the shapes that caused it
        raise forward_error(model, inputs, exc) from None


def forward_error(model: nn.Module, inputs: Any, exc: BaseException, where: str = "") -> ForwardError:
    """The model's own failure, naming the input shapes (and ``where``: the layer, when known)."""
    return ForwardError(
        f"{type(model).__name__} failed on inputs {describe_shapes(inputs)}{where}: {describe_exception(exc)}. "
        "Check the input shape, dtype and device the model expects.")


def describe_shapes(inputs: Any) -> str:
    """Readable shapes, e.g. ``(1, 3, 224, 224) float32``."""
    parts = [f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}" for t in tensors_in(inputs)]
    return ", ".join(parts) if parts else "(no tensors)"


def batches(data: Any) -> Iterable[Any]:
    """Normalise calibration/evaluation data: a tensor is one batch; a DataLoader or iterable yields batches.

    A batch that is a ``(inputs, target)`` pair is reduced to its inputs by :func:`batch_inputs`.
    """
    if data is None:
        raise NboptError("no data given; pass a tensor, a DataLoader or a list of batches.")
    if isinstance(data, torch.Tensor):
        return [data]
    if isinstance(data, Mapping):
        return [data]
    try:
        iter(data)
    except TypeError:
        raise InputTypeError(
            f"data must be a tensor, a DataLoader or an iterable of batches, got {type(data).__name__}."
        ) from None
    return data


def batch_inputs(batch: Any) -> Any:
    """The model inputs of one batch: ``(x, y)`` pairs from a labelled DataLoader give ``x``."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[0], torch.Tensor) \
            and isinstance(batch[1], torch.Tensor) and batch[1].dtype in (torch.int64, torch.int32):
        return batch[0]
    return batch


def watch_layer_inputs(model: nn.Module, layers: dict[str, nn.Module], data: Any,
                       on_input: Callable[[str, torch.Tensor], None], *, desc: str, progress: bool = True) -> None:
    """Run ``model`` on every batch of ``data`` (no grad) and call ``on_input(name, x)`` with each named layer's
    input flattened to (tokens, features); the hooks are removed even when a forward raises."""
    def hook(name: str) -> Callable[..., None]:
        def pre(_m: nn.Module, args: tuple) -> None:
            on_input(name, args[0].detach().reshape(-1, args[0].shape[-1]))
        return pre

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    try:
        with torch.no_grad():
            for batch in tqdm(list(batches(data)), desc=desc, disable=not progress, leave=False):
                call(model, batch)
    finally:
        for h in handles:
            h.remove()
