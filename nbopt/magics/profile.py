"""``%%profile_flops`` / ``%profile_flops``: parse options, call :mod:`nbopt.profile`, display the result."""
from __future__ import annotations

import ast
import html
from typing import Any

import torch

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import HTML, display
from torch import nn

from ..display import figures, frames, tables
from ..errors import describe_exception
from ..profiling import Profile, profile, profile_code
from ..profiling.api import ENGINES
from .common import evaluate, parse, store, usage_errors


def run_cell_body(shell: Any, cell: str) -> Any:
    """Execute a cell in the user namespace and return the value of its last expression (like a cell)."""
    source = shell.transform_cell(cell)
    tree = ast.parse(source)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, "<profile_flops cell>", "exec"), shell.user_ns)  # noqa: S102 - the user's cell
    if last is None:
        return None
    return eval(compile(ast.Expression(last.value), "<profile_flops cell>", "eval"), shell.user_ns)  # noqa: S307


SHOWN_VALUE_ELEMENTS = 100  # a cell value with more tensor elements than this is not echoed into the output


def top_option(text: str | None) -> int | None:
    """``--top``: a positive number of layers, or ``all`` (None: every layer)."""
    if text is None or str(text).lower() == "all":
        return None
    try:
        k = int(text)
    except ValueError:
        raise UsageError(f"--top needs a number of layers or 'all', got {text!r}; e.g. --top 10") from None
    if k < 1:
        raise UsageError(f"--top needs a positive number of layers, got {k}; e.g. --top 10, or --top all")
    return k


def tensor_elements(value: Any) -> int:
    """How many tensor elements a value holds (tensors inside tuples, lists, dicts and ModelOutputs count)."""
    if isinstance(value, torch.Tensor):
        return value.numel()
    if isinstance(value, dict):
        return sum(tensor_elements(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_elements(v) for v in value)
    return 0


def describe_value(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__} holding {tensor_elements(value):,} tensor elements"


def module_types(shell: Any, spec: str | None) -> tuple[type, ...]:
    """``ReLU,Dropout`` -> (nn.ReLU, nn.Dropout); names are looked up in torch.nn, then the user namespace."""
    if not spec:
        return ()
    out = []
    for name in (s.strip() for s in spec.split(",") if s.strip()):
        cls = getattr(nn, name, None) or shell.user_ns.get(name)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise UsageError(f"--ignore: {name!r} is not a torch.nn module type (e.g. ReLU, Dropout, BatchNorm2d)")
        out.append(cls)
    return tuple(out)


def root_namer(shell: Any):
    """Name a model by the user variable that holds it (``model``), else by its class."""
    def name_for(module: nn.Module) -> str:
        for key, value in shell.user_ns.items():
            if value is module and not key.startswith("_") and key.isidentifier():
                return key
        return type(module).__name__
    return name_for


@magics_class
class ProfileMagics(Magics):
    """Per-layer params, MACs, FLOPs and latency of the models a cell runs."""

    @magic_arguments()
    @argument("--top", default=str(tables.MAX_ROWS), metavar="K",
              help=f"show the K layers with the most MACs (default {tables.MAX_ROWS}); --top all shows every layer")
    @argument("--by", choices=tables.VIEWS, default="layer", metavar="VIEW",
              help=f"one of {', '.join(tables.VIEWS)}: layer (default) is one row per layer, type one row per layer type")
    @argument("--depth", type=int, default=None, metavar="N", help="collapse the module tree below depth N (0 = root)")
    @argument("--engine", choices=ENGINES, default="aten", metavar="ENGINE",
              help=f"one of {', '.join(ENGINES)}: aten (default) is the complete dispatch-level count, thop "
                   "thop's own numbers")
    @argument("--no-latency", action="store_true", help="count only; skip timing (faster)")
    @argument("--ignore", default=None, metavar="TYPES", help="module types to drop, e.g. ReLU,Dropout")
    @argument("--plot", action="store_true", help="also plot top layers by MACs beside top layers by latency")
    @argument("--repeat", type=int, default=None, metavar="N",
              help="timed repeats (default: about one second's worth)")
    @argument("--show-value", action="store_true",
              help="display the cell's value even when it is a large tensor (hidden by default)")
    @argument("-o", "--output", default=None, metavar="NAME", help="store the Profile in variable NAME")
    @argument("code", nargs="*", help="line form: MODEL INPUT_EXPR, e.g. `%%profile_flops model x`")
    @line_cell_magic
    def profile_flops(self, line: str = "", cell: str | None = None) -> Any:
        """Profile the nn.Module forwards a cell runs (cell form) or MODEL on INPUT_EXPR (line form).

        Cell form: every model the cell calls is counted at the ATen level and attributed to the module
        that ran each op; the cell's own value is returned. A cell that makes several forward calls
        (``model.generate(...)``) also shows one row per call: prefill, then each decode step, with MACs per
        generated token and the KV-cache bytes the attention read. Models on the meta device count with
        ``--no-latency`` (no weights are allocated). MACs are multiply-accumulates of conv, linear,
        matmul, attention and RNN ops; FLOPs are all floating-point operations (2 x MACs plus elementwise,
        norm, pooling, softmax and interpolation work).

        Examples::

            %%profile_flops --top 10
            model(x)

            %profile_flops model torch.randn(1, 3, 224, 224) --by type
        """
        opts = parse(self.profile_flops, line)
        opts.top = top_option(opts.top)
        if opts.depth is not None and opts.depth < 0:
            raise UsageError(f"--depth needs 0 or more levels below the root, got {opts.depth}; e.g. --depth 1")
        ignore = module_types(self.shell, opts.ignore)
        if cell is None:
            prof, value = self._profile_line(opts, ignore), None
        else:
            if opts.code:
                raise UsageError(f"unexpected arguments {' '.join(opts.code)!r} in the cell form; "
                                 "put the code in the cell body (line form: %profile_flops MODEL INPUT_EXPR)")
            if opts.engine == "thop":
                raise UsageError("--engine thop needs the exact model inputs: use the line form "
                                 "%profile_flops MODEL INPUT_EXPR --engine thop")
            prof, value = self._profile_cell(opts, cell, ignore)
        self._show(prof, opts)
        store(self.shell, opts.output, prof)
        return value if opts.show_value else self._quiet_value(value)

    @staticmethod
    def _quiet_value(value: Any) -> Any:
        """The cell's value, unless it is a large tensor (or a structure of them): a note replaces it."""
        size = tensor_elements(value)
        if size <= SHOWN_VALUE_ELEMENTS:
            return value
        display(HTML(f"<p style='color:var(--jp-ui-font-color2,#666)'>The cell's value ({html.escape(describe_value(value))}) "
                     "is not shown; <code>--show-value</code> shows it.</p>"))
        return None

    def _profile_line(self, opts: Any, ignore: tuple) -> Profile:
        if len(opts.code) < 2:
            raise UsageError("line form needs a model and an input expression: %profile_flops MODEL INPUT_EXPR "
                             "(or use the cell form %%profile_flops)")
        model = evaluate(self.shell, opts.code[0], "model")
        inputs = evaluate(self.shell, " ".join(opts.code[1:]), "input expression")
        with usage_errors():
            return profile(model, inputs, latency=not opts.no_latency, engine=opts.engine, ignore_ops=ignore,
                           repeat=opts.repeat)

    def _profile_cell(self, opts: Any, cell: str, ignore: tuple) -> tuple[Profile, Any]:
        def run() -> Any:
            try:
                return run_cell_body(self.shell, cell)
            except SyntaxError as exc:
                raise UsageError(f"the cell has a syntax error: {exc}") from None
            except UsageError:
                raise
            except Exception as exc:
                raise UsageError(f"the cell raised {describe_exception(exc)}; fix the cell and run it again "
                                 "(nothing was left attached to your models)") from None

        with usage_errors():
            return profile_code(run, name_for=root_namer(self.shell), latency=not opts.no_latency,
                                ignore_ops=ignore, repeat=opts.repeat)

    def _show(self, prof: Profile, opts: Any) -> None:
        display(HTML(tables.profile_html(prof, top=opts.top, by=opts.by, depth=opts.depth, max_rows=None,
                                         where="<code>--top all</code> shows every row")))
        if prof.calls is not None and len(prof.calls) > 1:  # generate(): prefill and each decode step
            display(HTML(frames.html_table(prof.calls, caption="Per forward call (prefill, then each decode step)",
                                           kinds={c: "count" for c in prof.calls.columns if c != "call"},
                                           max_rows=None, index=False)))
        if opts.plot:
            import matplotlib.pyplot as plt
            fig = figures.plot_profile(prof, k=opts.top or 10)
            display(fig)
            plt.close(fig)
