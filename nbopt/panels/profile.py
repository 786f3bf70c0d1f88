"""``ProfilePanel``: explore a :class:`nbopt.profile.Profile` (group by layer/type/depth, top-k, metric plotted)."""
from __future__ import annotations

import html
from typing import Any

import ipywidgets as widgets
import pandas as pd

from ..display import figures, tables
from ..display import format as fmt
from ..errors import InputTypeError
from ..profiling import Profile
from .common import DEFAULT_DEBOUNCE_S, Panel, figure_widget, show_figure

METRICS = ("macs", "flops", "params", "self_latency_ms", "out_bytes")
GROUPS = (*tables.VIEWS, "depth")


class ProfilePanel(Panel):
    """Explore a Profile: rows per layer, per type or collapsed at a depth; top-k by a metric; a bar plot.

    >>> panel = ProfilePanel(nbopt.profile(model, x))
    >>> panel                 # in a notebook: the widgets
    >>> panel.set(by="type", metric="flops", top=5)
    >>> panel.rows            # the DataFrame currently shown (raw numbers from the Profile)
    """

    def __init__(self, profile: Profile, *, top: int = 10, metric: str = "macs", by: str = "layer",
                 depth: int = 1, plot: bool = True, debounce: float = DEFAULT_DEBOUNCE_S) -> None:
        if not isinstance(profile, Profile):
            raise InputTypeError(f"ProfilePanel takes an nbopt Profile (from nbopt.profile(model, inputs)), "
                            f"got {type(profile).__name__}; use ProfilePanel.from_model(model, inputs) for a model.")
        self.profile = profile
        metrics = [m for m in METRICS if m in profile.table.columns and
                   (m != "self_latency_ms" or profile.latency_ms is not None)]
        max_depth = int(profile.table["depth"].max()) if len(profile.table) else 1
        n_rows = max(len(profile.layers), 1)
        self.by = widgets.ToggleButtons(options=list(GROUPS), value=by, description="group by")
        self.depth = widgets.IntSlider(value=min(depth, max_depth), min=1, max=max(max_depth, 1),
                                       description="depth", continuous_update=False)
        self.top = widgets.IntSlider(value=min(top, n_rows), min=1, max=n_rows, description="top k",
                                     continuous_update=False)
        self.metric = widgets.Dropdown(options=metrics, value=metric if metric in metrics else "macs",
                                       description="metric")
        self.show_plot = widgets.Checkbox(value=plot, description="plot")
        self.summary = widgets.HTML(f"<b>{html.escape(tables.summary_line(profile))}</b>")
        self.notes = widgets.HTML(tables.notes_html(profile))
        self.table = widgets.HTML()
        self.plot = figure_widget()
        self.rows: pd.DataFrame = pd.DataFrame()
        self.figure: Any = None
        self._init_panel(debounce)
        self.watch(self.by, self.depth, self.top, self.metric, self.show_plot)
        controls = widgets.HBox([self.by, self.metric, self.show_plot])
        self.widget = widgets.VBox([self.summary, self.notes, controls, widgets.HBox([self.top, self.depth]),
                                    self.status, self.table, self.plot])
        self._first_update()

    @classmethod
    def from_model(cls, model: Any, inputs: Any, *, latency: bool = True, **options: Any) -> "ProfilePanel":
        """Profile ``model`` on ``inputs`` with :func:`nbopt.profile` and open the panel on the result."""
        from ..profiling import profile

        return cls(profile(model, inputs, latency=latency), **options)

    def set(self, *, by: str | None = None, metric: str | None = None, top: int | None = None,
            depth: int | None = None) -> "ProfilePanel":
        """Change several controls at once and render once (what the widgets do, for code and tests).

        An error while rendering is shown in ``status`` (as from the widgets), not raised.
        """
        with self.changing(raise_errors=False):
            self.assign(by=by, metric=metric, top=top, depth=depth)
        return self

    def update(self) -> None:
        """Re-select the rows for the current controls and re-draw the table and the plot."""
        by, metric = self.by.value, self.metric.value
        self.depth.layout.visibility = "visible" if by == "depth" else "hidden"
        rows = tables.view(self.profile, by="type" if by == "type" else "layer",
                           depth=self.depth.value if by == "depth" else None)
        sort = metric if metric in rows.columns else ("latency_ms" if metric == "self_latency_ms" else "macs")
        rows = rows.sort_values(sort, ascending=False).head(self.top.value)
        self.rows = rows
        self.table.value = fmt.format_table(tables.shown_columns(rows)).to_html(escape=True)
        if self.show_plot.value:
            label = {"layer": "layers", "type": "layer types", "depth": f"modules at depth {self.depth.value}"}[by]
            self.figure = figures.plot_bars(rows, sort, f"Top {len(rows)} {label} by {sort}")
            show_figure(self.plot, self.figure)
        else:
            self.figure = None
            self.plot.value = b""

    def refresh(self) -> None:
        """The same as :meth:`update` (this panel's name for it before the :class:`Panel` base)."""
        self.update()

    def __repr__(self) -> str:
        return (f"ProfilePanel(by={self.by.value}, metric={self.metric.value}, top={self.top.value}, "
                f"{len(self.profile.layers)} layers)")
