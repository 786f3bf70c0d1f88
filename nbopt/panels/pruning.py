"""``PruningPanel``: a sparsity/threshold slider over :class:`nbopt.Pruner` (or, for a language model, over
:func:`nbopt.pruning.llm.prune_llm`) with a live per-layer table.

Front-end only: every number shown comes from the Pruner (``set``, ``report``, ``sparsity``, ``export``), from
``nbopt.pruning.result.summarize`` (measured size and latency), from ``prune_llm`` and
``nbopt.quantization.metrics.lm_fidelity`` (language models), or from the user's ``evaluate`` / ``perplexity``.
The model passed in is never modified: the core works on its own copies.
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
from ..display.frames import html_table
from .common import (DEFAULT_DEBOUNCE_S, LABEL_STYLE, Panel, button_layout, column, figure_widget, percent,
                     percent_format, row, show_figure, slider_layout, table_widget)

TABLE_COLUMNS = ["type", "sparsity", "params_before", "params_after", "dense_macs", "effective_macs",
                 "channels", "channels_kept"]
LM_TABLE_COLUMNS = ["type", "weights", "weights_kept", "sparsity", "pattern"]
LM_KINDS = {"weights": "count", "weights_kept": "count", "pattern": "text"}
STRUCTURED_THRESHOLD_MAX = 1.5  # structured importance is normalised to mean 1 per channel group
FP32_BYTES = 4
#: what the amount / threshold sliders are called, per kind (structured or not)
AMOUNT_LABELS = {False: "sparsity", True: "channels removed"}
THRESHOLD_LABELS = {False: "threshold", True: "importance"}
PATTERNS = ("none", "2:4", "4:8")  # the N:M control of the language-model mode
LEFT_WIDTH = "460px"  # the controls' column; the plot column takes the rest and wraps below when narrow
TOGGLE_STYLE = {**LABEL_STYLE, "button_width": "110px"}


def is_causal_lm(model: nn.Module) -> bool:
    """A transformers causal language model (``*ForCausalLM``, ``*LMHeadModel``): the panel's LM mode."""
    cls = type(model)
    return cls.__module__.startswith("transformers") and cls.__name__.endswith(("ForCausalLM", "LMHeadModel"))


def amount_hint(structured: bool, round_to: int) -> str:
    """What the amount slider does, in words, for the kind chosen."""
    if structured:
        return (f"<b>channels removed</b>: fraction of the output channels of the channel groups removed, least "
                f"important first (each layer keeps a multiple of {round_to}); the headline gives the channels "
                "actually removed and the weight sparsity that results")
    return "<b>sparsity</b>: fraction of the prunable weights set to zero, smallest magnitudes first"


class PruningPanel(Panel):
    """Prune interactively: slider -> ``Pruner.set`` -> per-layer table, totals, accuracy, plot.

    >>> panel = nbopt.PruningPanel(model, example_input, evaluate=demo.evaluate)
    >>> panel                       # in a notebook: the widgets
    >>> panel.set(amount=0.5)       # what moving the slider does (renders once)
    >>> panel.report, panel.totals, panel.accuracy
    >>> pruned = panel.export()     # also clicking "Export"; the model is in panel.result
    >>> panel.recover()             # "Recover": distill (or fine-tune) it on train_data=, into panel.result

    A transformers causal LM (or ``lm=True``) gets the language-model controls instead: criterion
    (magnitude / Wanda, which needs ``calib=`` batches of input ids) and N:M pattern (none / 2:4 / 4:8) over
    :func:`nbopt.pruning.llm.prune_llm`, with token top-1 agreement and KL vs the dense model on
    ``fidelity_data`` (default: ``inputs``) and, given ``perplexity=`` (model -> float), perplexity:

    >>> panel = nbopt.PruningPanel(model, lm.example_input(), calib=lm.calibration_data(),
    ...                            perplexity=lm.perplexity, fidelity_data=lm.windows("heldout", 8, 128))
    >>> panel.set(0.5, criterion="wanda"); panel.set(pattern="2:4"); panel.metrics

    ``measure_latency``: ``"button"`` (default) times the pruned model when "Measure" is clicked,
    ``True`` after every change (small models), ``False`` never. ``debounce``: seconds of quiet after
    the last slider event before the kernel updates (keyboard arrows send every press).
    """

    def __init__(self, model: nn.Module, inputs: Any, evaluate: Callable[[nn.Module], float] | None = None, *,
                 amount: float = 0.0, structured: bool = False, scope: str = "global", max_amount: float = 0.95,
                 step: float = 0.05, measure_latency: bool | str = "button", debounce: float = DEFAULT_DEBOUNCE_S,
                 train_data: Any = None, recover_epochs: int = 2, lm: bool | None = None, calib: Any = None,
                 pattern: str | None = None, perplexity: Callable[[nn.Module], float] | None = None,
                 fidelity_data: Any = None, **pruner_options: Any) -> None:
        check_module(model)
        if evaluate is not None and not callable(evaluate):
            raise InputTypeError("evaluate must be a function model -> accuracy (e.g. nbopt.demo.evaluate), "
                                 f"got {type(evaluate).__name__}")
        if measure_latency not in (True, False, "button"):
            raise NboptError(f"measure_latency must be True, False or 'button', got {measure_latency!r}")
        if not (isinstance(max_amount, (int, float)) and 0 < max_amount < 1):
            raise NboptError(f"max_amount must be a fraction in (0, 1), got {max_amount!r}")
        self.lm = is_causal_lm(model) if lm is None else bool(lm)
        lm_only = [k for k, v in {"calib": calib, "pattern": pattern, "perplexity": perplexity,
                                  "fidelity_data": fidelity_data}.items() if v is not None]
        if lm_only and not self.lm:
            raise NboptError(f"{', '.join(lm_only)}= belong to the language-model mode, and "
                             f"{type(model).__name__} is not a transformers causal LM; pass lm=True to prune its "
                             "linear layers with prune_llm, or leave them out")
        self.model, self.inputs, self.evaluate = model, inputs, evaluate
        self.train_data, self.recover_epochs = train_data, recover_epochs
        self.recovered_accuracy: float | None = None
        self.measure_latency = measure_latency
        self.pruner: Any = None
        self.result: nn.Module | None = None
        self.report: pd.DataFrame = pd.DataFrame()
        self.totals: dict[str, float] = {}
        self.accuracy: float | None = None
        self.metrics: dict[str, float] = {}  # language models: token_top1, kl_div (, perplexity, dense_perplexity)
        self.measured: pd.DataFrame | None = None
        self.figure: Any = None
        self._history: dict[tuple[str, str, float], float] = {}
        self._accuracy_cache: dict[tuple, float] = {}

        self.amount = widgets.FloatSlider(value=amount, min=0.0, max=max_amount, step=step, description="sparsity",
                                          continuous_update=False, readout_format=percent_format(step),
                                          style=LABEL_STYLE,
                                          layout=slider_layout())
        self.hint = widgets.HTML(layout=widgets.Layout(width=LEFT_WIDTH)).add_class("nbopt-hint")
        self.export_button = widgets.Button(description="Export", button_style="success", icon="download",
                                            layout=button_layout("Export"))
        self.totals_html = widgets.HTML().add_class("nbopt-totals")
        self.accuracy_html = widgets.HTML().add_class("nbopt-accuracy")
        self.measured_html = widgets.HTML().add_class("nbopt-measured")
        self.table = table_widget("nbopt-table")
        self.plot = figure_widget()
        self.plot.layout.width = "100%"

        self._init_panel(debounce)
        if self.lm:
            controls = self._build_lm(evaluate, calib, pattern, perplexity, fidelity_data, pruner_options)
        else:
            controls = self._build_cnn(structured, scope, max_amount, step, train_data, pruner_options)
        self.on_click(self.export_button, self.export)
        left = column(*controls, self.status, width=LEFT_WIDTH, min_width=LEFT_WIDTH, flex="0 0 auto")
        right = column(self.accuracy_html, self.totals_html, self.measured_html, self.plot, flex="1 1 360px",
                       min_width="360px", max_width="600px")
        self.widget = widgets.VBox([row(left, right, width="100%"), self.table],
                                   layout=widgets.Layout(width="100%")).add_class("nbopt-pruning-panel")
        if self.lm:
            self._on_pattern()
        else:
            self._on_structured()
        self._first_update()

    # ------------------------------------------------------------------ building the controls
    def _build_cnn(self, structured: bool, scope: str, max_amount: float, step: float, train_data: Any,
                   pruner_options: dict[str, Any]) -> list[widgets.Widget]:
        from ..pruning import Pruner

        pruner_options.setdefault("progress", False)
        self.pruner = Pruner(self.model, self.inputs, **pruner_options)
        self._unstructured_threshold_max = self._largest_safe_threshold()
        self.by = widgets.ToggleButtons(options=[("fraction", "amount"), ("threshold", "threshold")],
                                        value="amount", description="prune by", style=TOGGLE_STYLE)
        self.threshold = widgets.FloatSlider(value=0.0, min=0.0, max=self._unstructured_threshold_max,
                                             step=self._unstructured_threshold_max / 100, description="threshold",
                                             continuous_update=False, readout_format=".4f", style=LABEL_STYLE,
                                             layout=slider_layout())
        self.threshold.layout.display = "none"
        self.structured = widgets.ToggleButtons(options=[("unstructured", False), ("structured", True)],
                                                value=structured, description="kind", style=TOGGLE_STYLE)
        self.scope = widgets.ToggleButtons(options=[("global", "global"), ("per layer", "layer")], value=scope,
                                           description="rank", style=TOGGLE_STYLE)
        self.override_layer = widgets.Dropdown(options=self.pruner.layer_names, description="layer",
                                               style=LABEL_STYLE, layout=widgets.Layout(width="420px"))
        self.override_amount = widgets.FloatSlider(value=0.0, min=0.0, max=max_amount, step=step,
                                                   description="its sparsity", continuous_update=False,
                                                   readout_format=percent_format(step), style=LABEL_STYLE,
                                                   layout=slider_layout())
        self.override_set = widgets.Button(description="Override layer", icon="plus",
                                           layout=button_layout("Override layer"))
        self.override_clear = widgets.Button(description="Clear overrides", icon="times",
                                             layout=button_layout("Clear overrides"))
        self.overrides_label = widgets.HTML()
        self.overrides: dict[str, float] = {}
        self.measure_button = widgets.Button(description="Measure latency", icon="clock-o",
                                             disabled=self.measure_latency is False,
                                             layout=button_layout("Measure latency"))
        self.recover_method = widgets.Dropdown(options=list(RECOVERY_METHODS), value="distill", description="recover",
                                               style=LABEL_STYLE, layout=widgets.Layout(width="200px"),
                                               disabled=train_data is None)
        self.recover_button = widgets.Button(description="Recover", icon="medkit", disabled=train_data is None,
                                             tooltip="train the pruned model (needs train_data=)",
                                             layout=button_layout("Recover"))

        self.watch(self.amount, self.threshold, self.structured, self.scope)
        self.by.observe(self.guard(self._on_by), names="value")
        self.structured.observe(self.guard(self._on_structured), names="value")
        self.on_click(self.override_set, lambda: self.set_override(self.override_layer.value,
                                                                   self.override_amount.value))
        self.on_click(self.override_clear, self.clear_overrides)
        self.on_click(self.measure_button, self.measure)
        self.on_click(self.recover_button, self.recover)

        overrides_box = column(self.override_layer, self.override_amount,
                               row(self.override_set, self.override_clear, self.overrides_label))
        accordion = widgets.Accordion(children=[overrides_box], layout=widgets.Layout(width="100%"))
        accordion.set_title(0, "Per-layer overrides")
        return [self.by, self.amount, self.threshold, self.hint, self.structured, self.scope, accordion,
                row(self.measure_button, self.export_button), row(self.recover_method, self.recover_button)]

    def _build_lm(self, evaluate: Any, calib: Any, pattern: str | None, perplexity: Any, fidelity_data: Any,
                  options: dict[str, Any]) -> list[widgets.Widget]:
        from ..pruning.llm import CRITERIA, DEFAULT_EXCLUDE

        if evaluate is not None:
            raise NboptError("a language model is judged by perplexity, not accuracy: pass perplexity= (a function "
                             "model -> perplexity, e.g. nbopt.demo.lm.perplexity) instead of evaluate=")
        if perplexity is not None and not callable(perplexity):
            raise InputTypeError("perplexity must be a function model -> perplexity (e.g. nbopt.demo.lm.perplexity), "
                                 f"got {type(perplexity).__name__}")
        criterion = options.pop("criterion", "wanda" if calib is not None else "magnitude")
        self.exclude = tuple(options.pop("exclude", DEFAULT_EXCLUDE))
        unknown = sorted(set(options) - {"progress"})
        if unknown:
            raise NboptError(f"{', '.join(unknown)}: not an option of the language-model PruningPanel (it takes "
                             "calib=, criterion=, pattern=, perplexity=, fidelity_data=, exclude=)")
        if criterion not in CRITERIA:
            raise NboptError(f"criterion={criterion!r} is not one of {CRITERIA} for a language model; pick one")
        if (pattern or "none") not in PATTERNS:
            raise NboptError(f"pattern={pattern!r} is not one of {PATTERNS}; pick one")
        self.calib, self.perplexity = calib, perplexity
        self.fidelity_data = inputs_or(fidelity_data, self.inputs)
        self.dense_perplexity: float | None = None
        self._llm_result: Any = None  # the LLMPruneResult of the current setting (None after a cached redraw)
        self._llm_key: tuple | None = None
        self._lm_cache: dict[tuple, tuple[pd.DataFrame, dict[str, float], dict[str, float]]] = {}
        self.criterion = widgets.ToggleButtons(options=[(c, c) for c in CRITERIA], value=criterion,
                                               description="criterion", style=TOGGLE_STYLE,
                                               tooltips=["|W|", "|W| x input norm (needs calib=)"])
        self.pattern = widgets.ToggleButtons(options=list(PATTERNS), value=pattern or "none",
                                             description="N:M pattern", style=TOGGLE_STYLE)
        self.watch(self.amount, self.criterion, self.pattern)
        self.pattern.observe(self.guard(self._on_pattern), names="value")
        return [self.criterion, self.pattern, self.amount, self.hint, row(self.export_button)]

    # ------------------------------------------------------------------ controls for code and tests
    def set(self, amount: float | None = None, *, threshold: float | None = None, structured: bool | None = None,
            scope: str | None = None, criterion: str | None = None, pattern: str | None = None) -> "PruningPanel":
        """Move the controls as a user would (one update at the end); errors raise here, unlike in callbacks.
        ``criterion`` and ``pattern`` ("none", "2:4", "4:8") are the language-model controls."""
        if amount is not None and threshold is not None:
            raise NboptError("give either amount= or threshold=, not both")
        cnn_only = {"threshold": threshold, "structured": structured, "scope": scope}
        lm_only = {"criterion": criterion, "pattern": pattern}
        wrong = [k for k, v in (cnn_only if self.lm else lm_only).items() if v is not None]
        if wrong:
            raise NboptError(f"{', '.join(wrong)}= is not a control of this panel "
                             f"({'language-model' if self.lm else 'CNN'} mode: "
                             f"{'amount, criterion, pattern' if self.lm else 'amount, threshold, structured, scope'})")
        with self.changing():
            if self.lm:
                self.assign(criterion=criterion, pattern=pattern, amount=amount)
                return self
            self.assign(structured=structured, scope=scope)
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
        structured = bool(self.structured.value)
        top = STRUCTURED_THRESHOLD_MAX if structured else self._unstructured_threshold_max
        with self.threshold.hold_trait_notifications():
            self.threshold.max = top
            self.threshold.step = top / 100
            self.threshold.value = min(self.threshold.value, top)
        self.threshold.description = THRESHOLD_LABELS[structured]
        self.amount.description = AMOUNT_LABELS[structured]
        self.override_amount.description = f"its {AMOUNT_LABELS[structured]}"
        self.hint.value = f"<span style='font-size:90%'>{amount_hint(structured, self.pruner.round_to)}</span>"

    def _on_pattern(self, change: Any = None) -> None:
        nm = self.pattern.value != "none"
        self.amount.disabled = nm
        n, m = (int(v) for v in self.pattern.value.split(":")) if nm else (0, 1)
        self.hint.value = ("<span style='font-size:90%'>" + (
            f"<b>{self.pattern.value}</b>: {n} of every {m} consecutive input weights of each row are kept, so "
            f"every pruned linear is exactly {1 - n / m:.0%} sparse (the slider does not apply)" if nm else
            "<b>sparsity</b>: fraction of the weights of each output row of every linear layer set to zero "
            f"(least important first; {', '.join(self.exclude) or 'no layer'} kept dense)") + "</span>")

    def _largest_safe_threshold(self) -> float:
        """Slider range: up to the smallest per-layer max |weight| (so no layer is ever emptied)."""
        tops = [float(self.pruner.original.get_submodule(n).weight.detach().abs().max())
                for n in self.pruner.layer_names]
        return min(tops) if tops else 1.0

    # ------------------------------------------------------------------ core calls and rendering
    def setting(self) -> dict[str, Any]:
        """The core's arguments the controls describe now (``Pruner.set``'s, or ``prune_llm``'s)."""
        if self.lm:
            nm = self.pattern.value != "none"
            return {"criterion": self.criterion.value, "pattern": self.pattern.value if nm else None,
                    "sparsity": None if nm else float(self.amount.value)}
        by_threshold = self.by.value == "threshold"
        return {"amount": None if by_threshold else float(self.amount.value),
                "threshold": float(self.threshold.value) if by_threshold else None,
                "scope": self.scope.value, "structured": bool(self.structured.value),
                "overrides": dict(self.overrides)}

    def update(self) -> None:
        """Apply the controls' setting through the core and re-render table, totals, metrics, plot."""
        if self.lm:
            self._update_lm()
            return
        s = self.setting()
        self.pruner.set(s["amount"], threshold=s["threshold"], scope=s["scope"], structured=s["structured"],
                        overrides=s["overrides"])
        self.report = self.pruner.report
        rep = self.report
        self.totals = {
            "sparsity": self.pruner.sparsity,
            "channels_removed": 1.0 - float(rep["channels_kept"].sum()) / max(1.0, float(rep["channels"].sum())),
            "params_before": float(rep["params_before"].sum()), "params_after": float(rep["params_after"].sum()),
            "dense_macs": float(rep["dense_macs"].sum()), "effective_macs": float(rep["effective_macs"].sum()),
        }
        self.totals["nonzero_bytes"] = FP32_BYTES * self.totals["params_after"]
        self.measured = None
        self.table.value = html_table(rep[[c for c in TABLE_COLUMNS if c in rep.columns]], where="`panel.report`")
        self.totals_html.value = self._totals_text()
        self.overrides_label.value = html.escape(", ".join(f"{k}: {v:.2f}" for k, v in self.overrides.items())
                                                 or "none")
        mode = self.mode()
        if self.evaluate is not None:
            key = (repr(s), )
            if key not in self._accuracy_cache:
                self._accuracy_cache[key] = float(self.evaluate(self.pruner.model))
            self.accuracy = self._accuracy_cache[key]
            self._history[(mode, repr(sorted(s["overrides"].items())), round(self.totals["sparsity"], 4))] = \
                self.accuracy
            self.accuracy_html.value = (f"<span class='nbopt-accuracy-value' style='font-size:1.3em'>accuracy "
                                        f"<b>{100 * self.accuracy:.2f}%</b></span> with {self.headline()}" +
                                        self._setting_tag(s))
            self._plot(mode)
        else:
            self.accuracy_html.value = (f"<i>accuracy: pass evaluate=... to see it</i> · {self.headline()}" +
                                        self._setting_tag(s))
        if self.measure_latency is True:
            self.measure()
        else:
            self.measured_html.value = ("<i>latency: click “Measure latency” (times the exported model)</i>"
                                        if self.measure_latency == "button" else "")

    @staticmethod
    def _setting_tag(setting: dict[str, Any]) -> str:
        """An empty element naming the slider amount these readouts belong to (``data-amount``), so a page (or a
        browser test) can tell the final render from one made for an earlier slider event."""
        attrs = " ".join(f"data-{key}='{float(setting[key]):.6f}'" for key in ("amount", "threshold")
                         if setting.get(key) is not None)
        return f"<span class='nbopt-setting' {attrs}></span>"

    def mode(self) -> str:
        """The plot's series of the current setting: "structured", "unstructured per layer", "wanda 2:4", ..."""
        if self.lm:
            s = self.setting()
            return s["criterion"] + (f" {s['pattern']}" if s["pattern"] else "")
        return ("structured" if self.structured.value else "unstructured") + \
            ("" if self.scope.value == "global" else " per layer")

    def headline(self) -> str:
        """The current setting in words: weight sparsity, and for structured pruning the channels removed."""
        t = self.totals
        if not self.lm and self.structured.value:
            return (f"<b>{percent(t['channels_removed'])}</b> of all output channels removed → "
                    f"<b>{percent(t['sparsity'])}</b> weight sparsity ({self.mode()})")
        return f"<b>{percent(t['sparsity'])}</b> weight sparsity ({self.mode()})"

    def _totals_text(self) -> str:
        t = self.totals
        channels = (f"<tr><td>channels removed</td><td><b>{percent(t['channels_removed'])}</b></td></tr>"
                    if self.structured.value else "")
        return ("<table class='nbopt-totals-table'>"
                f"<tr><td>weight sparsity</td><td><b>{percent(t['sparsity'])}</b></td></tr>{channels}"
                f"<tr><td>params (nonzero)</td><td>{readable(t['params_after'])} of {readable(t['params_before'])}"
                "</td></tr>"
                f"<tr><td>MACs (effective)</td><td>{readable(t['effective_macs'])} of {readable(t['dense_macs'])}"
                "</td></tr>"
                f"<tr><td>size (nonzero fp32)</td><td>{readable_bytes(t['nonzero_bytes'])} of "
                f"{readable_bytes(FP32_BYTES * t['params_before'])}</td></tr></table>")

    def _plot(self, mode: str, current: float | None = None, **labels: str) -> None:
        history = pd.DataFrame([{"mode": m, "sparsity": sp, "accuracy": acc}
                                for (m, ov, sp), acc in self._history.items()])
        value = self.accuracy if current is None else current
        self.figure = plot_accuracy_history(history, (mode, self.totals["sparsity"], value), **labels)
        show_figure(self.plot, self.figure)

    @property
    def history(self) -> pd.DataFrame:
        """Every (mode, sparsity, accuracy) explored so far (what the plot shows; LM mode: token top-1 agreement
        in ``accuracy``)."""
        return pd.DataFrame([{"mode": m, "overrides": ov, "sparsity": sp, "accuracy": acc}
                             for (m, ov, sp), acc in self._history.items()])

    # ------------------------------------------------------------------ language models
    def _update_lm(self) -> None:
        """prune_llm for the setting (cached per setting), LM metrics vs the dense model, table, plot."""
        s = self.setting()
        key = (s["criterion"], s["pattern"], s["sparsity"])
        if key not in self._lm_cache:
            self._llm_result, self._llm_key = None, None  # nothing stale is left if the core raises
            result = self._prune_lm(s)
            self._lm_cache[key] = (lm_report(result), self._lm_metrics(result), {"sparsity": result.sparsity})
            self._llm_result = result
        elif self._llm_key != key:
            self._llm_result = None  # a revisited setting: only its numbers are cached; llm_result rebuilds it
        self._llm_key = key
        self.report, metrics, totals = self._lm_cache[key]
        self.metrics = dict(metrics)
        rep = self.report
        self.totals = {**totals, "weights": float(rep["weights"].sum()),
                       "weights_kept": float(rep["weights_kept"].sum())}
        self.table.value = html_table(rep[LM_TABLE_COLUMNS], kinds=LM_KINDS, where="`panel.report`")
        self.totals_html.value = self._lm_totals_text()
        self.accuracy_html.value = self._lm_headline()
        self._history[(self.mode(), "", round(self.totals["sparsity"], 4))] = self.metrics["token_top1"]
        self._plot(self.mode(), self.metrics["token_top1"], ylabel="token top-1 agreement vs dense (%)",
                   xlabel="sparsity (% of the linear layers' weights zeroed)")

    @property
    def llm_result(self) -> Any:
        """The ``LLMPruneResult`` of the current setting (masks, pruned model); rebuilt by ``prune_llm`` when the
        setting was revisited (the panel caches only the numbers of earlier settings)."""
        if not self.lm:
            return None
        self.flush()
        if self._llm_result is None:
            self._llm_result = self._prune_lm(self.setting())
        return self._llm_result

    def _prune_lm(self, s: dict[str, Any]) -> Any:
        from ..pruning.llm import prune_llm

        return prune_llm(self.model, self.calib, sparsity=s["sparsity"] or 0.0, pattern=s["pattern"],
                         criterion=s["criterion"], exclude=self.exclude, progress=False)

    def _lm_metrics(self, result: Any) -> dict[str, float]:
        """Token top-1 agreement and KL vs the dense model (``lm_fidelity``) and, given ``perplexity``, the
        pruned and dense perplexities (the dense one measured once)."""
        from ..quantization.metrics import lm_fidelity

        out = lm_fidelity(self.model, result.model, self.fidelity_data)
        if self.perplexity is not None:
            if self.dense_perplexity is None:
                self.dense_perplexity = float(self.perplexity(self.model))
            unpruned = result.sparsity == 0  # nothing zeroed: the weights are yours
            out["perplexity"] = self.dense_perplexity if unpruned else float(self.perplexity(result.model))
            out["dense_perplexity"] = self.dense_perplexity
        return out

    def _lm_headline(self) -> str:
        m = self.metrics
        ppl = (f" · perplexity <b>{m['perplexity']:.3f}</b> (dense {m['dense_perplexity']:.3f})"
               if "perplexity" in m else " · <i>perplexity: pass perplexity=... to see it</i>")
        return (f"<span class='nbopt-lm-metrics' style='font-size:1.15em'>token top-1 agreement "
                f"<b>{100 * m['token_top1']:.2f}%</b> · KL <b>{m['kl_div']:.4f}</b> nats</span>{ppl}"
                f"<br>with {self.headline()}")

    def _lm_totals_text(self) -> str:
        t = self.totals
        return ("<table class='nbopt-totals-table'>"
                f"<tr><td>weight sparsity</td><td><b>{percent(t['sparsity'])}</b> of {len(self.report)} linear "
                "layers</td></tr>"
                f"<tr><td>weights kept</td><td>{readable(t['weights_kept'])} of {readable(t['weights'])}</td></tr>"
                f"<tr><td>dense layers</td><td>{html.escape(', '.join(self.exclude)) or 'none'}</td></tr>"
                "<tr><td>speed</td><td><i>dense CPU kernels do not skip zeros: same speed as the dense model"
                "</i></td></tr></table>")

    # ------------------------------------------------------------------ actions
    def measure(self) -> pd.DataFrame:
        """Export the current setting and measure dense size and latency before/after (core ``summarize``)."""
        from ..pruning.result import summarize

        if self.lm:
            raise NboptError("measure() times the CNN Pruner's export; a language model pruned to zeros runs at "
                             "the dense speed on CPU kernels (see panel.totals)")
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
        from ..model_state import working_copy

        self.flush()
        if self.lm:
            self.result = working_copy(self.llm_result.model)
        else:
            self.result = self.pruner.export()
        n = sum(p.numel() for p in self.result.parameters())
        self.status.value = (f"<span class='nbopt-exported'>Exported: {type(self.result).__name__} with "
                             f"{readable(n)} params → <code>panel.result</code></span>")
        return self.result

    def recover(self) -> nn.Module:
        """Export the current setting and recover its accuracy (fine-tune, or distill from the unpruned model)
        on ``train_data``; the recovered model becomes ``panel.result``."""
        from ..distillation import recover

        if self.lm:
            raise NboptError("Recover is the CNN panel's action; for a language model export it (panel.export()) "
                             "and train it with your own loop")
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
        sp = self.totals.get("sparsity", math.nan)
        if self.lm:
            m = self.metrics
            top1 = f", token_top1={m['token_top1']:.4f}" if "token_top1" in m else ""
            return f"PruningPanel({type(self.model).__name__}, {self.mode()}, sparsity={sp:.3f}{top1})"
        acc = "" if self.accuracy is None else f", accuracy={self.accuracy:.4f}"
        return f"PruningPanel({self.pruner!r}, sparsity={sp:.3f}{acc})"


def inputs_or(data: Any, default: Any) -> Any:
    """``data``, or ``default`` when it is None."""
    return default if data is None else data


def lm_report(result: Any) -> pd.DataFrame:
    """One row per pruned linear of an ``LLMPruneResult``, from its keep masks: weights, kept, sparsity."""
    rows = []
    for name, keep in result.masks.items():
        kept = int(keep.sum())
        rows.append({"layer": name, "type": type(result.model.get_submodule(name)).__name__,
                     "weights": keep.numel(), "weights_kept": kept, "sparsity": 1.0 - kept / keep.numel(),
                     "pattern": result.pattern or ""})
    return pd.DataFrame(rows, columns=["layer", *LM_TABLE_COLUMNS]).set_index("layer")
