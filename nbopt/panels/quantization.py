"""``QuantizationPanel``: bit-width sliders over a :class:`~nbopt.quantization.tuner.QuantTuner` with live
fidelity, accuracy (or perplexity) and size, for vision models and language models alike.

Front-end only: every number shown comes from the tuner (the numbers of ``nbopt.quantize(mode="simulate")``
without re-preparing the model on each change; GPTQ rounding for linear-only models), ``nbopt.quantize`` (the
real int8 or weight-only build), ``nbopt.sensitivity``/``nbopt.mixed_precision`` or the user's ``evaluate``.
The model is never modified (the core quantizes copies).

Layout (ipywidgets' own layout system and inline styles, no stylesheet of nbopt's, so JupyterLab, Notebook 7 and
Voila draw it alike; tables take the notebook's DataFrame style through its ``jp-RenderedHTMLCommon`` class): a row
that wraps (controls 500 px | readouts, at least 300 px), every slider 480 px wide with a 160 px label (its track
stays ~224 px whatever its readout shows), buttons sized to their labels, tables through
:func:`nbopt.display.frames.html_table` inside a box that scrolls horizontally.
"""
from __future__ import annotations

import html
from typing import Any, Callable

import ipywidgets as widgets
import pandas as pd
from torch import nn

from ..display.format import readable_bytes
from ..display.frames import html_table
from ..errors import InputTypeError, NboptError
from ..inputs import check_module
from .common import DEFAULT_DEBOUNCE_S, Panel

REPORT_COLUMNS = ["type", "weight_bits", "act_bits", "granularity", "symmetric", "weight_sqnr_db", "output_sqnr_db"]
REPORT_KINDS = {"weight_bits": "number", "act_bits": "number", "weight_sqnr_db": "db", "output_sqnr_db": "db"}
GRANULARITY_LABELS = {"per_channel": "one per output channel", "per_tensor": "one per tensor",
                      "per_group32": "groups of 32 inputs", "per_group64": "groups of 64 inputs",
                      "per_group128": "groups of 128 inputs"}
CONTROL_WIDTH, LABEL_WIDTH = "480px", "160px"  # slider track: 480 - 160 - readout = 224 px in JupyterLab 4
AUTO = "auto"


def _style() -> dict[str, str]:
    return {"description_width": LABEL_WIDTH}


def slider(value: int, description: str, tooltip: str, lo: int = 2, hi: int = 16) -> widgets.IntSlider:
    """A bit-width slider of fixed width (it never shrinks next to a growing readout)."""
    return widgets.IntSlider(value=value, min=lo, max=hi, description=description, description_allow_html=False,
                             tooltip=tooltip, continuous_update=False, style=_style(),
                             layout=widgets.Layout(width=CONTROL_WIDTH, min_width=CONTROL_WIDTH, flex="0 0 auto"))


def button(description: str, icon: str, tooltip: str, style: str = "") -> widgets.Button:
    """A button as wide as its label (never truncated)."""
    return widgets.Button(description=description, icon=icon, tooltip=tooltip, button_style=style,
                          layout=widgets.Layout(width="auto", min_width="max-content", flex="0 0 auto"))


def choice(options: list[tuple[str, Any]], value: Any, description: str, tooltip: str) -> widgets.Dropdown:
    """A labelled choice, aligned with the sliders (label column, then the control)."""
    return widgets.Dropdown(options=options, value=value, description=description, tooltip=tooltip, style=_style(),
                            layout=widgets.Layout(width=CONTROL_WIDTH, flex="0 0 auto"))


def html_box(css_class: str) -> widgets.HTML:
    """An HTML slot as wide as the panel (stretched, margins included); a table inside scrolls in its own box
    instead of widening the panel."""
    return widgets.HTML(layout=widgets.Layout(min_width="0")).add_class(css_class)


def scroll_safe(table_html: str) -> str:
    """``table_html`` in a block whose intrinsic width is zero, so a wide table scrolls inside frames' scroll box
    (the HTML widget's flex content would otherwise grow to the table's width and be clipped), styled as the
    notebook styles a DataFrame output (``jp-RenderedHTMLCommon``: JupyterLab's, Notebook 7's and Voila's theme;
    elsewhere a plain table)."""
    return f"<div class='jp-RenderedHTMLCommon' style='contain:inline-size;width:100%;padding:0'>{table_html}</div>"


def _table(df: pd.DataFrame, index_name: str) -> pd.DataFrame:
    """``df`` with its index as a first column named ``index_name`` (one header row, not pandas' two)."""
    return df.rename_axis(index_name).reset_index()


class QuantizationPanel(Panel):
    """Quantize interactively: sliders -> ``QuantTuner.set`` (= ``nbopt.quantize(mode="simulate")``) -> readouts.

    >>> panel = nbopt.QuantizationPanel(model, demo.calibration_data(), evaluate=demo.evaluate)
    >>> panel = nbopt.QuantizationPanel(lm_model, lm.calibration_data(), evaluate=lm.perplexity)  # language model
    >>> panel                                  # in a notebook: the widgets
    >>> panel.set(weight_bits=4, granularity="per_group32", method="gptq")   # what moving the controls does
    >>> panel.result                           # the TuneResult behind the readouts; panel.tuner.model
    >>> panel.measure_sensitivity(); panel.set_layer_bits("fc", 8)
    >>> panel.build_real()                     # real int8 (or weight-only int8/int4 for an LM) -> panel.int8

    For a language model (logits (N, T, V)) the readouts are the per-token top-1 agreement with fp32 and the KL
    divergence of the next-token distributions, plus ``evaluate``'s score (a perplexity when the function's name
    says so, lower is better); activations default to float and weight scales to groups of 128, and a rounding
    control offers GPTQ. ``evaluate`` runs on every change: pass a quick one (e.g.
    ``functools.partial(lm.perplexity, chunks=16)``).
    """

    def __init__(self, model: nn.Module, calib: Any, evaluate: Callable[[nn.Module], float] | None = None, *,
                 weight_bits: int = 8, act_bits: int | None | str = AUTO, granularity: str = AUTO,
                 symmetric: bool = True, method: str = "rtn", sensitivity: pd.DataFrame | None = None,
                 int8_backend: str = "auto", repeat: int = 20, debounce: float = DEFAULT_DEBOUNCE_S) -> None:
        check_module(model)
        if calib is None:
            raise NboptError("QuantizationPanel needs calibration data (a tensor, DataLoader or list of batches), "
                             "e.g. nbopt.demo.calibration_data() or nbopt.demo.lm.calibration_data()")
        if evaluate is not None and not callable(evaluate):
            raise InputTypeError("evaluate must be a function model -> score (e.g. nbopt.demo.evaluate or "
                                 f"nbopt.demo.lm.perplexity), got {type(evaluate).__name__}")
        from ..quantization.metrics import lower_is_better, score_name
        from ..quantization.tuner import QuantTuner

        self.model, self.calib, self.evaluate = model, calib, evaluate
        self.int8_backend, self.repeat = int8_backend, repeat  # repeat: timed calls per model of the real build
        self.tuner = QuantTuner(model, calib, evaluate=evaluate)  # prepares once; each change re-quantizes
        self.language_model = self.tuner.language_model
        self.score_name = score_name(evaluate) if evaluate is not None else None
        self.lower_is_better = lower_is_better(evaluate) if evaluate is not None else False
        self.result: Any = None
        self.int8: Any = None
        self.sensitivity: pd.DataFrame | None = sensitivity
        self.layer_bits: dict[str, int] = {}
        if act_bits == AUTO:
            act_bits = None if self.language_model else 8
        if granularity == AUTO:
            granularity = "per_group128" if self.language_model and "per_group128" in self._granularities() \
                else "per_channel"
        self._build_controls(weight_bits, act_bits, granularity, symmetric, method)
        self._init_panel(debounce)
        self.watch(self.weight_bits, self.act_bits, self.act_on, self.granularity, self.symmetric, self.method)
        self.on_click(self.layer_set, lambda: self.set_layer_bits(self.layer.value, self.layer_bits_slider.value))
        self.on_click(self.layer_clear, self.clear_layer_bits)
        self.on_click(self.sens_button, self.measure_sensitivity)
        self.on_click(self.mixed_button, self.apply_mixed_precision)
        self.on_click(self.int8_button, self.build_real)
        self.widget = self._layout()
        if sensitivity is not None:
            self._show_sensitivity()
        self._first_update()

    # ------------------------------------------------------------------ widgets
    def _build_controls(self, weight_bits: int, act_bits: int | None, granularity: str, symmetric: bool,
                        method: str) -> None:
        self.weight_bits = slider(weight_bits, "weight bits", "bits of every Conv/Linear weight (per-layer "
                                                              "overrides below take precedence)")
        self.granularity = choice([(GRANULARITY_LABELS[g], g) for g in self._granularities()], granularity,
                                  "weight scales", "how many weights share one scale")
        self.method = choice([("round to nearest (RTN)", "rtn"), ("GPTQ (error-compensating)", "gptq")], method,
                             "rounding", "GPTQ compensates each column's rounding error (linear layers; the first "
                                         "use of each bit width costs one GPTQ pass, then it is cached)")
        self.method.layout.display = None if self.tuner.gptq_supported else "none"
        self.symmetric = choice([("symmetric (zero point 0)", True), ("asymmetric (covers min..max)", False)],
                                symmetric, "weight grid", "symmetric: zero point 0; asymmetric: the grid covers "
                                                          "[min, max] of each scale's weights")
        self.act_on = widgets.Checkbox(value=act_bits is not None, description="quantize activations (layer inputs)",
                                       indent=True, style=_style(),
                                       layout=widgets.Layout(width=CONTROL_WIDTH, flex="0 0 auto"))
        self.act_bits = slider(act_bits or 8, "activation bits", "bits of each layer's input (asymmetric, per "
                                                                 "tensor, ranges from the calibration data)")
        self.layer = widgets.Dropdown(options=self._layer_options(), description="layer", style=_style(),
                                      layout=widgets.Layout(width=CONTROL_WIDTH, flex="0 0 auto"))
        self.layer_bits_slider = slider(8, "its weight bits", "the weight bits the chosen layer gets")
        self.layer_set = button("Give the layer these bits", "plus", "override the weight bits of this one layer")
        self.layer_clear = button("Clear overrides", "times", "every layer back to the weight-bits slider")
        self.sens_button = button("Measure sensitivity", "search", "quantize each layer alone at 8/6/4/3/2 bits "
                                                                   "and measure the drop (nbopt.sensitivity)")
        self.mixed_button = button("Mixed precision", "magic", "per-layer bits averaging the weight-bits slider, "
                                                               "from the sensitivity table (nbopt.mixed_precision)")
        real = "Build real weight-only model" if self.language_model else "Build real int8 model"
        self.int8_button = button(real, "bolt", "build the real quantized model and measure its speed "
                                                "(nbopt.quantize); takes a while", "warning")
        self.overrides_label = widgets.HTML("none", layout=widgets.Layout(min_width="0"))
        self.readout = html_box("nbopt-quant-readout")
        self.int8_html = html_box("nbopt-int8")
        self.table = html_box("nbopt-table-box")
        self.sens_table = html_box("nbopt-sens-table")

    def _layout(self) -> widgets.Widget:
        overrides = widgets.VBox([
            widgets.HBox([self.sens_button, self.mixed_button], layout=widgets.Layout(flex_flow="row wrap")),
            self.sens_table, self.layer, self.layer_bits_slider,
            widgets.HBox([self.layer_set, self.layer_clear, self.overrides_label],
                         layout=widgets.Layout(flex_flow="row wrap", align_items="center"))],
            )
        accordion = widgets.Accordion(children=[overrides])
        accordion.set_title(0, "Per-layer bits (from the sensitivity table)")
        controls = widgets.VBox([self.weight_bits, self.granularity, self.method, self.symmetric, self.act_on,
                                 self.act_bits],
                                layout=widgets.Layout(width="500px", min_width="500px", flex="0 0 auto"))
        readouts = widgets.VBox([self.readout], layout=widgets.Layout(flex="1 1 300px", min_width="300px"))
        top = widgets.HBox([controls, readouts], layout=widgets.Layout(flex_flow="row wrap"))
        real = widgets.VBox([widgets.HBox([self.int8_button]), self.int8_html])
        return widgets.VBox([top, accordion, real, self.status, self.table]).add_class("nbopt-quant-panel")

    def _granularities(self) -> list[str]:
        """per-channel, per-tensor, and the group sizes that divide every layer's input dimension."""
        from ..layers import linear_weight_view, weighted_layers
        from ..quantization.options import GRANULARITIES, group_size_of

        views = [linear_weight_view(m) for m in weighted_layers(self.model).values()]
        ins = [w.reshape(w.shape[0], -1).shape[1] for w in views]
        return [g for g in GRANULARITIES if group_size_of(g) is None or all(i % group_size_of(g) == 0 for i in ins)]

    # ------------------------------------------------------------------ controls for code and tests
    def set(self, *, weight_bits: int | None = None, act_bits: int | None | str = "keep",
            granularity: str | None = None, symmetric: bool | None = None,
            method: str | None = None) -> "QuantizationPanel":
        """Move the controls as a user would (one update); ``act_bits=None`` keeps activations in float."""
        with self.changing():
            if weight_bits is not None:
                self.weight_bits.value = weight_bits
            if act_bits is None:
                self.act_on.value = False
            elif act_bits != "keep":
                self.act_on.value = True
                self.act_bits.value = act_bits
            if granularity is not None:
                self._check_option(self.granularity, granularity, "granularity")
                self.granularity.value = granularity
            if symmetric is not None:
                self.symmetric.value = symmetric
            if method is not None:
                self._check_option(self.method, method, "method")
                self.method.value = method
        return self

    @staticmethod
    def _check_option(control: widgets.Widget, value: Any, what: str) -> None:
        choices = [v for _, v in control.options]
        if value not in choices:
            raise NboptError(f"{what}={value!r} is not offered for this model; pick one of "
                             f"{', '.join(map(repr, choices))}.")

    def set_layer_bits(self, layer: str, bits: int) -> "QuantizationPanel":
        """Give ``layer`` its own weight bit width (validated by the core on the next update)."""
        previous = dict(self.layer_bits)
        self.layer_bits[layer] = int(bits)
        try:
            self.update()
        except Exception:
            self.layer_bits = previous
            raise
        return self

    def clear_layer_bits(self) -> "QuantizationPanel":
        self.layer_bits = {}
        self.update()
        return self

    def options(self) -> dict[str, Any]:
        """The ``QuantTuner.set`` keyword arguments the controls describe now (``nbopt.quantize``'s, plus method)."""
        return {"weight_bits": int(self.weight_bits.value),
                "act_bits": int(self.act_bits.value) if self.act_on.value else None,
                "granularity": self.granularity.value, "symmetric": bool(self.symmetric.value),
                "layer_bits": dict(self.layer_bits), "method": self.method.value}

    # ------------------------------------------------------------------ core calls
    def update(self) -> None:
        """Re-quantize (simulated) with the current options and re-render the readouts and per-layer table."""
        self.act_bits.disabled = not self.act_on.value
        self.result = self.tuner.set(**self.options())
        self._render()

    def _score(self, value: float) -> str:
        return f"{100 * value:.2f}%" if self.score_name == "accuracy" else f"{value:.4g}"

    def _headline(self) -> list[str]:
        r = self.result
        lines = []
        if r.accuracy:
            q, f = r.accuracy["quantized"], r.accuracy["fp32"]
            rel = ""
            if self.score_name != "accuracy" and f:
                rel = f", {100 * (q - f) / f:+.2f}%; {'lower' if self.lower_is_better else 'higher'} is better"
            lines.append(f"<div class='nbopt-accuracy-value' style='font-size:1.3em'>"
                         f"{html.escape(self.score_name)} <b>{self._score(q)}</b> (fp32 {self._score(f)}{rel})</div>")
        fid = r.fidelity
        if self.language_model:
            lines.append(f"<div class='nbopt-lm-metrics'>next-token top-1 agreement with fp32 "
                         f"<b>{100 * fid['top1_agreement']:.2f}%</b>, KL divergence <b>{fid['kl_div']:.4g}</b> nats"
                         f"</div>")
        shown = {k: v for k, v in fid.items() if not (self.language_model and k in ("top1_agreement", "kl_div"))}
        lines.append("<div>fidelity vs fp32: " + ", ".join(f"{html.escape(k)} <b>{v:.4g}</b>"
                                                           for k, v in shown.items()) + "</div>")
        return lines

    def _render(self) -> None:
        r, opts = self.result, self.options()
        sizes = r.size_bytes
        fp32, q = sizes["fp32"]["deployable"], sizes["quantized"]["deployable"]
        lines = self._headline()
        lines.append(f"<div>deployable size <b>{readable_bytes(q)}</b> of {readable_bytes(fp32)} "
                     f"({fp32 / q:.2f}x smaller)</div>")
        act = "float" if opts["act_bits"] is None else f"{opts['act_bits']}-bit"
        overrides = f", {len(opts['layer_bits'])} layer override(s)" if opts["layer_bits"] else ""
        method = ", GPTQ" if opts["method"] == "gptq" else ""
        lines.append(f"<div style='color:var(--jp-ui-font-color2,#666)'><i>{html.escape(r.label)}: "
                     f"W{opts['weight_bits']} / A {act}, scales {GRANULARITY_LABELS[opts['granularity']]}, "
                     f"{'symmetric' if opts['symmetric'] else 'asymmetric'}{method}{overrides}; not faster: "
                     f"use “{html.escape(self.int8_button.description)}” for speed</i></div>")
        self.readout.value = "".join(f"<div style='white-space:normal'>{line}</div>" for line in lines)
        rep = r.report[[c for c in REPORT_COLUMNS if c in r.report.columns]].copy()
        if "granularity" in rep:  # the core's report says "per_group"; the panel names the group size
            rep["granularity"] = rep["granularity"].replace("per_group", opts["granularity"])
        if "act_bits" in rep:
            rep["act_bits"] = ["float" if b is None or b != b else int(b) for b in rep["act_bits"]]
        self.table.value = scroll_safe(html_table(_table(rep, "layer"), kinds=REPORT_KINDS, index=False,
                                                  where="`panel.result.report`", caption="Per-layer quantization"))
        self.overrides_label.value = html.escape(", ".join(f"{k}: {v}" for k, v in self.layer_bits.items())
                                                 or "no per-layer overrides")

    def measure_sensitivity(self, bits: tuple[int, ...] = (8, 6, 4, 3, 2)) -> pd.DataFrame:
        """Per-layer sensitivity (``nbopt.sensitivity``) with the current granularity and symmetry."""
        from ..quantization import sensitivity

        self.sensitivity = sensitivity(self.model, self.calib, bits=bits, granularity=self.granularity.value,
                                       symmetric=bool(self.symmetric.value), progress=False)
        self._show_sensitivity()
        return self.sensitivity

    def _show_sensitivity(self) -> None:
        sens = self.sensitivity
        low = min(sens.attrs.get("bits") or [int(c[5:-3]) for c in sens.columns if c.startswith("drop_")])
        ordered = sens.sort_values(f"drop_{low}bit", ascending=False)
        shown = ordered[[c for c in ordered.columns if c.startswith(("drop_", "sqnr_")) or c in ("type", "params")]]
        kinds = {c: "fraction" if c.startswith("drop_") else "db" for c in shown.columns
                 if c.startswith(("drop_", "sqnr_"))}
        metric = str(sens.attrs.get("metric", "drop"))
        self.sens_table.value = scroll_safe(html_table(
            _table(shown, "layer"), kinds=kinds, index=False, where="`panel.sensitivity`",
            caption=f"{metric} per layer, most sensitive first (weights of one layer quantized at a time)"))
        names = list(ordered.index)
        with self.layer.hold_trait_notifications():
            self.layer.options = names + [n for n in self._layer_options() if n not in names]

    def apply_mixed_precision(self, avg_bits: float | None = None) -> dict[str, int]:
        """``nbopt.mixed_precision`` on the sensitivity table, averaging ``avg_bits`` (default: the slider)."""
        from ..quantization import mixed_precision

        if self.sensitivity is None:
            self.measure_sensitivity()
        self.layer_bits = dict(mixed_precision(self.sensitivity, avg_bits=avg_bits or self.weight_bits.value))
        self.update()
        return self.layer_bits

    def build_real(self) -> Any:
        """The real quantized model with its measured speedup -> ``panel.int8``: static int8
        (``nbopt.quantize(mode="int8")``), or for a language model weight-only int8/int4
        (``mode="weight_only"`` with the weight-bits slider at 8 or 4, the scales' group size and the rounding)."""
        from ..quantization import quantize

        self.int8_html.value = "<i>building the real model (calibrating, converting, timing)…</i>"
        if self.language_model:
            o = self.options()
            if o["weight_bits"] not in (4, 8):
                self.int8_html.value = ""
                raise NboptError(f"real weight-only kernels exist for 8 and 4 bits; the weight-bits slider is at "
                                 f"{o['weight_bits']}: move it to 8 or 4, then build again.")
            from ..quantization.options import group_size_of
            group = group_size_of(o["granularity"]) if o["weight_bits"] == 4 else None
            self.int8 = quantize(self.model, self.calib, mode="weight_only", weight_bits=o["weight_bits"],
                                 group_size=group, method=o["method"], evaluate=self.evaluate, progress=False,
                                 repeat=self.repeat)
        else:
            self.int8 = quantize(self.model, self.calib, mode="int8", evaluate=self.evaluate,
                                 backend=self.int8_backend, progress=False, repeat=self.repeat)
        r = self.int8
        acc = (f", {html.escape(self.score_name)} <b>{self._score(r.accuracy['quantized'])}</b> "
               f"(fp32 {self._score(r.accuracy['fp32'])})" if r.accuracy else "")
        fid = r.fidelity.get("top1_agreement")
        agree = f", top-1 agreement {100 * fid:.2f}%" if fid is not None and fid == fid else ""
        size = "in memory" if self.language_model else "on disk"
        key = "dense" if self.language_model else "disk"
        self.int8_html.value = (
            f"<div class='nbopt-int8-value' style='white-space:normal'>{html.escape(r.label)}: latency "
            f"{r.latency_ms['fp32']:.3f} → <b>{r.latency_ms['quantized']:.3f} ms</b> (measured speedup "
            f"<b>{r.speedup:.2f}x</b>){acc}{agree}; size {readable_bytes(r.size_bytes['fp32'][key])} → "
            f"{readable_bytes(r.size_bytes['quantized'][key])} {size} → <code>panel.int8.model</code></div>")
        return r

    build_int8 = build_real  # the name of earlier releases

    def _layer_options(self) -> list[str]:
        from ..layers import weighted_layers

        return list(weighted_layers(self.model))

    def __repr__(self) -> str:
        o = self.options()
        return (f"QuantizationPanel(W{o['weight_bits']}/A{o['act_bits']}, {o['granularity']}, {o['method']}, "
                f"{self.result!r})")
