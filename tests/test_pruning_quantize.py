"""Sparse + low-bit: a pruned model goes straight into ``nbopt.quantize`` and the sizes combine."""
from __future__ import annotations

import pytest

import nbopt
from nbopt import demo
from nbopt.model_state import size_bytes


def test_structured_then_4bit_combines_sizes(demo_model):
    try:
        quantize = nbopt.quantize
    except AttributeError:
        pytest.skip("nbopt.quantize is not available yet")
    pruned = nbopt.prune(demo_model, demo.example_input(2), amount=0.5, structured=True, latency=False,
                         progress=False)
    q = quantize(pruned.model, demo.calibration_data(), weight_bits=4, progress=False, repeat=2)
    dense_fp32 = size_bytes(demo_model)
    assert q.size_bytes["fp32"]["dense"] == size_bytes(pruned.model) < dense_fp32 / 3  # pruning alone
    assert q.size_bytes["quantized"]["deployable"] < dense_fp32 / 15  # pruned 3.2x and 4-bit weights
    assert q.model(demo.example_input(2)).shape == (2, 10)
