"""The one formatter: readable counts and bytes, and display copies of tables in those units."""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

from ..profiling.thop_engine import clever_format



def readable(value: Any, fmt: str = "%.2f") -> str:
    """``1234567 -> '1.23M'`` in thop's clever_format style; NaN stays blank."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if abs(value) < 1e3:
        return str(int(value)) if float(value).is_integer() else f"{value:.2f}"
    return clever_format(float(value), fmt)


def readable_bytes(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{int(value)} B"


def format_table(df: pd.DataFrame) -> pd.DataFrame:
    """A display copy with readable units (the Profile's own DataFrame keeps raw numbers): the units of
    :func:`nbopt.display.frames.format_frame`, the one place that decides them."""
    from .frames import format_frame  # frames builds on this module's formatters

    return format_frame(df)
