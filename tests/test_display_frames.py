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


def test_quartile_and_vs_first_columns_read_as_their_quantity():
    assert [F.kind_of(c) for c in ("speedup_q1", "latency_ms_vs_first_q3", "macs_vs_first", "latency_calls",
                                    "self_latency_q1_ms")] == ["ratio", "ratio", "ratio", "number", "ms"]


@pytest.mark.parametrize("value,text", [(3.3612, "3.36x"), (459.31, "459x"), (0.0022, "0.0022x"), (1.0, "1.00x"),
                                        (0.08333, "0.083x"), (12.345, "12.3x"), (float("nan"), "")])
def test_ratios_have_two_or_three_significant_digits(value, text):
    assert F.format_value(value, "ratio") == text


def test_rows_of_a_before_after_table_carry_their_units():
    df = pd.DataFrame({"before": [105866.0, 459547.0, 21.337, 9.0, np.nan],
                       "after": [52933.0, 229773.0, 10.2, 9.0, np.nan],
                       "ratio": [2.0, 2.0, 2.092, np.nan, 3.1]},
                      index=["params", "size_bytes", "latency_ms", "latency_calls", "speedup_q1"])
    out = F.format_frame(df, by_rows=True)
    assert out.loc["params"].tolist() == ["105.87K", "52.93K", "2.00x"]
    assert out.loc["size_bytes"].tolist() == ["448.78 KiB", "224.39 KiB", "2.00x"]
    assert out.loc["latency_ms"].tolist() == ["21.3", "10.2", "2.09x"]
    assert out.loc["latency_calls"].tolist() == ["9", "9", ""]
    assert out.loc["speedup_q1"].tolist() == ["", "", "3.10x"]
    assert F.format_frame(df, {"latency_calls": "count"}, by_rows=True).loc["latency_calls", "before"] == "9"


def test_text_table_wraps_wide_tables_at_the_display_width():
    df = pd.DataFrame({f"column_number_{i}_ms": [1.5] for i in range(12)})
    text = F.text_table(df, line_width=80)
    assert max(len(line.rstrip(" \\")) for line in text.splitlines()) <= 80
    assert text.count("column_number_") == 12  # every column, in blocks
