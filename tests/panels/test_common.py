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
