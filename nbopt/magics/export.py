"""``%export MODEL INPUT --format onnx --path file.onnx``: parse, call :func:`nbopt.export`, display."""
from __future__ import annotations

from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import HTML, display

from ..deployment.export import FORMATS, ExportResult, export
from ..display.results import export_html
from .common import evaluate, parse, store, usage_errors


def result_html(result: ExportResult) -> str:
    """Summary table and operator counts of one export (through nbopt.display)."""
    return export_html(result)


@magics_class
class ExportMagics(Magics):
    """Export a model and check it in the target runtime."""

    @magic_arguments()
    @argument("-f", "--format", default="onnx", choices=FORMATS, metavar="FMT",
              help=f"one of {', '.join(FORMATS)}: the target format (default onnx)")
    @argument("-p", "--path", default=None, help="output file or folder (default: a new temp folder)")
    @argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    @argument("--no-check", action="store_true", help="skip the runtime check and timing")
    @argument("--no-latency", action="store_true", help="check outputs but do not time")
    @argument("-o", "--output", default=None, metavar="NAME", help="store the ExportResult in variable NAME")
    @argument("model", help="the model variable")
    @argument("inputs", help="example input expression, e.g. x or torch.randn(1, 3, 224, 224)")
    @line_magic
    def export(self, line: str = "") -> None:
        """Export MODEL on INPUTS to ONNX, TorchScript or ExecuTorch; shows file size, max |diff| in the
        runtime, latency beside eager PyTorch and the operator list. ``-o NAME`` stores the ExportResult
        (``NAME.path``, ``NAME.summary()``).

        Example: ``%export model x --format onnx --path model.onnx``
        """
        args = parse(self.export, line)
        model = evaluate(self.shell, args.model, "model")
        inputs = evaluate(self.shell, args.inputs, "inputs")
        with usage_errors():
            result = export(model, inputs, args.format, args.path, opset=args.opset, check=not args.no_check,
                            latency=not (args.no_check or args.no_latency))
        store(self.shell, args.output, result)
        display(HTML(result_html(result)))  # shown once: the magic returns nothing (``-o NAME`` keeps the result)
