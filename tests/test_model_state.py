"""model_state: the bit-for-bit state comparison every "untouched model" check relies on."""
import torch
from torch import nn

from tests.snapshot import same_state, state_fingerprint


def test_same_state_holds_a_nan_equal_to_itself_and_sees_every_change():
    m = nn.Linear(3, 2)
    with torch.no_grad():
        m.weight[0, 0] = float("nan")
    before = state_fingerprint(m)
    assert same_state(m, before)  # torch.equal alone would call NaN changed
    with torch.no_grad():
        m.weight[0, 0] = 1.0  # the NaN replaced
    assert not same_state(m, before)
    with torch.no_grad():
        m.weight[0, 0] = float("nan")
        m.weight[1, 1] += 1.0  # a finite value changed beside the NaN
    assert not same_state(m, before)
    with torch.no_grad():
        m.weight.copy_(before["weight"])
    assert same_state(m, before)  # back to the saved bits, NaN included
    with torch.no_grad():
        m.weight[0, 1] = float("nan")  # a finite value turned NaN
    assert not same_state(m, before)
