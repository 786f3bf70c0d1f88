"""``PruningPanel``: a sparsity/threshold slider over :class:`nbopt.Pruner` with a live per-layer table.

Front-end only: every number shown comes from the Pruner (``set``, ``report``, ``sparsity``,
``export``), from ``nbopt.pruning.result.summarize`` (measured size and latency) or from the user's
``evaluate``. The model passed in is never modified: the Pruner works on its own copy.
"""
from __future__ import annotations

import html
import math
from typing import Any, Callable

import ipywidgets as widgets
import pandas as pd
from torch import nn

from ..distillation import RECOVERY_METHODS
from ..errors import InputTypeError, NboptError
from ..inputs import check_module
from ..display.figures import plot_accuracy_history
from ..display.format import readable, readable_bytes
from .common import DEFAULT_DEBOUNCE_S, Panel, figure_widget, percent, show_figure, table_html

TABLE_COLUMNS = ["type", "sparsity", "params_before", "params_after", "dense_macs", "effective_macs",
                 "channels", "channels_kept"]
FORMATS = {"sparsity": percent, "params_before": readable, "params_after": readable, "dense_macs": readable,
           "effective_macs": readable}
STRUCTURED_THRESHOLD_MAX = 1.5  # structured importance is normalised to mean 1 per channel group
FP32_BYTES = 4


class PruningPanel(Panel):
    """Prune interactively: slider -> ``Pruner.set`` -> per-layer table, totals, accuracy, plot.

    >>> panel = nbopt.PruningPanel(model, example_input, evaluate=demo.evaluate)
    >>> panel                       # in a notebook: the widgets
    >>> panel.set(amount=0.5)       # what moving the slider does (renders once)
    >>> panel.report, panel.totals, panel.accuracy
    >>> pruned = panel.export()     # also clicking "Export"; the model is in panel.result
    >>> panel.recover()             # "Recover": distill (or fine-tune) it on train_data=, into panel.result

    ``measure_latency``: ``"button"`` (default) times the pruned model when "Measure" is clicked,
    ``True`` after every change (small models), ``False`` never. ``debounce``: seconds of quiet after
    the last slider event before the kernel updates (keyboard arrows send every press).
    """

    def __init__(self, model: nn.Module, inputs: Any, evaluate: Callable[[nn.Module], float] | None = None, *,
                 amount: float = 0.0, structured: bool = False, scope: str = "global", max_amount: float = 0.95,
                 step: float = 0.05, measure_latency: bool | str = "button", debounce: float = DEFAULT_DEBOUNCE_S,
                 train_data: Any = None, recover_epochs: int = 2, **pruner_options: Any) -> None:
        from ..pruning import Pruner

        check_module(model)
        if evaluate is not None and not callable(evaluate):
            raise InputTypeError("evaluate must be a function model -> accuracy (e.g. nbopt.demo.evaluate), "
                            f"got {type(evaluate).__name__}")
        if measure_latency not in (True, False, "button"):
            raise NboptError(f"measure_latency must be True, False or 'button', got {measure_latency!r}")
        if not (isinstance(max_amount, (int, float)) and 0 < max_amount < 1):
            raise NboptError(f"max_amount must be a fraction in (0, 1), got {max_amount!r}")
        self.model, self.inputs, self.evaluate = model, inputs, evaluate
        self.train_data, self.recover_epochs = train_data, recover_epochs
        self.recovered_accuracy: float | None = None
        self.measure_latency = measure_latency
        pruner_options.setdefault("progress", False)
        self.pruner = Pruner(model, inputs, **pruner_options)
        self.result: nn.Module | None = None
        self.report: pd.DataFrame = pd.DataFrame()
        self.totals: dict[str, float] = {}
        self.accuracy: float | None = None
        self.measured: pd.DataFrame | None = None
        self.figure: Any = None
        self._history: dict[tuple[str, str, float], float] = {}
        self._accuracy_cache: dict[tuple, float] = {}
        self._unstructured_threshold_max = self._largest_safe_threshold()

        style = {"description_width": "90px"}
        wide = lambda: widgets.Layout(width="460px")  # noqa: E731 - one Layout per widget (display toggles)
        self.by = widgets.ToggleButtons(options=[("sparsity", "amount"), ("threshold", "threshold")],
                                        value="amount", description="prune by", style=style)
        self.amount = widgets.FloatSlider(value=amount, min=0.0, max=max_amount, step=step, description="sparsity",
                                          continuous_update=False, readout_format=".2f", style=style, layout=wide())
        self.threshold = widgets.FloatSlider(value=0.0, min=0.0, max=self._unstructured_threshold_max,
                                             step=self._unstructured_threshold_max / 100, description="threshold",
                                             continuous_update=False, readout_format=".4f", style=style,
                                             layout=wide())
        self.threshold.layout.display = "none"
        self.structured = widgets.ToggleButtons(options=[("unstructured", False), ("structured", True)],
                                                value=structured, description="kind", style=style)
        self.scope = widgets.ToggleButtons(options=[("global", "global"), ("per layer", "layer")], value=scope,
                                           description="rank", style=style)
        self.override_layer = widgets.Dropdown(options=self.pruner.layer_names, description="layer", style=style)
        self.override_amount = widgets.FloatSlider(value=0.0, min=0.0, max=max_amount, step=step,
                                                   description="its sparsity", continuous_update=False,
                                                   readout_format=".2f", style=style)
        self.override_set = widgets.Button(description="Override layer", icon="plus")
        self.override_clear = widgets.Button(description="Clear overrides", icon="times")
        self.overrides_label = widgets.HTML()
        self.overrides: dict[str, float] = {}
        self.measure_button = widgets.Button(description="Measure latency", icon="clock-o",
                                             disabled=measure_latency is False)
        self.export_button = widgets.Button(description="Export", button_style="success", icon="download")
        self.recover_method = widgets.Dropdown(options=list(RECOVERY_METHODS), value="distill", description="recover",
                                               style=style, layout=widgets.Layout(width="200px"),
                                               disabled=train_data is None)
        self.recover_button = widgets.Button(description="Recover", icon="medkit", disabled=train_data is None,
                                             tooltip="train the pruned model (needs train_data=)")
        self.totals_html = widgets.HTML().add_class("nbopt-totals")
        self.accuracy_html = widgets.HTML().add_class("nbopt-accuracy")
        self.measured_html = widgets.HTML().add_class("nbopt-measured")
        self.table = widgets.HTML().add_class("nbopt-table")
        self.plot = figure_widget()

        self._init_panel(debounce)
        self.watch(self.amount, self.threshold, self.structured, self.scope)
        self.by.observe(self.guard(self._on_by), names="value")
        self.structured.observe(self.guard(self._on_structured), names="value")
        self.on_click(self.override_set, lambda: self.set_override(self.override_layer.value,
                                                                   self.override_amount.value))
        self.on_click(self.override_clear, self.clear_overrides)
        self.on_click(self.measure_button, self.measure)
        self.on_click(self.export_button, self.export)
        self.on_click(self.recover_button, self.recover)

        overrides_box = widgets.VBox([widgets.HBox([self.override_layer, self.override_amount]),
                                      widgets.HBox([self.override_set, self.override_clear, self.overrides_label])])
        accordion = widgets.Accordion(children=[overrides_box])
        accordion.set_title(0, "Per-layer overrides")
        left = widgets.VBox([self.by, self.amount, self.threshold, self.structured, self.scope, accordion,
                             widgets.HBox([self.measure_button, self.export_button]),
                             widgets.HBox([self.recover_method, self.recover_button]), self.status])
        right = widgets.VBox([self.accuracy_html, self.totals_html, self.measured_html, self.plot])
        self.widget = widgets.VBox([widgets.HBox([left, right]), self.table]).add_class("nbopt-pruning-panel")
        self._on_structured()
        self._first_update()

    # ------------------------------------------------------------------ controls for code and tests
    def set(self, amount: float | None = None, *, threshold: float | None = None, structured: bool | None = None,
            scope: str | None = None) -> "PruningPanel":
        """Move the controls as a user would (one update at the end); errors raise here, unlike in callbacks."""
        if amount is not None and threshold is not None:
            raise NboptError("give either amount= or threshold=, not both")
        with self.changing():
            if structured is not None:
                self.structured.value = structured
            if scope is not None:
                self.scope.value = scope
            if threshold is not None:
                self.by.value = "threshold"
                self.threshold.value = threshold
            elif amount is not None:
                self.by.value = "amount"
                self.amount.value = amount
        return self

    def set_override(self, layer: str, amount: float) -> "PruningPanel":
        """Give ``layer`` its own sparsity (checked by the Pruner on the next update)."""
        self.overrides[layer] = float(amount)
        try:
            self.update()
        except Exception:
            del self.overrides[layer]
            raise
        return self

    def clear_overrides(self) -> "PruningPanel":
        self.overrides.clear()
        self.update()
        return self

    def _on_by(self, change: Any = None) -> None:
        threshold = self.by.value == "threshold"
        self.threshold.layout.display = "" if threshold else "none"
        self.amount.layout.display = "none" if threshold else ""
        self._debounced()

    def _on_structured(self, change: Any = None) -> None:
        top = STRUCTURED_THRESHOLD_MAX if self.structured.value else self._unstructured_threshold_max
        with self.threshold.hold_trait_notifications():
            self.threshold.max = top
            self.threshold.step = top / 100
            self.threshold.value = min(self.threshold.value, top)
        self.threshold.description = "importance" if self.structured.value else "threshold"

    def _largest_safe_threshold(self) -> float:
        """Slider range: up to the smallest per-layer max |weight| (so no layer is ever emptied)."""
        tops = [float(self.pruner.original.get_submodule(n).weight.detach().abs().max())
                for n in self.pruner.layer_names]
        return min(tops) if tops else 1.0

    # ------------------------------------------------------------------ core calls and rendering
    def setting(self) -> dict[str, Any]:
        """The Pruner.set arguments the controls describe now."""
        by_threshold = self.by.value == "threshold"
        return {"amount": None if by_threshold else float(self.amount.value),
                "threshold": float(self.threshold.value) if by_threshold else None,
                "scope": self.scope.value, "structured": bool(self.structured.value),
                "overrides": dict(self.overrides)}

    def update(self) -> None:
        """Apply the controls' setting through the Pruner and re-render table, totals, accuracy, plot."""
        s = self.setting()
        self.pruner.set(s["amount"], threshold=s["threshold"], scope=s["scope"], structured=s["structured"],
                        overrides=s["overrides"])
        self.report = self.pruner.report
        rep = self.report
        self.totals = {
            "sparsity": self.pruner.sparsity,
            "params_before": float(rep["params_before"].sum()), "params_after": float(rep["params_after"].sum()),
            "dense_macs": float(rep["dense_macs"].sum()), "effective_macs": float(rep["effective_macs"].sum()),
        }
        self.totals["nonzero_bytes"] = FP32_BYTES * self.totals["params_after"]
        self.measured = None
        self.table.value = table_html(rep[[c for c in TABLE_COLUMNS if c in rep.columns]], FORMATS)
        self.totals_html.value = self._totals_text()
        self.overrides_label.value = html.escape(", ".join(f"{k}: {v:.2f}" for k, v in self.overrides.items())
                                                 or "none")
        if self.evaluate is not None:
            key = (repr(s), )
            if key not in self._accuracy_cache:
                self._accuracy_cache[key] = float(self.evaluate(self.pruner.model))
            self.accuracy = self._accuracy_cache[key]
            mode = ("structured" if s["structured"] else "unstructured") + ("" if s["scope"] == "global" else
                                                                            " per layer")
            self._history[(mode, repr(sorted(s["overrides"].items())), round(self.totals["sparsity"], 4))] = \
                self.accuracy
            self.accuracy_html.value = (f"<span class='nbopt-accuracy-value' style='font-size:1.3em'>accuracy "
                                        f"<b>{100 * self.accuracy:.2f}%</b></span> at "
                                        f"{100 * self.totals['sparsity']:.1f}% sparsity ({mode})")
            self._plot(mode)
        else:
            self.accuracy_html.value = "<i>accuracy: pass evaluate=... to see it</i>"
        if self.measure_latency is True:
            self.measure()
        else:
            self.measured_html.value = ("<i>latency: click “Measure latency” (times the exported model)</i>"
                                        if self.measure_latency == "button" else "")

    def _totals_text(self) -> str:
        t = self.totals
        return ("<table class='nbopt-totals-table'>"
                f"<tr><td>sparsity</td><td><b>{percent(t['sparsity'])}</b></td></tr>"
                f"<tr><td>params (nonzero)</td><td>{readable(t['params_after'])} of {readable(t['params_before'])}"
                "</td></tr>"
                f"<tr><td>MACs (effective)</td><td>{readable(t['effective_macs'])} of {readable(t['dense_macs'])}"
                "</td></tr>"
                f"<tr><td>size (nonzero fp32)</td><td>{readable_bytes(t['nonzero_bytes'])} of "
                f"{readable_bytes(FP32_BYTES * t['params_before'])}</td></tr></table>")

    def _plot(self, mode: str) -> None:
        history = pd.DataFrame([{"mode": m, "sparsity": sp, "accuracy": acc}
                                for (m, ov, sp), acc in self._history.items()])
        self.figure = plot_accuracy_history(history, (mode, self.totals["sparsity"], self.accuracy))
        show_figure(self.plot, self.figure)

    @property
    def history(self) -> pd.DataFrame:
        """Every (mode, sparsity, accuracy) explored so far (what the plot shows)."""
        return pd.DataFrame([{"mode": m, "overrides": ov, "sparsity": sp, "accuracy": acc}
                             for (m, ov, sp), acc in self._history.items()])

    def measure(self) -> pd.DataFrame:
        """Export the current setting and measure dense size and latency before/after (core ``summarize``)."""
        from ..pruning.result import summarize

        pruned = self.pruner.export()
        self.measured = summarize(self.model, pruned, self.inputs, self.report,
                                  latency=self.measure_latency is not False)
        m = self.measured
        lat = m.loc["latency_ms"] if "latency_ms" in m.index else None  # measure_latency=False: sizes only
        timed = (f"latency <b>{lat['before']:.3f} → {lat['after']:.3f} ms</b> ({lat['ratio']:.2f}x), "
                 if lat is not None else "")
        self.measured_html.value = (
            f"measured: {timed}"
            f"dense size {readable_bytes(m.loc['size_bytes', 'before'])} → "
            f"{readable_bytes(m.loc['size_bytes', 'after'])}"
            + ("" if self.structured.value else " <i>(unstructured zeros keep dense size and speed)</i>"))
        return m

    def export(self) -> nn.Module:
        """The pruned model for the current setting (independent of yours); also stored as ``panel.result``."""
        self.flush()
        self.result = self.pruner.export()
        n = sum(p.numel() for p in self.result.parameters())
        self.status.value = (f"<span class='nbopt-exported'>Exported: {type(self.result).__name__} with "
                             f"{readable(n)} params → <code>panel.result</code></span>")
        return self.result

    def recover(self) -> nn.Module:
        """Export the current setting and recover its accuracy (fine-tune, or distill from the unpruned model)
        on ``train_data``; the recovered model becomes ``panel.result``."""
        from ..distillation import recover

        if self.train_data is None:
            raise NboptError("Recover needs labelled training batches: PruningPanel(..., train_data=demo.train_loader())")
        self.flush()
        method = self.recover_method.value
        self.result = recover(self.pruner.export(), self.model, method, self.train_data, epochs=self.recover_epochs,
                              progress=False)
        acc = ""
        if self.evaluate is not None:
            self.recovered_accuracy = float(self.evaluate(self.result))
            acc = (f": accuracy {100 * self.accuracy:.2f}% → <b>{100 * self.recovered_accuracy:.2f}%</b>"
                   if self.accuracy is not None else f": accuracy {100 * self.recovered_accuracy:.2f}%")
        self.status.value = (f"<span class='nbopt-recovered'>Recovered by {method} ({self.recover_epochs} epochs)"
                             f"{acc} → <code>panel.result</code></span>")
        return self.result

    def __repr__(self) -> str:
        acc = "" if self.accuracy is None else f", accuracy={self.accuracy:.4f}"
        sp = self.totals.get("sparsity", math.nan)
        return f"PruningPanel({self.pruner!r}, sparsity={sp:.3f}{acc})"
