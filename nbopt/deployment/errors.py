"""Turn torch.export failures into errors that name the module and the way out."""
from __future__ import annotations

import inspect
import re

from torch import nn

from ..errors import NboptError, describe_exception

_DATA_DEPENDENT = ("data-dependent", "GuardOnDataDependentSymNode", "Dynamic control flow", "data dependent")
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\w+)')


def module_at(model: nn.Module, filename: str, line: int) -> str | None:
    """Qualified name of the (deepest) submodule whose ``forward`` source contains ``filename:line``."""
    found = None
    for name, m in model.named_modules():
        try:
            lines, start = inspect.getsourcelines(type(m).forward)
            src = inspect.getsourcefile(type(m).forward)
        except (OSError, TypeError):
            continue
        if src and src == filename and start <= line < start + len(lines):
            found = f"{name or '<root>'} ({type(m).__name__})"
    return found


def _messages(exc: BaseException) -> str:
    parts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


def export_error(exc: BaseException, model: nn.Module, fmt: str) -> NboptError:
    """An NboptError for a failed export: names the module at fault for data-dependent control flow."""
    text = _messages(exc)
    if any(k in text for k in _DATA_DEPENDENT):
        frames = _FRAME.findall(text)
        where = next((module_at(model, f, int(n)) for f, n, _ in reversed(frames) if module_at(model, f, int(n))),
                     None)
        loc = f" in module {where}" if where else ""
        code = f" at {frames[-1][0]}:{frames[-1][1]}" if frames else ""
        return NboptError(
            f"{fmt} export failed: data-dependent control flow{loc}{code} (a Python `if` on a tensor value "
            "cannot be captured in a graph). Way out: rewrite the branch with tensor ops (torch.where) or "
            "torch.cond, or export with format='torchscript', whose tracer freezes the branch taken on the "
            "example inputs.")
    return NboptError(f"{fmt} export failed: {describe_exception(exc)}. Check that the model runs under "
                      "torch.export.export(model, args), or try another format.")
