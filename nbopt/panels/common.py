"""Shared pieces of the panels: the :class:`Panel` base (debounce, error guard, display), figure output,
readable HTML.

Panels are front-ends only: widgets -> a call into the core -> rendering. Nothing here computes results.
"""
from __future__ import annotations

import asyncio
import contextlib
import html
import traceback
from typing import Any, Callable, Iterator

import ipywidgets as widgets
import pandas as pd

from ..errors import NboptError, describe_exception

DEFAULT_DEBOUNCE_S = 0.15


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Debouncer:
    """Coalesce a burst of widget events into one call of ``fn``, ``wait`` seconds after the last one.

    ipywidgets 8 sliders send every keyboard press even with ``continuous_update=False``; the kernel
    receives them one by one. When an event loop is running (inside a Jupyter kernel) each event only
    re-arms a timer on that loop, so the queued presses are drained quickly and the expensive update
    runs once for the final value. Without a loop (plain Python, tests) or with ``wait <= 0`` the
    call happens at once. :meth:`flush` runs a pending call now.
    """

    def __init__(self, fn: Callable[[], None], wait: float = DEFAULT_DEBOUNCE_S) -> None:
        if not callable(fn):
            raise TypeError("Debouncer needs a callable")
        if not isinstance(wait, (int, float)) or wait < 0:
            raise NboptError(f"debounce must be a number of seconds >= 0 (0 updates at once), got {wait!r}")
        self.fn, self.wait = fn, float(wait)
        self._handle: asyncio.TimerHandle | None = None
        self._held = 0
        self._missed = False
        self.calls = 0  # how many times fn actually ran (for tests and the benchmark)

    @contextlib.contextmanager
    def hold(self) -> Any:
        """Change several widgets inside this block; ``fn`` runs once at the end (if anything changed)."""
        self._held += 1
        try:
            yield self
        finally:
            self._held -= 1
            if not self._held and self._missed:
                self._missed = False
                self.flush()

    @property
    def pending(self) -> bool:
        return self._handle is not None

    def __call__(self, *_: Any) -> None:
        if self._held:
            self._missed = True
            return
        loop = _running_loop()
        if self.wait <= 0 or loop is None:
            self.flush()
            return
        if self._handle is not None:
            self._handle.cancel()
        self._handle = loop.call_later(self.wait, self.flush)

    def flush(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.calls += 1
        self.fn()


def error_html(exc: BaseException) -> str:
    """A visible message for an error raised inside a callback (NboptError messages say the fix)."""
    if isinstance(exc, (NboptError, TypeError)):
        text = str(exc)
    else:
        text = describe_exception(exc)
    tb = html.escape("".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:])
    return (f"<div class='nbopt-error' style='color:#b00020;border:1px solid #b00020;padding:4px 8px'>"
            f"<b>Error:</b> {html.escape(text)}<details><summary>traceback</summary><pre>{tb}</pre></details></div>")


class Guard:
    """Run panel callbacks so that errors land in the panel's status line instead of the log console."""

    def __init__(self, status: widgets.HTML) -> None:
        self.status = status
        self.last_error: BaseException | None = None

    def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - shown to the user inside the panel
                self.last_error = exc
                self.status.value = error_html(exc)
                return None
            self.last_error = None
            if "nbopt-error" in self.status.value:
                self.status.value = ""
            return result
        wrapped.__name__ = getattr(fn, "__name__", "callback")
        wrapped.__doc__ = getattr(fn, "__doc__", None)
        return wrapped


class Panel:
    """Widget plumbing every panel shares; a subclass builds its controls and implements :meth:`update`.

    * ``status`` (an HTML line) and ``guard`` (:class:`Guard`): errors raised by widget callbacks are shown
      in ``status`` instead of the log console; ``guard.last_error`` keeps the last one.
    * :meth:`update`: apply the current controls through the core and re-draw. Widget events reach it
      through a :class:`Debouncer` (:meth:`watch`), buttons through :meth:`on_click`.
    * :meth:`changing`: change several controls in code, update once; :meth:`flush` runs a pending update.
    * ``widget``: the top-level widget, displayed by ``_repr_mimebundle_``.

    Call :meth:`_init_panel` before building callbacks and :meth:`_first_update` at the end of ``__init__``.
    """

    widget: widgets.Widget
    status: widgets.HTML
    guard: Guard

    def _init_panel(self, debounce: float) -> None:
        self.status = widgets.HTML("")
        self.guard = Guard(self.status)
        self._debounced = Debouncer(self.guard(self.update), debounce)

    def _first_update(self) -> None:
        """The first render; an error shows in ``status`` like a callback's."""
        self.guard(self.update)()

    def update(self) -> None:
        """Apply the current controls through the core and re-draw the readouts."""
        raise NotImplementedError

    def watch(self, *controls: widgets.Widget) -> None:
        """A change of any of ``controls`` runs :meth:`update` (debounced, guarded)."""
        for control in controls:
            control.observe(self._debounced, names="value")

    def on_click(self, button: widgets.Button, action: Callable[[], Any]) -> None:
        """Clicking ``button`` runs ``action()`` (guarded: errors go to ``status``)."""
        button.on_click(self.guard(lambda _: action()))

    def flush(self) -> None:
        """Run a pending (debounced) update now."""
        if self._debounced.pending:
            self._debounced.flush()

    def raise_last_error(self) -> None:
        """Re-raise the error the last guarded callback showed in ``status`` (if it failed)."""
        if self.guard.last_error is not None:
            raise self.guard.last_error

    def assign(self, **values: Any) -> None:
        """Set each named control (an attribute of the panel) to its value, in the order given, skipping None:
        the keyword part of every panel's ``set``."""
        for name, value in values.items():
            if value is not None:
                getattr(self, name).value = value

    @contextlib.contextmanager
    def changing(self, *, raise_errors: bool = True) -> Iterator["Panel"]:
        """Change several controls inside this block; :meth:`update` runs once at the end, and its error (if
        any) is raised here with ``raise_errors`` (code gets exceptions; widget callbacks get ``status``)."""
        with self._debounced.hold():
            yield self
        self.flush()
        if raise_errors:
            self.raise_last_error()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


def show_figure(image: widgets.Image, fig: Any) -> None:
    """Replace ``image``'s picture with ``fig`` in place (PNG), then close the figure so none leaks.

    An ``Image`` widget is updated by state sync, so it also updates from debounced callbacks that run
    outside a kernel request; ``Output`` capture there did not reach the browser (seen in JupyterLab 4).
    """
    import io

    import matplotlib.pyplot as plt

    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        image.value = buf.getvalue()
    finally:
        plt.close(fig)


def figure_widget() -> widgets.Image:
    """An empty picture slot for :func:`show_figure`."""
    return widgets.Image(format="png", layout=widgets.Layout(max_width="560px")).add_class("nbopt-plot")


def _cell(value: Any) -> str:
    """Default display of a cell without a formatter: blank for missing, 6 significant digits for floats."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def table_html(df: pd.DataFrame, formats: dict[str, Callable[[Any], str]] | None = None,
               css_class: str = "nbopt-table") -> str:
    """HTML table of ``df`` with per-column formatters, built directly (a slider re-renders it on every change).

    Same layout as ``DataFrame.to_html``: a header row led by the index name, one ``<th>`` index cell per row.
    """
    formats = formats or {}
    cols = list(df.columns)
    fmts = [formats.get(c, _cell) for c in cols]
    values = [df[c].tolist() for c in cols]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in [df.index.name or ""] + cols)
    body = "".join(
        f"<tr><th>{html.escape(str(label))}</th>"
        + "".join(f"<td>{html.escape(fmt(vals[i]))}</td>" for fmt, vals in zip(fmts, values)) + "</tr>"
        for i, label in enumerate(df.index))
    return (f"<div class='{css_class}' style='max-height:420px;overflow:auto'><table border=\"1\" class=\"dataframe\">"
            f"<thead><tr style=\"text-align: right;\">{head}</tr></thead><tbody>{body}</tbody></table></div>")


def percent(value: Any) -> str:
    return "" if value is None or pd.isna(value) else f"{100 * float(value):.1f}%"



# ---------------------------------------------------------------- layout (ipywidgets 8), shared by the panels
#: descriptions take their natural width (no "Measure sensit…"), never a fixed pixel box
LABEL_STYLE = {"description_width": "initial"}
SLIDER_WIDTH = "440px"  # with an "initial"-width description and the readout, the track keeps >= ~250 px


def slider_layout(width: str = SLIDER_WIDTH) -> widgets.Layout:
    """A slider's own ``Layout`` (never share one: panels hide one slider at a time): fixed width that a flex
    row never shrinks."""
    return widgets.Layout(width=width, min_width=width, flex="0 0 auto")


def percent_format(step: float) -> str:
    """A fraction slider's readout format: "30%" (whole percents when the step allows, else one decimal)."""
    return ".0%" if round(step * 100, 6) == round(step * 100) else ".1%"


def button_layout(label: str, *, icon: bool = True) -> widgets.Layout:
    """A button's ``Layout`` wide enough for ``label`` (and its icon) in JupyterLab's UI font, never shrunk."""
    px = f"{max(100, 8 * len(label) + (44 if icon else 28))}px"
    return widgets.Layout(width=px, min_width=px, flex="0 0 auto")


def row(*children: widgets.Widget, **layout: Any) -> widgets.HBox:
    """A flex row whose children wrap onto the next line in a narrow notebook instead of being squashed."""
    return widgets.HBox(list(children), layout=widgets.Layout(flex_flow="row wrap", align_items="center",
                                                              **layout))


def column(*children: widgets.Widget, **layout: Any) -> widgets.VBox:
    """A flex column (``layout``: e.g. ``width``, ``flex``)."""
    return widgets.VBox(list(children), layout=widgets.Layout(**layout))


def table_widget(css_class: str = "nbopt-table") -> widgets.HTML:
    """An HTML slot for :func:`nbopt.display.frames.html_table`, in JupyterLab's own table style (the
    ``jp-RenderedHTMLCommon`` class: thin rules, striped rows; also in Voila)."""
    return widgets.HTML(layout=widgets.Layout(max_width="100%", overflow="auto")).add_class(css_class) \
        .add_class("jp-RenderedHTMLCommon")
