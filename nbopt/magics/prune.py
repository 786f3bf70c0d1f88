"""``%prune``: parse options, call :func:`nbopt.prune`, display the report and the before/after summary."""
from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import HTML, display

from ..display.results import prune_html
from ..distillation import RECOVERY_METHODS, recover
from ..errors import describe_exception
from ..pruning import prune
from ..pruning.pruner import SCOPES
from ..pruning.structured import CRITERIA
from .common import evaluate, parse, store, usage_errors


def _expr(text: str | None) -> str | None:
    """An expression option without the quotes that protect its spaces (``--inputs "f(1, 2)"``)."""
    if text and len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [s.strip() for s in text.split(",") if s.strip()]


@magics_class
class PruneMagics(Magics):
    """Prune a model from a notebook cell."""

    @magic_arguments()
    @argument("model", help="expression giving the nn.Module to prune (it is never modified)")
    @argument("--amount", type=float, default=None, metavar="A",
              help="fraction to remove, in [0, 1): of weights, or of channels with --structured")
    @argument("--threshold", type=float, default=None, metavar="T",
              help="remove weights with magnitude below T (instead of --amount)")
    @argument("--structured", action="store_true",
              help="remove whole output channels and everything that depends on them (a smaller, faster model)")
    @argument("--scope", choices=SCOPES, default="global", metavar="S",
              help=f"one of {', '.join(SCOPES)}: rank weights across all layers (global, default) or within each "
                   "layer")
    @argument("--inputs", default=None, metavar="EXPR", required=True,
              help="example inputs expression, e.g. `torch.randn(1, 3, 224, 224)` (required)")
    @argument("--exclude", default=None, metavar="NAMES", help="comma-separated layer names to leave alone")
    @argument("--layers", default=None, metavar="NAMES", help="comma-separated layer names to prune (default: all)")
    @argument("--criterion", choices=CRITERIA, default="l1", metavar="C",
              help=f"one of {', '.join(CRITERIA)}: structured channel importance (L1 or L2 norm, or BatchNorm "
                   "scale)")
    @argument("--eval", dest="eval_fn", default=None, metavar="FN",
              help="function FN(model) -> score (e.g. accuracy), shown before and after")
    @argument("--no-latency", action="store_true", help="skip measuring latency")
    @argument("--recover", choices=RECOVERY_METHODS, default=None, metavar="HOW",
              help=f"one of {', '.join(RECOVERY_METHODS)}: recover accuracy after pruning: fine-tune, or distill from the unpruned model (needs --data)")
    @argument("--epochs", type=int, default=2, metavar="N", help="recovery epochs (default 2)")
    @argument("--data", default=None, metavar="EXPR",
              help="labelled training batches (x, y) for --recover, e.g. `demo.train_loader()`")
    @argument("-o", "--output", default=None, metavar="NAME", help="store the PruneResult in variable NAME")
    @line_magic
    def prune(self, line: str = "") -> None:
        """Prune a copy of MODEL and show the before/after summary and the per-layer report.

        Unstructured pruning zeroes the smallest-magnitude weights (same size and speed on dense kernels);
        --structured removes whole channels so the model really gets smaller and faster. The pruned model
        is in the stored result (`-o NAME`, then `NAME.model`).

        Examples::

            %prune model --amount 0.5 --inputs x
            %prune model --amount 0.3 --structured --inputs "torch.randn(1, 1, 8, 8)" -o small
            %prune model --threshold 0.01 --scope layer --inputs x --exclude fc --eval nbopt.demo.evaluate
            %prune model --amount 0.7 --structured --inputs x --recover distill --epochs 3 --data "demo.train_loader()"
        """
        opts = parse(self.prune, line)
        if opts.amount is None and opts.threshold is None:
            raise UsageError("give --amount A (a fraction in [0, 1)) or --threshold T; see `%prune?`")
        if opts.amount is not None and opts.threshold is not None:
            raise UsageError("give either --amount or --threshold, not both")
        model = evaluate(self.shell, _expr(opts.model), "model")
        inputs = evaluate(self.shell, _expr(opts.inputs), "inputs")
        eval_fn = evaluate(self.shell, _expr(opts.eval_fn), "--eval function") if opts.eval_fn else None
        if opts.recover and not opts.data:
            raise UsageError(f"--recover {opts.recover} needs --data EXPR (labelled (x, y) training batches, "
                             "e.g. --data \"demo.train_loader()\")")
        if opts.epochs < 1:
            raise UsageError(f"--epochs must be a positive number of epochs, got {opts.epochs}")
        data = evaluate(self.shell, _expr(opts.data), "--data") if opts.recover else None
        if eval_fn is not None and not callable(eval_fn):
            raise UsageError(f"--eval {opts.eval_fn} is not callable; pass a function FN(model) -> score")
        flags = {"amount": "--amount", "threshold": "--threshold", "scope": "--scope", "structured": "--structured",
                 "layers": "--layers", "exclude": "--exclude", "criterion": "--criterion", "epochs": "--epochs"}
        with usage_errors(flags):
            result = prune(model, inputs, amount=opts.amount, threshold=opts.threshold, scope=opts.scope,
                           structured=opts.structured, layers=_names(opts.layers), exclude=_names(opts.exclude),
                           criterion=opts.criterion, latency=not opts.no_latency, progress=True)
            if opts.recover:
                result.model = recover(result.model, model, opts.recover, data, epochs=opts.epochs)
                result.notes.append(f"recovered by {opts.recover} ({opts.epochs} epochs); the latency rows were "
                                    "measured before recovery (it changes weights, not shapes)")
                result.setting["recover"] = {"method": opts.recover, "epochs": opts.epochs}
        if eval_fn is not None:
            result.summary.loc["eval"] = self._scores(eval_fn, model, result.model)
        display(HTML(prune_html(result)))  # the summary, the notes, the per-layer report (folded)
        store(self.shell, opts.output, result)

    @staticmethod
    def _scores(fn: Any, before: Any, after: Any) -> list[float]:
        try:
            b, a = float(fn(before)), float(fn(after))
        except Exception as exc:
            raise UsageError(f"--eval function failed: {describe_exception(exc)}") from None
        return [b, a, b / a if a else float("nan")]
