"""panels.common.table_html: the cells a panel shows, in DataFrame.to_html's layout, escaped."""
from __future__ import annotations

import math
from html.parser import HTMLParser

import pandas as pd

from nbopt.panels.common import percent, table_html


class _Cells(HTMLParser):
    """Text of every th/td, row by row."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("th", "td"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("th", "td") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def test_cells_formats_and_escaping():
    df = pd.DataFrame({"type": ["Conv2d", "<Linear>"], "sparsity": [0.5, 0.25], "bits": [8, 4],
                       "sqnr": [1 / 3, math.nan], "kept": [None, True]},
                      index=pd.Index(["stem.0", "fc"], name="layer"))
    out = table_html(df, {"sparsity": percent})
    parser = _Cells()
    parser.feed(out)
    assert parser.rows == [["layer", "type", "sparsity", "bits", "sqnr", "kept"],
                           ["stem.0", "Conv2d", "50.0%", "8", "0.333333", ""],
                           ["fc", "<Linear>", "25.0%", "4", "", "True"]]
    assert "&lt;Linear&gt;" in out and "<th>stem.0</th>" in out and "class='nbopt-table'" in out


def test_panel_base_plumbing():
    """The Panel base: debounced+guarded update, errors in status (raised by changing()), one update per batch."""
    import ipywidgets as widgets
    import pytest

    from nbopt.errors import NboptError
    from nbopt.panels.common import Panel
    from nbopt.panels.profile import ProfilePanel
    from nbopt.panels.pruning import PruningPanel
    from nbopt.panels.quantization import QuantizationPanel

    assert all(issubclass(c, Panel) for c in (ProfilePanel, PruningPanel, QuantizationPanel))

    class Tiny(Panel):
        def __init__(self):
            self.a, self.b = widgets.IntSlider(value=1, min=-5), widgets.IntSlider(value=2)
            self.button = widgets.Button()
            self.seen = []
            self._init_panel(debounce=0)
            self.watch(self.a, self.b)
            self.on_click(self.button, lambda: self.seen.append("click"))
            self.widget = widgets.VBox([self.a, self.b, self.status])
            self._first_update()

        def update(self):
            if self.a.value < 0:
                raise NboptError("a must be >= 0")
            self.seen.append((self.a.value, self.b.value))

    p = Tiny()
    assert p.seen == [(1, 2)]
    p.a.value = 3  # a widget event: one update at once (debounce=0)
    assert p.seen[-1] == (3, 2)
    n = len(p.seen)
    with p.changing():
        p.a.value, p.b.value = 4, 5
    assert p.seen[n:] == [(4, 5)]  # one update for the batch
    p.a.value = -1  # a callback error lands in status, not raised
    assert "a must be &gt;= 0" in p.status.value and isinstance(p.guard.last_error, NboptError)
    with pytest.raises(NboptError, match="a must be"):
        with p.changing():
            p.b.value = 6
    with p.changing(raise_errors=False):
        p.b.value = 7
    p.a.value = 0
    assert p.status.value == "" and p.guard.last_error is None
    p.button.click()
    assert p.seen[-1] == "click"
    p.flush()  # nothing pending: no update
    assert p.seen[-1] == "click"
    assert "application/vnd.jupyter.widget-view+json" in p._repr_mimebundle_()
