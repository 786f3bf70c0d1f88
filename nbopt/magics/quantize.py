"""``%quantize``: parse options, call :func:`nbopt.quantize`, display the per-layer report and summary."""
from __future__ import annotations

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import display

from ..quantization import quantize, sensitivity
from ..quantization.options import BACKENDS, GRANULARITIES, MODES, OBSERVERS
from .common import evaluate, parse, store, usage_errors


def _bits(text: str) -> int | None:
    """--act-bits accepts 'none'/'float' for float activations."""
    return None if text.lower() in ("none", "float", "fp32") else int(text)


def _bit_list(text: str) -> tuple[int, ...]:
    """--sensitivity 8,6,4"""
    try:
        return tuple(int(b) for b in text.split(","))
    except ValueError:
        raise UsageError(f"--sensitivity {text!r} must be comma-separated bit widths, e.g. 8,6,4") from None


def _show_sensitivity(df) -> None:
    import matplotlib.pyplot as plt

    from ..display.figures import plot_sensitivity

    display(df)
    fig = plot_sensitivity(df)
    display(fig)
    plt.close(fig)


@magics_class
class QuantizeMagics(Magics):
    """Quantize a model from a notebook cell."""

    @magic_arguments()
    @argument("model", help="expression giving the nn.Module to quantize (it is never modified)")
    @argument("--calib", default=None, metavar="EXPR",
              help="calibration data: a tensor, DataLoader or list of batches (needed for activations and int8)")
    @argument("--bits", type=int, default=8, metavar="B", help="weight bits, 2-16 (default 8; int8 modes need 8)")
    @argument("--act-bits", type=_bits, default=8, metavar="B",
              help="activation bits, 2-16, or 'none' to keep activations in float (default 8)")
    @argument("--granularity", choices=GRANULARITIES, default="per_channel", metavar="G",
              help=f"one of {', '.join(GRANULARITIES)}: weight scales per output channel (default), one per "
                   "tensor, or per group of input channels")
    @argument("--per-tensor", dest="granularity", action="store_const", const="per_tensor",
              help="one weight scale per tensor (the same as --granularity per_tensor)")
    @argument("--asymmetric", action="store_true", help="asymmetric weight quantization (zero point != 0)")
    @argument("--observer", choices=OBSERVERS, default="minmax", metavar="OBS",
              help=f"one of {', '.join(OBSERVERS)}: how ranges are chosen (full min/max, percentile clipping, or "
                   "MSE-optimal clipping)")
    @argument("--mode", choices=MODES, default="simulate", metavar="MODE",
              help=f"one of {', '.join(MODES)}. "
                   "simulate: fake quantization at any width (accuracy study, NOT faster); int8: real int8 "
                   "kernels (faster, needs --calib); dynamic: int8 weights, activations quantized at run time")
    @argument("--backend", choices=BACKENDS, default="auto", metavar="B",
              help=f"one of {', '.join(BACKENDS)}: the int8 backend; auto measures both on your input and keeps "
                   "the faster")
    @argument("--eval", dest="eval_fn", default=None, metavar="FN",
              help="function FN(model) -> accuracy, measured before and after")
    @argument("--sensitivity", default=None, metavar="BITS",
              help="instead of quantizing: each layer's weights quantized alone at bit widths BITS (e.g. 8,6,4); "
                   "shows the metric drop per layer as a table and heatmap (needs --calib)")
    @argument("-o", "--output", default=None, metavar="NAME",
              help="store the QuantResult (the sensitivity DataFrame with --sensitivity) in variable NAME")
    @line_magic
    def quantize(self, line: str = "") -> None:
        """Quantize a copy of MODEL; show the per-layer report and a before/after summary.

        The summary gives sizes three ways (dense in memory, on disk, deployable), median latency fp32 vs
        quantized, and accuracy (with --eval) or fidelity vs fp32 on the calibration data (top-1
        agreement, cosine, SQNR). Simulated results are labelled as such: they are not faster.
        The quantized model is `NAME.model` after `-o NAME`.

        Examples::

            %quantize model --calib calib_batches --bits 8 --eval nbopt.demo.evaluate
            %quantize model --calib x --bits 4 --act-bits none --observer mse -o q4
            %quantize model --calib loader --mode int8 --backend auto -o q8
            %quantize model --calib x --sensitivity 8,6,4 -o sens

        Interrupting (stop button) leaves the model untouched; an interrupted --sensitivity sweep shows the
        layers it finished, marked partial.
        """
        opts = parse(self.quantize, line)
        flags = {"calib": "--calib", "weight_bits": "--bits", "bits": "--sensitivity", "act_bits": "--act-bits",
                 "granularity": "--granularity", "observer": "--observer", "mode": "--mode", "backend": "--backend",
                 "evaluate": "--eval"}
        model = evaluate(self.shell, opts.model, "model")
        calib = evaluate(self.shell, opts.calib, "--calib data") if opts.calib else None
        eval_fn = evaluate(self.shell, opts.eval_fn, "--eval function") if opts.eval_fn else None
        if eval_fn is not None and not callable(eval_fn):
            raise UsageError(f"--eval {opts.eval_fn} is not callable; pass a function FN(model) -> accuracy")
        if opts.sensitivity:
            bits = _bit_list(opts.sensitivity)
            with usage_errors(flags):
                df = sensitivity(model, calib, evaluate=eval_fn, bits=bits, observer=opts.observer,
                                 granularity=opts.granularity, symmetric=not opts.asymmetric)
            _show_sensitivity(df)
            store(self.shell, opts.output, df)
            return
        with usage_errors(flags):
            result = quantize(model, calib, weight_bits=opts.bits, act_bits=opts.act_bits,
                              granularity=opts.granularity, symmetric=not opts.asymmetric, observer=opts.observer, mode=opts.mode,
                              backend=opts.backend, evaluate=eval_fn, progress=True)
        display(result.report)
        display(result.summary())
        for note in result.notes:
            print(note)
        store(self.shell, opts.output, result)
