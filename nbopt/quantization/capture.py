"""Turn a torch.export failure into an error naming the module/op and the way out."""
from __future__ import annotations

import traceback

from torch import nn

from ..errors import NboptError, describe_exception


def failing_module(exc: BaseException, model: nn.Module) -> str | None:
    """Qualified name of the deepest module of ``model`` whose forward was running when ``exc`` was raised."""
    names = {id(m): n or type(model).__name__ for n, m in model.named_modules()}
    found, tb = None, exc.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if id(owner) in names:
            found = names[id(owner)]
        tb = tb.tb_next
    return found


def user_line(exc: BaseException) -> str | None:
    """The last traceback line outside torch (the user's code that could not be captured)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/torch/" not in f.filename
              and "/torchao/" not in f.filename and "/nbopt/" not in f.filename]
    if frames:
        f = frames[-1]
        return f"{f.filename}:{f.lineno} `{(f.line or '').strip()}`"
    for line in str(exc).splitlines():  # dynamo (strict) errors quote the user frame in their message
        if line.strip().startswith("File ") and "/torch/" not in line:
            return line.strip()
    return None


def capture_error(exc: BaseException, model: nn.Module, backend: str) -> NboptError:
    """A clear NboptError for a model the int8 path could not capture."""
    where = failing_module(exc, model)
    line = user_line(exc)
    loc = (f" in module {where!r}" if where else "") + (f" at {line}" if line else "")
    return NboptError(
        f"the {backend} int8 path could not capture the model{loc}: {describe_exception(exc)}. "
        "Typical cause: data-dependent control flow (an `if` on tensor values) or an unsupported op. "
        "Ways out: mode='dynamic' (weights only), mode='simulate' to study accuracy, rewrite that branch "
        "with torch.where/torch.cond, or quantize the model without that module (exclude it by "
        "wrapping the rest).")
