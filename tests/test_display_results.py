"""What a user sees of real results: every table nbopt returns renders through nbopt.display.frames (units, blanks,
15 rows, short reprs) while its values stay the raw numbers."""
from __future__ import annotations

import math
import pickle
import warnings

import pandas as pd
import pytest
import torch
from torch import nn

import nbopt
from nbopt import demo
from nbopt.table import Table, as_table

X = torch.randn(4, 16)


def big():
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 8))


def small():
    return nn.Sequential(nn.Linear(16, 8))


def clean(text: str) -> None:
    """No scientific notation, no NaN cells."""
    assert "e+" not in text and "e-0" not in text and "nan" not in text.lower().replace("nbopt", "")


# ---------------------------------------------------------------- compare


def test_compare_shows_readable_units_and_keeps_raw_numbers():
    df = nbopt.compare({"big": big(), "small": small()}, X, latency=False)
    # hand-computed: 4 rows x (16x64 + 64x8) MACs; params 16*64+64 + 64*8+8
    assert isinstance(df, Table) and isinstance(df, pd.DataFrame)
    assert df.loc["big", "macs"] == 4 * (16 * 64 + 64 * 8) == 6144 and df.loc["small", "macs"] == 512
    assert df.loc["big", "params"] == 1608 and pd.api.types.is_integer_dtype(df["macs"])
    assert df.loc["small", "macs_vs_first"] == 512 / 6144
    html, text = df._repr_html_(), repr(df)
    for out in (html, text):
        clean(out)
        assert "6.14K" in out and "1.61K" in out and "6144" not in out and "1608" not in out
        assert "6.28 KiB" in out  # 1608 float32 params
    assert "0.083x" in html  # macs_vs_first: a ratio, not 0.083333
    assert "overflow-x:auto" in html and len(text.splitlines()) <= 6


def test_compare_terminal_shows_brief_columns_and_names_the_rest():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a busy machine's NoisyTimingWarning
        df = nbopt.compare({"big": big(), "small": small()}, X, repeat=3, warmup=1)
    text = repr(df)
    header = text.splitlines()[0].split()
    assert header == ["params", "macs", "flops", "size_bytes", "latency_ms", "speedup_vs_first"]
    assert "more columns (params_vs_first" in text and ".shown() has them all" in text
    assert "latency_q1_ms" in df._repr_html_()  # the notebook scrolls instead of hiding columns
    assert df.loc["small", "latency_calls"] == 3 and df.attrs["timings"]  # attrs kept
    assert "speedup_vs_first" in repr(df.shown()) and len(text.splitlines()) <= 8


def test_compare_row_limit_says_how_many_more():
    models = {f"m{i}": nn.Linear(16, 1 + i) for i in range(18)}
    df = nbopt.compare(models, X, latency=False)
    html, text = df._repr_html_(), repr(df)
    assert html.count("<tr") == 1 + 1 + 15  # two header rows (columns, index name) + 15 rows
    assert "+3 more rows — `.shown(max_rows=None)` has them all" in html
    assert text.splitlines()[-2] == "+3 more rows — .shown(max_rows=None) has them all"
    assert df.shown(max_rows=None)._repr_html_().count("<tr") == 2 + 18 and len(df) == 18


# ---------------------------------------------------------------- Table itself


def test_table_operations_keep_the_view_and_the_numbers():
    t = as_table(pd.DataFrame({"macs": [1234, 5], "latency_ms": [1.23456, math.nan]}, index=["a", "b"]),
                 brief=("macs",))
    sub = t[t["macs"] > 10]
    assert isinstance(sub, Table) and sub.view.brief == ("macs",) and sub["macs"].tolist() == [1234]
    assert type(pd.DataFrame(t)) is pd.DataFrame and type(t["macs"]) is pd.Series
    pd.testing.assert_frame_equal(t.sort_values("macs"), t.sort_values("macs"))
    back = pickle.loads(pickle.dumps(t))
    assert isinstance(back, Table) and back.view == t.view and back["macs"].tolist() == [1234, 5]
    assert "1.23K" in repr(t) and "1234" not in repr(t) and "1.23" in repr(t) and "nan" not in repr(t)
    assert "1.23" in t._repr_html_() and "1.23456" not in t._repr_html_() and "nan" not in t._repr_html_()


# ---------------------------------------------------------------- Profile views


@pytest.fixture(scope="module")
def prof():
    return nbopt.profile(demo.load_model(), demo.example_input(1), latency=False)


def test_profile_views_are_tables_in_readable_units(prof):
    for df in (prof.table, prof.top(3), prof.by_type(), prof.at_depth(1), prof.layers):
        assert isinstance(df, Table)
        clean(df._repr_html_())
        clean(repr(df))
        assert len(repr(df).splitlines()) <= 1 + 15 + 2 + 2 * 16  # wrapped at 80 characters at most once
    top = prof.top(3)
    assert top["macs"].tolist() == sorted(prof.layers["macs"], reverse=True)[:3]  # raw ints
    assert "589.82K" in repr(top) and "589824" not in repr(top)  # block1.conv1.0: 32x32x3x3 x 8x8 positions


def test_by_type_without_latency_is_blank_not_zero(prof):
    df = prof.by_type()
    assert df["self_latency_ms"].isna().all()  # none was measured: missing, not 0 ms
    assert df.loc["Conv2d", "count"] == 9 and df["macs"].sum() == prof.total_macs
    from nbopt.display import frames
    assert frames.format_frame(df)["self_latency_ms"].tolist() == [""] * len(df)
    assert "0.000" not in df._repr_html_()


def test_profile_table_limit_and_column_pointer(prof):
    text = repr(prof.table)
    assert f"+{len(prof.table) - 15} more rows — .shown(max_rows=None) has them all" in text
    assert "more columns (depth, calls, in_shape" in text


# ---------------------------------------------------------------- quantize, prune, export, optimize


@pytest.fixture(scope="module")
def quant():
    return nbopt.quantize(demo.load_model(), demo.calibration_data(32), weight_bits=4, act_bits=8, repeat=3,
                          progress=False, evaluate=demo.evaluate)


def test_quant_result_repr_is_short_and_summary_blanks_meaningless_ratios(quant):
    text = repr(quant)
    assert text.startswith("QuantResult(simulated") and len(text.splitlines()) <= 6
    assert str(quant) == text and "KiB" in text and "IQR" in text and "SQNR" in text
    clean(text)
    s = quant.summary()
    assert isinstance(s, Table) and s.view.by_rows
    for row in ("accuracy", "cosine vs fp32", "top1_agreement vs fp32", "latency calls"):
        assert math.isnan(s.loc[row, "ratio"]), row  # fp32/quantized of these means nothing
    assert s.loc["size deployable (MB)", "ratio"] == pytest.approx(
        quant.size_bytes["fp32"]["deployable"] / quant.size_bytes["quantized"]["deployable"])
    html = quant._repr_html_()
    clean(html)
    assert "dB" in html and "%" in html and "<details>" in html and "per-layer report (10 layers" in html


def test_quant_summary_cells_use_row_units(quant):
    from nbopt.display import frames
    s = frames.format_frame(quant.summary(), quant.summary().view.kinds, by_rows=True)
    acc = quant.accuracy["quantized"]
    assert s.loc["accuracy"].iloc[1] == f"{100 * acc:.1f}%"
    assert s.loc["sqnr_db vs fp32"].iloc[0] == "" and s.loc["sqnr_db vs fp32"].iloc[1].endswith(" dB")
    assert s.loc["size deployable (MB)", "ratio"].endswith("x")


def test_prune_result_repr_and_summary():
    r = nbopt.prune(demo.load_model(), demo.example_input(2), amount=0.5, latency=False, progress=False)
    text = repr(r)
    assert text.splitlines()[0] == "PruneResult(unstructured, amount 50.0%, scope global)"
    assert len(text.splitlines()) <= 5 and "latency" not in text
    s = r.summary
    assert isinstance(s, Table) and s.loc["params", "before"] == 105866.0  # raw
    html = r._repr_html_()
    clean(html)
    assert "105.87K" in html and "417.61 KiB" in html and "105866" not in html and "1.98x" in html


def test_export_result_repr_and_html(tmp_path):
    ex = nbopt.export(demo.load_model(), demo.example_input(1), "torchscript", tmp_path / "m.pt", latency=False)
    text, html = repr(ex), ex._repr_html_()
    clean(text)
    clean(html)
    assert "KiB" in text and len(text.splitlines()) <= 3
    assert f"{ex.file_bytes}" not in html and "KiB" in html and "operator types" in html


def test_optimize_table_shows_bytes_as_bytes_and_params_as_params():
    res = nbopt.optimize(demo.load_model(), demo.example_input(1), calib=demo.calibration_data(16),
                         steps=("profile",), repeat=3, progress=False)
    t = res.table
    assert isinstance(t, Table) and t.loc["profile", "params"] == 105866 and t.loc["profile", "file_bytes"] > 4e5
    html = res._repr_html_()
    assert "105.87K" in html and "KiB" in html and str(int(t.loc["profile", "file_bytes"])) not in html
    text = repr(res)
    assert len(text.splitlines()) == 1 + 2 + len(t) + 1 + len(res.notes) and "IQR" in text  # head, table, pointer
