"""Quiet cells: third-party log noise raised inside nbopt's calls never reaches the notebook."""
import logging

import pytest
import torch

pytest.importorskip("onnxruntime")


def test_onnxruntime_int8_build_prints_no_root_warning_and_leaves_logging_alone(capfd, caplog):
    import nbopt
    from nbopt import demo

    model = demo.load_model()
    x = torch.randn(4, 1, 8, 8)
    root = logging.getLogger()
    handlers = list(root.handlers)
    with caplog.at_level(logging.WARNING):
        res = nbopt.quantize(model, [x], mode="int8", backend="onnxruntime", progress=False, repeat=2)
    out, err = capfd.readouterr()
    assert not [r for r in caplog.records if "pre-processing" in r.getMessage()]
    assert "Please consider" not in out + err and "WARNING:root" not in out + err
    assert root.handlers == handlers and not any(type(f).__name__ == "_DropFrom" for f in root.filters)
    assert res.fidelity["cosine"] > 0.99  # a real program was built while quiet


def test_the_filter_drops_only_the_library_records(caplog):
    from nbopt.graph import quiet_root_logging

    with caplog.at_level(logging.WARNING), quiet_root_logging("no/such/package"):
        logging.getLogger().warning("the user's own warning")
    assert "the user's own warning" in caplog.text
