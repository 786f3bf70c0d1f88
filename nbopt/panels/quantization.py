"""``QuantizationPanel``: bit-width sliders over a :class:`~nbopt.quantization.tuner.QuantTuner` with live
fidelity, accuracy and size.

Front-end only: every number shown comes from the tuner (the numbers of ``nbopt.quantize(mode="simulate")``
without re-preparing the model on each change), ``nbopt.quantize(mode="int8")``,
``nbopt.sensitivity``/``nbopt.mixed_precision`` or the user's ``evaluate``. The model is never modified
(the core quantizes copies).
"""
from __future__ import annotations

import html
from typing import Any, Callable

import ipywidgets as widgets
import pandas as pd
from torch import nn

from ..errors import InputTypeError, NboptError
from ..inputs import check_module
from ..display.format import readable_bytes
from .common import DEFAULT_DEBOUNCE_S, Panel, table_html

REPORT_COLUMNS = ["type", "weight_bits", "act_bits", "granularity", "symmetric", "weight_sqnr_db", "output_sqnr_db"]
FLOAT = lambda v: "" if pd.isna(v) else f"{v:.2f}"  # noqa: E731


class QuantizationPanel(Panel):
    """Quantize interactively: sliders -> ``QuantTuner.set`` (= ``nbopt.quantize(mode="simulate")``) -> readouts.

    >>> panel = nbopt.QuantizationPanel(model, demo.calibration_data(), evaluate=demo.evaluate)
    >>> panel                                  # in a notebook: the widgets
    >>> panel.set(weight_bits=4, act_bits=8)   # what moving the sliders does (one update)
    >>> panel.result                           # the TuneResult behind the readouts; panel.tuner.model
    >>> panel.measure_sensitivity(); panel.set_layer_bits("fc", 8)
    >>> panel.build_int8()                     # real int8 model + measured speedup -> panel.int8
    """

    def __init__(self, model: nn.Module, calib: Any, evaluate: Callable[[nn.Module], float] | None = None, *,
                 weight_bits: int = 8, act_bits: int | None = 8, granularity: str = "per_channel",
                 symmetric: bool = True, sensitivity: pd.DataFrame | None = None, int8_backend: str = "auto",
                 debounce: float = DEFAULT_DEBOUNCE_S) -> None:
        check_module(model)
        if calib is None:
            raise NboptError("QuantizationPanel needs calibration data (a tensor, DataLoader or list of batches), "
                             "e.g. nbopt.demo.calibration_data()")
        if evaluate is not None and not callable(evaluate):
            raise InputTypeError("evaluate must be a function model -> accuracy (e.g. nbopt.demo.evaluate), "
                            f"got {type(evaluate).__name__}")
        from ..quantization.tuner import QuantTuner

        self.model, self.calib, self.evaluate = model, calib, evaluate
        self.int8_backend = int8_backend
        self.tuner = QuantTuner(model, calib, evaluate=evaluate)  # prepares once; each change re-quantizes
        self.result: Any = None
        self.int8: Any = None
        self.sensitivity: pd.DataFrame | None = sensitivity
        self.layer_bits: dict[str, int] = {}

        style = {"description_width": "110px"}
        wide = lambda: widgets.Layout(width="420px")  # noqa: E731 - one Layout per widget
        self.weight_bits = widgets.IntSlider(value=weight_bits, min=2, max=16, description="weight bits",
                                             continuous_update=False, style=style, layout=wide())
        self.act_bits = widgets.IntSlider(value=act_bits or 8, min=2, max=16, description="activation bits",
                                          continuous_update=False, style=style, layout=wide())
        self.act_float = widgets.Checkbox(value=act_bits is None, description="float activations")
        self.granularity = widgets.ToggleButtons(options=[("per-channel", "per_channel"),
                                                          ("per-tensor", "per_tensor")],
                                                 value=granularity, description="weights", style=style)
        self.symmetric = widgets.ToggleButtons(options=[("symmetric", True), ("asymmetric", False)],
                                               value=symmetric, description="range", style=style)
        self.layer = widgets.Dropdown(options=self._layer_options(), description="layer", style=style)
        self.layer_bits_slider = widgets.IntSlider(value=8, min=2, max=16, description="its bits",
                                                   continuous_update=False, style=style)
        self.layer_set = widgets.Button(description="Override layer", icon="plus")
        self.layer_clear = widgets.Button(description="Clear overrides", icon="times")
        self.sens_button = widgets.Button(description="Measure sensitivity", icon="search")
        self.mixed_button = widgets.Button(description="Mixed precision", icon="magic",
                                           tooltip="per-layer bits averaging the weight-bits slider, from the "
                                                   "sensitivity table")
        self.int8_button = widgets.Button(description="Build real int8", button_style="warning", icon="bolt")
        self.overrides_label = widgets.HTML("none")
        self.readout = widgets.HTML().add_class("nbopt-quant-readout")
        self.int8_html = widgets.HTML().add_class("nbopt-int8")
        self.table = widgets.HTML().add_class("nbopt-table")
        self.sens_table = widgets.HTML()

        self._init_panel(debounce)
        self.watch(self.weight_bits, self.act_bits, self.act_float, self.granularity, self.symmetric)
        self.on_click(self.layer_set, lambda: self.set_layer_bits(self.layer.value, self.layer_bits_slider.value))
        self.on_click(self.layer_clear, self.clear_layer_bits)
        self.on_click(self.sens_button, self.measure_sensitivity)
        self.on_click(self.mixed_button, self.apply_mixed_precision)
        self.on_click(self.int8_button, self.build_int8)

        overrides = widgets.VBox([widgets.HBox([self.sens_button, self.mixed_button]), self.sens_table,
                                  widgets.HBox([self.layer, self.layer_bits_slider]),
                                  widgets.HBox([self.layer_set, self.layer_clear, self.overrides_label])])
        accordion = widgets.Accordion(children=[overrides])
        accordion.set_title(0, "Per-layer bits (from the sensitivity table)")
        left = widgets.VBox([self.weight_bits, widgets.HBox([self.act_bits, self.act_float]), self.granularity,
                             self.symmetric, accordion, self.int8_button, self.status])
        right = widgets.VBox([self.readout, self.int8_html])
        self.widget = widgets.VBox([widgets.HBox([left, right]), self.table]).add_class("nbopt-quant-panel")
        if sensitivity is not None:
            self._show_sensitivity()
        self._first_update()

    # ------------------------------------------------------------------ controls for code and tests
    def set(self, *, weight_bits: int | None = None, act_bits: int | None | str = "keep",
            granularity: str | None = None, symmetric: bool | None = None) -> "QuantizationPanel":
        """Move the controls as a user would (one update); ``act_bits=None`` keeps activations in float."""
        with self.changing():
            if weight_bits is not None:
                self.weight_bits.value = weight_bits
            if act_bits is None:
                self.act_float.value = True
            elif act_bits != "keep":
                self.act_float.value = False
                self.act_bits.value = act_bits
            if granularity is not None:
                self.granularity.value = granularity
            if symmetric is not None:
                self.symmetric.value = symmetric
        return self

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
        """The ``nbopt.quantize`` keyword arguments the controls describe now."""
        return {"weight_bits": int(self.weight_bits.value),
                "act_bits": None if self.act_float.value else int(self.act_bits.value),
                "granularity": self.granularity.value, "symmetric": bool(self.symmetric.value),
                "layer_bits": dict(self.layer_bits)}

    # ------------------------------------------------------------------ core calls
    def update(self) -> None:
        """Re-quantize (simulated) with the current options and re-render the readouts and per-layer table."""
        self.act_bits.disabled = self.act_float.value
        self.result = self.tuner.set(**self.options())
        self._render()

    def _render(self) -> None:
        r, opts = self.result, self.options()
        sizes = r.size_bytes
        fp32, q = sizes["fp32"]["deployable"], sizes["quantized"]["deployable"]
        lines = []
        if r.accuracy:
            lines.append(f"<div class='nbopt-accuracy-value' style='font-size:1.3em'>accuracy "
                         f"<b>{100 * r.accuracy['quantized']:.2f}%</b> (fp32 {100 * r.accuracy['fp32']:.2f}%)</div>")
        fid = ", ".join(f"{html.escape(k)} <b>{v:.4g}</b>" for k, v in r.fidelity.items())
        lines.append(f"<div>fidelity vs fp32: {fid}</div>")
        lines.append(f"<div>deployable size <b>{readable_bytes(q)}</b> of {readable_bytes(fp32)} "
                     f"({fp32 / q:.2f}x smaller)</div>")
        act = "float" if opts["act_bits"] is None else f"{opts['act_bits']}-bit"
        lines.append(f"<div><i>{html.escape(r.label)}: W{opts['weight_bits']} / A {act}, "
                     f"{opts['granularity'].replace('_', '-')}, {'symmetric' if opts['symmetric'] else 'asymmetric'}"
                     f"{', ' + str(len(opts['layer_bits'])) + ' layer override(s)' if opts['layer_bits'] else ''}"
                     "; not faster: use “Build real int8” for speed</i></div>")
        self.readout.value = "".join(lines)
        rep = r.report
        self.table.value = table_html(rep[[c for c in REPORT_COLUMNS if c in rep.columns]],
                                      {"weight_sqnr_db": FLOAT, "output_sqnr_db": FLOAT})
        self.overrides_label.value = html.escape(", ".join(f"{k}: {v}" for k, v in self.layer_bits.items())
                                                 or "none")

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
        self.sens_table.value = (f"<p>{html.escape(str(sens.attrs.get('metric', 'drop')))} per layer, most sensitive "
                                 f"first (weights of one layer quantized at a time)</p>"
                                 + table_html(shown, {c: FLOAT for c in shown.columns if c.startswith(("drop_", "sqnr_"))}))
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

    def build_int8(self) -> Any:
        """The real int8 model (``nbopt.quantize(mode="int8")``) with its measured speedup -> ``panel.int8``."""
        from ..quantization import quantize

        self.int8_html.value = "<i>building the int8 model (calibrating, compiling, timing)…</i>"
        self.int8 = quantize(self.model, self.calib, mode="int8", evaluate=self.evaluate,
                             backend=self.int8_backend, progress=False)
        r = self.int8
        acc = (f", accuracy <b>{100 * r.accuracy['quantized']:.2f}%</b> (fp32 {100 * r.accuracy['fp32']:.2f}%)"
               if r.accuracy else "")
        self.int8_html.value = (
            f"<div class='nbopt-int8-value'>{html.escape(r.label)}: latency {r.latency_ms['fp32']:.3f} → "
            f"<b>{r.latency_ms['quantized']:.3f} ms</b> (measured speedup <b>{r.speedup:.2f}x</b>){acc}; size "
            f"{readable_bytes(r.size_bytes['fp32']['disk'])} → {readable_bytes(r.size_bytes['quantized']['disk'])} "
            f"on disk → <code>panel.int8.model</code></div>")
        return r

    def _layer_options(self) -> list[str]:
        from ..layers import weighted_layers

        return list(weighted_layers(self.model))

    def __repr__(self) -> str:
        o = self.options()
        return f"QuantizationPanel(W{o['weight_bits']}/A{o['act_bits']}, {o['granularity']}, {self.result!r})"
