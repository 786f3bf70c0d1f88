"""``%quantize``: parse options, call :func:`nbopt.quantize`, display the per-layer report and summary."""
from __future__ import annotations

import argparse

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import display

from ..quantization import quantize, sensitivity
from ..quantization.options import BACKENDS, GRANULARITIES, MODES, OBSERVERS, group_granularity
from ..quantization.weight_only import KERNELS, METHODS
from .common import evaluate, parse, store, usage_errors


def _bits(text: str) -> int | None:
    """--act-bits accepts 'none'/'float' for float activations."""
    return None if text.lower() in ("none", "float", "fp32") else int(text)


def _group(text: str) -> int | None:
    """--group-size 32|64|128, or 'none' for one scale per output channel."""
    return None if text.lower() in ("none", "channel", "per_channel") else int(text)


def _mode(text: str) -> str:
    """--mode weight-only and --mode weight_only are the same mode."""
    return text.replace("-", "_")


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


#: the core's argument names -> this magic's flags (so error messages name the flags)
FLAGS = {"calib": "--calib", "weight_bits": "--bits", "bits": "--sensitivity", "act_bits": "--act-bits",
         "granularity": "--granularity", "group_size": "--group-size", "method": "--method",
         "observer": "--observer", "mode": "--mode", "backend": "--backend", "evaluate": "--eval"}
#: --backend's choices: the int8 runtimes, then the weight-only kernels
BACKEND_CHOICES = tuple(dict.fromkeys((*BACKENDS, *KERNELS)))


@magics_class
class QuantizeMagics(Magics):
    """Quantize a model from a notebook cell."""

    @magic_arguments()
    @argument("model", help="expression giving the nn.Module to quantize (it is never modified)")
    @argument("--calib", default=None, metavar="EXPR",
              help="calibration data: a tensor, DataLoader or list of batches (needed for activations, int8 and "
                   "GPTQ; fidelity and latency are measured on it)")
    @argument("--mode", type=_mode, choices=MODES, default="simulate", metavar="MODE",
              help=f"one of {', '.join(MODES)} (default simulate; weight-only also reads --mode weight-only). "
                   "simulate: fake quantization at any width (accuracy study, NOT faster); int8: real int8 "
                   "kernels (faster, needs --calib); dynamic: int8 weights, activations quantized at run time; "
                   "weight_only: real int8/int4 weights in every linear layer, activations in bfloat16 (language "
                   "models)")
    @argument("--bits", "--weight-bits", dest="bits", type=int, default=8, metavar="B",
              help="weight bits, 2-16 (default 8; the int8 modes need 8, --mode weight-only 8 or 4)")
    @argument("--act-bits", type=_bits, default=argparse.SUPPRESS, metavar="B",
              help="activation bits, 2-16, or 'none' to keep activations in float (default 8; --mode weight-only "
                   "keeps them in bfloat16 and takes no --act-bits)")
    @argument("--group-size", type=_group, default=None, metavar="G",
              help="32, 64 or 128: one weight scale per group of G input values of each output channel "
                   "(default: one per output channel; --mode weight-only --bits 4: 128)")
    @argument("--method", choices=METHODS, default="rtn", metavar="M",
              help=f"one of {', '.join(METHODS)}: how --mode weight-only finds its codes: round to nearest "
                   "(default) or GPTQ, which compensates each column's rounding error (needs --calib)")
    @argument("--granularity", choices=GRANULARITIES, default="per_channel", metavar="G",
              help=f"one of {', '.join(GRANULARITIES)}: weight scales per output channel (default), one per "
                   "tensor, or per group of input channels (per_group32 is --group-size 32)")
    @argument("--per-tensor", dest="granularity", action="store_const", const="per_tensor",
              help="one weight scale per tensor (the same as --granularity per_tensor)")
    @argument("--asymmetric", dest="symmetric", action="store_const", const=False, default=None,
              help="asymmetric weight quantization (zero point != 0); the default is symmetric, except "
                   "--mode weight-only --bits 4, which is asymmetric")
    @argument("--symmetric", dest="symmetric", action="store_const", const=True,
              help="symmetric weight quantization (zero point 0), also for --mode weight-only --bits 4")
    @argument("--observer", choices=OBSERVERS, default="minmax", metavar="OBS",
              help=f"one of {', '.join(OBSERVERS)}: how ranges are chosen (full min/max, percentile clipping, or "
                   "MSE-optimal clipping; simulate and sensitivity)")
    @argument("--backend", choices=BACKEND_CHOICES, default="auto", metavar="B",
              help=f"one of {', '.join(BACKENDS)}: the int8 backend; auto measures both on your input and keeps "
                   f"the faster. With --mode weight-only: auto (times aten and onnxruntime, keeps the faster) or "
                   f"{', '.join(k for k in KERNELS if k != 'auto')}")
    @argument("--eval", dest="eval_fn", default=None, metavar="FN",
              help="function FN(model) -> score, measured before and after: an accuracy, or a perplexity "
                   "(e.g. nbopt.demo.lm.perplexity; lower is better)")
    @argument("--repeat", type=int, default=20, metavar="N",
              help="about N timed calls per model for the fp32-vs-quantized latency (default 20)")
    @argument("--sensitivity", default=None, metavar="BITS",
              help="instead of quantizing: each layer's weights quantized alone at bit widths BITS (e.g. 8,6,4); "
                   "shows the metric drop per layer as a table and heatmap (needs --calib)")
    @argument("-o", "--output", default=None, metavar="NAME",
              help="store the QuantResult (the sensitivity DataFrame with --sensitivity) in variable NAME")
    @line_magic
    def quantize(self, line: str = "") -> None:
        """Quantize a copy of MODEL; show the per-layer report and a before/after summary.

        The summary gives sizes three ways (dense in memory, on disk, deployable), median latency fp32 vs
        quantized, the --eval score, and fidelity vs fp32 on the calibration data (top-1 agreement, per token
        for a language model with the KL divergence of its next-token distributions; cosine, SQNR).
        Simulated results are labelled as such: they are not faster.
        The quantized model is `NAME.model` after `-o NAME`.

        Examples::

            %quantize model --calib calib_batches --bits 8 --eval nbopt.demo.evaluate
            %quantize model --calib x --bits 4 --act-bits none --observer mse -o q4
            %quantize model --calib loader --mode int8 --backend auto -o q8
            %quantize model --calib x --sensitivity 8,6,4 -o sens
            %quantize lm_model --calib calib --mode weight-only --bits 4 --group-size 32 --method gptq -o q4

        Interrupting (stop button) leaves the model untouched; an interrupted --sensitivity sweep shows the
        layers it finished, marked partial.
        """
        opts = parse(self.quantize, line)
        model = evaluate(self.shell, opts.model, "model")
        calib = evaluate(self.shell, opts.calib, "--calib data") if opts.calib else None
        eval_fn = evaluate(self.shell, opts.eval_fn, "--eval function") if opts.eval_fn else None
        if eval_fn is not None and not callable(eval_fn):
            raise UsageError(f"--eval {opts.eval_fn} is not callable; pass a function FN(model) -> score")
        if opts.sensitivity:
            bits = _bit_list(opts.sensitivity)
            with usage_errors(FLAGS):
                granularity = group_granularity(opts.granularity, opts.group_size)
                df = sensitivity(model, calib, evaluate=eval_fn, bits=bits, observer=opts.observer,
                                 granularity=granularity, symmetric=opts.symmetric is not False)
            _show_sensitivity(df)
            store(self.shell, opts.output, df)
            return
        if opts.repeat < 1:
            raise UsageError(f"--repeat must be a positive number of timed calls, got {opts.repeat}")
        extra = {"act_bits": opts.act_bits} if hasattr(opts, "act_bits") else {}
        with usage_errors(FLAGS):
            result = quantize(model, calib, weight_bits=opts.bits, granularity=opts.granularity,
                              group_size=opts.group_size, symmetric=opts.symmetric, observer=opts.observer,
                              mode=opts.mode, method=opts.method, backend=opts.backend, evaluate=eval_fn,
                              repeat=opts.repeat, progress=True, **extra)
        display(result)  # headline, before/after summary, notes and the per-layer report (nbopt.display)
        store(self.shell, opts.output, result)
