"""QuantizationPanel: readouts equal nbopt.quantize's numbers (through QuantTuner); overrides come from the
sensitivity table."""
from __future__ import annotations

import pytest
import torch

import nbopt
from nbopt import demo
from tests.snapshot import same_state, state_fingerprint

pytestmark = pytest.mark.skipif(not hasattr(nbopt, "quantize"), reason="nbopt.quantize (quantization issue) missing")


@pytest.fixture(scope="module")
def model():
    return demo.load_model()


@pytest.fixture(scope="module")
def calib():
    return demo.calibration_data(n=128)


@pytest.fixture(scope="module")
def panel(model, calib):
    return nbopt.QuantizationPanel(model, calib, evaluate=demo.evaluate, debounce=0)


def test_exported(panel):
    from nbopt.panels import QuantizationPanel

    assert nbopt.QuantizationPanel is QuantizationPanel and isinstance(panel, QuantizationPanel)


def test_bit_slider_readouts_equal_core(panel, model, calib):
    panel.weight_bits.value = 3  # what the slider does
    direct = nbopt.quantize(model, calib, weight_bits=3, act_bits=8, granularity="per_channel", symmetric=True,
                            evaluate=demo.evaluate, progress=False, repeat=1)
    assert panel.result.accuracy == direct.accuracy
    assert panel.result.fidelity == direct.fidelity
    assert panel.result.size_bytes == direct.size_bytes
    x = demo.digits_split()[2]
    assert torch.equal(panel.tuner.model(x), direct.model(x))  # the model behind the readouts is quantize's
    assert f"accuracy <b>{100 * direct.accuracy['quantized']:.2f}%</b>" in panel.readout.value
    assert f"sqnr_db <b>{direct.fidelity['sqnr_db']:.4g}</b>" in panel.readout.value
    assert list(panel.result.report["weight_bits"].unique()) == [3]


def test_toggles_and_float_activations(panel, model, calib):
    panel.set(weight_bits=4, act_bits=None, granularity="per_tensor", symmetric=False)
    assert panel.options() == {"weight_bits": 4, "act_bits": None, "granularity": "per_tensor", "symmetric": False,
                               "layer_bits": {}, "method": "rtn"}
    direct = nbopt.quantize(model, calib, weight_bits=4, act_bits=None, granularity="per_tensor", symmetric=False,
                            evaluate=demo.evaluate, progress=False, repeat=1)
    assert panel.result.accuracy == direct.accuracy
    assert panel.act_bits.disabled
    panel.set(weight_bits=8, act_bits=8, granularity="per_channel", symmetric=True)


def test_sensitivity_drives_layer_overrides(panel, model, calib):
    sens = panel.measure_sensitivity(bits=(4, 2))
    assert list(panel.layer.options)[0] == sens.sort_values("drop_2bit", ascending=False).index[0]
    layer = panel.layer.options[0]
    panel.set_layer_bits(layer, 2)
    assert panel.result.report.loc[layer, "weight_bits"] == 2
    direct = nbopt.quantize(model, calib, weight_bits=8, act_bits=8, layer_bits={layer: 2}, evaluate=demo.evaluate,
                            progress=False, repeat=1)
    assert panel.result.accuracy == direct.accuracy
    bits = panel.apply_mixed_precision(avg_bits=3)
    assert bits == nbopt.mixed_precision(sens, avg_bits=3)
    panel.clear_layer_bits()
    assert panel.layer_bits == {} and set(panel.result.report["weight_bits"]) == {8}


def test_errors_shown_in_panel_and_model_untouched(model, calib):
    fp = state_fingerprint(model)
    panel = nbopt.QuantizationPanel(model, calib, debounce=0)
    panel.layer_bits = {"no_such_layer": 4}
    panel.weight_bits.value = 6  # callback: the core rejects the name; the panel shows it
    assert "no_such_layer" in panel.status.value
    with pytest.raises(nbopt.NboptError):
        panel.set_layer_bits("still_not_a_layer", 4)
    panel.layer_bits = {}
    panel.weight_bits.value = 5
    assert panel.status.value == "" and panel.result.options["weight_bits"] == 5
    assert panel.result.accuracy is None and "fidelity" in panel.readout.value
    assert same_state(model, fp)


def test_needs_calibration_data(model):
    with pytest.raises(nbopt.NboptError, match="calibration"):
        nbopt.QuantizationPanel(model, None)


def test_int8_button_shows_measured_speedup(model, calib):
    panel = nbopt.QuantizationPanel(model, calib, debounce=0, int8_backend="onnxruntime")
    panel.int8_button.click()
    assert panel.int8 is not None and panel.int8.real
    assert f"{panel.int8.speedup:.2f}x" in panel.int8_html.value


def test_layout_fits_the_notebook(panel):
    """Fixed-width controls (a slider track stays >= 220 px next to any readout), buttons as wide as their labels,
    tables through nbopt.display.frames (scroll box, no heavy borders), no GPTQ / group sizes the CNN cannot use."""
    for s in (panel.weight_bits, panel.act_bits, panel.layer_bits_slider):
        assert s.layout.width == s.layout.min_width == "480px" and s.layout.flex == "0 0 auto"
        assert s.style.description_width == "160px"  # 480 - 160 - readout: a 224 px track (measured in JupyterLab 4)
    for b in (panel.sens_button, panel.mixed_button, panel.layer_set, panel.layer_clear, panel.int8_button):
        assert b.layout.width == "auto" and b.layout.min_width == "max-content"
    assert panel.widget.children[0].layout.flex_flow == "row wrap"  # controls | readouts, wrapping when narrow
    assert "nbopt-scroll" in panel.table.value and "overflow-x:auto" in panel.table.value
    assert 'border="1"' not in panel.table.value and "<th>layer</th>" in panel.table.value
    assert panel.method.layout.display == "none"  # convs: no GPTQ control
    assert [v for _, v in panel.granularity.options] == ["per_channel", "per_tensor"]  # conv in-dims: no groups
    assert "\n" not in repr(panel.result) and "TuneResult(W" in repr(panel.result)
