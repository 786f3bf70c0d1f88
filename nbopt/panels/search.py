"""``SearchPanel``: run a compression search and watch its Pareto front grow; pick a point, see its settings,
build it.

Front-end only: the trials come from :func:`nbopt.search` (an Optuna study in its storage), the front from
``SearchResult``, the model from ``SearchResult.build``; the figure from ``display.search_figures``.
"""
from __future__ import annotations

import html
from typing import Any, Callable

import ipywidgets as widgets
import pandas as pd
from torch import nn

from ..display.search_figures import plot_front
from ..errors import InputTypeError
from ..inputs import check_module
from ..display.frames import html_table
from .common import LABEL_STYLE, Panel, button_layout, column, figure_widget, row, show_figure, table_widget

SHOWN = ["accuracy", "accuracy_drop", "latency_ms", "size_bytes", "params"]
LEFT_WIDTH = "440px"  # the controls' column; the front plot takes the rest and wraps below when narrow


class SearchPanel(Panel):
    """A live search: "Run" adds trials (the front is redrawn as each finishes), the dropdown picks a front
    point, "Build" rebuilds it (``panel.built``).

    >>> panel = nbopt.SearchPanel(model, x, calib=demo.calibration_data(), evaluate=demo.evaluate,
    ...                           storage="study.db", n_trials=12)
    >>> panel                 # in a notebook: the widgets; click Run, or:
    >>> panel.run()           # the same in code; panel.result is the SearchResult
    >>> panel.pick(3); panel.build()
    """

    def __init__(self, model: nn.Module, example_input: Any, *, calib: Any, evaluate: Callable[[nn.Module], float],
                 n_trials: int = 10, **search_options: Any) -> None:
        check_module(model)
        if not callable(evaluate):
            raise InputTypeError(f"evaluate must be a function model -> accuracy, got {type(evaluate).__name__}")
        self.model, self.example_input, self.calib, self.evaluate = model, example_input, calib, evaluate
        self.options = dict(search_options)
        self.result: Any = None
        self.built: nn.Module | None = None
        self.figure: Any = None
        self.draws = 0  # how many times the front was drawn (once per finished trial while running)
        self.trials = widgets.IntText(value=n_trials, description="trials", style=LABEL_STYLE,
                                      layout=widgets.Layout(width="160px", min_width="160px"))
        self.run_button = widgets.Button(description="Run", button_style="primary", icon="play",
                                         tooltip="run this many more trials into the study",
                                         layout=button_layout("Run"))
        self.point = widgets.Dropdown(options=[], description="front point", style=LABEL_STYLE,
                                      layout=widgets.Layout(width=LEFT_WIDTH, min_width="300px"))
        self.build_button = widgets.Button(description="Build", button_style="success", icon="cogs",
                                           tooltip="rebuild the picked front point -> panel.built",
                                           layout=button_layout("Build"))
        self.progress = widgets.HTML("").add_class("nbopt-search-progress")
        self.settings = table_widget("nbopt-search-settings")
        self.front_table = table_widget("nbopt-table")
        self.plot = figure_widget()
        self.plot.layout.width = "100%"
        self._init_panel(0)
        self.watch(self.point)
        self.on_click(self.run_button, self.run)
        self.on_click(self.build_button, self.build)
        left = column(row(self.trials, self.run_button), self.progress, row(self.point, self.build_button),
                      self.settings, self.status, width=LEFT_WIDTH, min_width=LEFT_WIDTH, flex="0 0 auto")
        right = column(self.plot, flex="1 1 360px", min_width="360px", max_width="600px")
        self.widget = widgets.VBox([row(left, right, width="100%"), self.front_table],
                                   layout=widgets.Layout(width="100%")).add_class("nbopt-search-panel")
        self._first_update()

    # ------------------------------------------------------------------ actions
    def run(self, n_trials: int | None = None) -> Any:
        """Run ``n_trials`` more trials (default: the "trials" box) into the study; redraws after each."""
        from ..autosearch import search

        n = int(self.trials.value if n_trials is None else n_trials)
        self._done = 0
        self.result = search(self.model, self.example_input, calib=self.calib, evaluate=self.evaluate,
                             n_trials=n, callback=lambda t: self._live(t, n), **self.options)
        self._refresh()
        self.progress.value = f"{len(self.result.trials)} trials in study <code>{html.escape(self.result.study_name)}</code>"
        return self.result

    def pick(self, trial: int) -> "SearchPanel":
        """Select front point ``trial`` (what the dropdown does)."""
        self.point.value = trial
        self.flush()
        self.raise_last_error()
        return self

    def build(self) -> nn.Module:
        """Rebuild the selected point's model (``panel.built``)."""
        if self.result is None or self.point.value is None:
            raise ValueError("run the search first (Run), then pick a front point")
        self.built = self.result.build(self.point.value)
        self.status.value = (f"<span class='nbopt-built'>Built trial {self.point.value}: "
                             f"{type(self.built).__name__} → <code>panel.built</code></span>")
        return self.built

    # ------------------------------------------------------------------ rendering
    def _live(self, trial: Any, n: int) -> None:
        """After each finished trial: re-read the study and redraw the front."""
        from ..autosearch.result import pareto, trials_frame

        self._done += 1
        study = self._study()
        trials = trials_frame(study)
        objs = tuple(study.user_attrs.get("nbopt", {}).get("objectives", ("latency", "accuracy")))
        self._draw(trials, pareto(trials, objs), objs)
        self.progress.value = f"trial {self._done} of {n} finished (trial #{trial.number}: {trial.state.name})"

    def _study(self) -> Any:
        from ..autosearch.study import open_storage, optuna_module, storage_url

        return optuna_module().load_study(study_name=self.options.get("study_name", "nbopt-search"),
                                          storage=open_storage(storage_url(self.options.get("storage"))))

    def _refresh(self) -> None:
        r = self.result
        self._draw(r.trials, r.front, r.objectives)
        labels = [(self._label(i, row), i) for i, row in r.front.iterrows()]
        with self._debounced.hold():  # one update for the new options and value
            self.point.options = labels
            self.point.value = labels[0][1] if labels else None
        self.front_table.value = html_table(r.front[[c for c in SHOWN if c in r.front]], where="`panel.result.front`",
                                            caption="Pareto front") if len(r.front) else \
            "<i>no feasible trial yet (none within the accuracy budget)</i>"
        self.update()

    def _draw(self, trials: pd.DataFrame, front: pd.DataFrame, objectives: tuple[str, ...]) -> None:
        x = "latency_ms" if "latency" in objectives else ("size_bytes" if "size" in objectives else "params")
        refs = {}
        if self.result is not None:
            refs = {k: (v.get(x, float("nan")), v.get("accuracy", float("nan")))
                    for k, v in self.result.references.items()}
        self.figure = plot_front(trials, front, x=x, references=refs, highlight=self.point.value)
        show_figure(self.plot, self.figure)
        self.draws += 1

    @staticmethod
    def _label(i: int, row: pd.Series) -> str:
        lat = f", {row['latency_ms']:.3f} ms" if row.get("latency_ms") == row.get("latency_ms") else ""
        return f"trial {i}: accuracy {100 * row['accuracy']:.2f}%{lat}"

    def update(self) -> None:
        """Show the selected point's settings (pruning amounts, precision, bits, recovery)."""
        if self.result is None or self.point.value is None:
            self.settings.value = "<i>click Run to start the search</i>"
            return
        cfg = self.result.config(self.point.value)
        rows = {"structured amount (other groups)": cfg["amount"],
                **{f"prune {k}": v for k, v in cfg["overrides"].items()},
                "precision": cfg["quant"] + (f" ({cfg['backend']})" if cfg["quant"] == "int8" else
                                             f" ({cfg.get('runtime', 'torch')})" if cfg["quant"] == "fp32" else ""),
                **{f"bits {k}": v for k, v in cfg["bits"].items()}, "recovery": _recovery(cfg)}
        df = pd.DataFrame({"setting": [str(v) for v in rows.values()]}, index=pd.Index(list(rows), name="trial "
                                                                                      f"{self.point.value}"))
        self.settings.value = html_table(df, kinds={"setting": "text"}, max_rows=None)
        self._draw(self.result.trials, self.result.front, self.result.objectives)

    def __repr__(self) -> str:
        n = 0 if self.result is None else len(self.result.trials)
        return f"SearchPanel({n} trials, front {0 if self.result is None else len(self.result.front)})"


def _recovery(cfg: dict) -> str:
    """"distill, 8 epochs, lr 0.003" (what the trial's recovery did; epochs/lr only where the trial chose them)."""
    if cfg["recover"] == "none":
        return "none"
    extra = [f"{cfg['epochs']} epochs"] if cfg.get("epochs") else []
    extra += [f"lr {cfg['lr']:g}"] if cfg.get("lr") else []
    return ", ".join([cfg["recover"], *extra])
