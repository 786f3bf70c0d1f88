"""Deployable sizes count every scale a runtime stores: per channel, per tensor, or per group of inputs."""
from torch import nn

from nbopt.quantization.sizes import deployable_bytes


def test_group_wise_sizes_count_a_scale_per_group():
    m = nn.Sequential(nn.Linear(64, 16))  # 1024 weights, 16 bias values
    bias = 16 * 4
    packed4 = 1024 * 4 // 8
    assert deployable_bytes(m, {"0": 4}) == packed4 + 16 * 4 + bias  # one fp32 scale per output row
    assert deployable_bytes(m, {"0": 4}, per_channel=False) == packed4 + 4 + bias
    assert deployable_bytes(m, {"0": 4}, group_size=32) == packed4 + 16 * 2 * 4 + bias  # 2 groups per row
    assert deployable_bytes(m, {"0": 4}, group_size=32, symmetric=False) == packed4 + 16 * 2 * 8 + bias
    assert deployable_bytes(m, {"0": 4}, group_size=128) == packed4 + 16 * 1 * 4 + bias  # a partial group is one
