""":class:`Table`: a pandas DataFrame of raw numbers that shows itself readably (through ``nbopt.display.frames``).

Every table nbopt returns for display (``compare``, ``Profile.top``/``by_type``/``at_depth``, result summaries) is a
``Table``: its values are the raw numbers (``table["macs"]`` is an int column, arithmetic and ``pd.testing``
work as on any DataFrame), and only its notebook HTML (``_repr_html_``) and its ``repr`` are readable: units
(K/M/G, KiB/MiB, ms, %), blanks for NaN, about 15 rows and a few columns in a terminal, with a line saying
how to see the rest (:meth:`Table.shown`). Pandas documents subclassing with ``_constructor`` and
``_metadata``; operations on a Table return a Table with the same display settings.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import pandas as pd

MAX_ROWS = 15  # rows shown by default (the display layer's limit)


@dataclass(frozen=True)
class View:
    """How a :class:`Table` shows itself (its data is untouched).

    ``columns``: the columns shown, in order (``None``: all; missing ones are skipped, the others are named in
    a "more columns" line); ``brief``: the fewer columns of the terminal ``repr`` (``None``: ``columns``);
    ``kinds``: display kinds by column name, or by row label when ``by_rows`` (a before/after table whose
    rows are metrics); ``max_rows``: rows shown (``None``: all); ``caption``: a title line.
    """

    columns: tuple[str, ...] | None = None
    brief: tuple[str, ...] | None = None
    kinds: Mapping[str, str] = field(default_factory=dict)
    by_rows: bool = False
    max_rows: int | None = MAX_ROWS
    caption: str = ""


class Table(pd.DataFrame):
    """A DataFrame (raw numbers) whose notebook and terminal display go through ``nbopt.display.frames``."""

    _metadata = ["_nbopt_view"]
    _nbopt_view: View = View()

    @property
    def _constructor(self) -> type:
        return Table

    @property
    def view(self) -> View:
        """The display settings (:class:`View`)."""
        return self._nbopt_view

    def with_view(self, **changes: Any) -> "Table":
        """A copy whose display settings have ``changes`` (the :class:`View` fields)."""
        out = self.copy(deep=False)
        out._nbopt_view = replace(self._nbopt_view, **changes)
        return out

    def shown(self, max_rows: int | None = None, columns: str | Sequence[str] | None = "all") -> "Table":
        """This table shown with more: every row (``max_rows=None``) and every column (``columns="all"``)."""
        cols = None if columns == "all" else (tuple(columns) if columns is not None else self._nbopt_view.columns)
        return self.with_view(max_rows=max_rows, columns=cols, brief=cols)

    def _repr_html_(self) -> str:
        from .display.frames import table_html  # front-end imported on demand: the core stays display-free

        return table_html(self)

    def __repr__(self) -> str:
        from .display.frames import table_text

        return table_text(self)


def as_table(df: pd.DataFrame, **view: Any) -> Table:
    """``df`` as a :class:`Table` (the same data, not copied) with display settings ``view``."""
    out = df if isinstance(df, Table) else Table(df)
    out = out.copy(deep=False) if out is df else out
    out.attrs = dict(df.attrs)
    if view:
        out._nbopt_view = replace(out._nbopt_view, **{k: (tuple(v) if k in ("columns", "brief") and v is not None
                                                          else v) for k, v in view.items()})
    return out
