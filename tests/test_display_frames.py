"""The one table style (nbopt.display.frames): units by column kind, blanks, row limit, scroll box."""
import math

import numpy as np
import pandas as pd
import pytest

from nbopt.display import frames as F


def test_kinds_from_column_names():
    assert [F.kind_of(c) for c in ("macs", "params_total", "size_bytes", "latency_ms", "share", "speedup",
                                    "sqnr_db", "cosine")] == [
        "count", "count", "bytes", "ms", "fraction", "ratio", "db", "number"]


@pytest.mark.parametrize("value,text", [(3663761408, "3,663,761,408"), (52.880184, "52.9"), (0.000123456, "0.000123"),
                                        (1.0, "1"), (0.0, "0"), (1.000024, "1.00"), (float("nan"), "")])
def test_numbers_have_three_significant_digits_and_no_scientific_notation(value, text):
    assert F.format_value(value, "number") == text


def test_units_per_kind():
    df = pd.DataFrame({"macs": [1.82e9, np.nan], "size_bytes": [459547, 2048], "latency_ms": [21.337, 0.01234],
                       "sparsity": [0.072917, 0.5], "speedup": [3.36, np.nan], "sqnr_db": [29.04, math.inf],
                       "name": ["conv1", "fc"]})
    out = F.format_frame(df)
    assert out.iloc[0].tolist() == ["1.82G", "448.78 KiB", "21.3", "7.3%", "3.36x", "29.0 dB", "conv1"]
    assert out.iloc[1].tolist() == ["", "2.00 KiB", "0.0123", "50.0%", "", "inf dB", "fc"]


def test_kinds_override_and_reject_unknown():
    df = pd.DataFrame({"x": [0.25]})
    assert F.format_frame(df, {"x": "fraction"}).iloc[0, 0] == "25.0%"
    with pytest.raises(ValueError, match="unknown display kinds"):
        F.format_frame(df, {"x": "percent"})


def test_html_shows_15_rows_says_how_many_more_and_scrolls():
    df = pd.DataFrame({"macs": range(1000, 1040)})
    html = F.html_table(df, where="`prof.table`")
    assert html.count("<tr") == 1 + 15  # header + 15 rows
    assert "+25 more rows — `prof.table` has them all" in html
    assert "overflow-x:auto" in html and 'border="1"' not in html
    assert F.html_table(df, max_rows=None).count("<tr") == 41
    assert "more rows" not in F.html_table(df.head(15))


def test_text_table_matches_html_units_and_limit():
    df = pd.DataFrame({"latency_ms": [1.23456] * 20})
    text = F.text_table(df)
    assert "1.23" in text and "1.23456" not in text
    assert text.splitlines()[-1] == "+5 more rows — .table has them all"
    assert len(text.splitlines()) == 1 + 15 + 1
