"""The base class's bookkeeping: declared state saved to the CPU and restored, one FLOP meter."""

import pytest
import torch
from torch import nn

from forgetlab.mechanisms import Mechanism
from forgetlab.mechanisms.parts.buffers import SequenceBuffer


class Counting(Mechanism):
    name = "counting_test"
    saved = ("seen", "memory")

    def __init__(self, knobs: Mechanism.Knobs) -> None:
        super().__init__(knobs)
        self.seen = 0
        self.memory: dict[str, list[torch.Tensor]] = {"rows": []}
        self.restored = 0

    def on_restore(self) -> None:
        self.restored += 1


class Grown(Counting):
    name = "grown_test"
    saved = ("buffer", "adapter", "seen")  # "seen" again: listed once

    def __init__(self, knobs: Mechanism.Knobs) -> None:
        super().__init__(knobs)
        self.buffer = SequenceBuffer(4, "ring")
        self.adapter = nn.Linear(3, 2)


def test_declared_names_are_collected_base_first_and_once():
    assert Grown.saved_names() == ["seen", "memory", "buffer", "adapter"]
    assert Mechanism.saved_names() == []


def test_state_round_trips_through_the_cpu_and_calls_on_restore():
    a = Grown(Grown.Knobs())
    a.seen = 7
    a.memory["rows"].append(torch.arange(3.0))
    a.buffer.add(torch.ones(2, 5, dtype=torch.long), torch.zeros(2, 5, dtype=torch.long), 0,
                 torch.Generator())
    a.count_flops(10)
    state = a.state_dict()
    assert state["memory"]["rows"][0] is not a.memory["rows"][0]  # a copy, not the live tensor

    b = Grown(Grown.Knobs())
    adapter_weight = b.adapter.weight  # what an optimizer would hold
    b.load_state_dict(state)
    assert b.seen == 7 and b.flops(None) == 10.0 and b.restored == 1
    assert torch.equal(b.memory["rows"][0], torch.arange(3.0))
    assert b.adapter.weight is adapter_weight  # a module is loaded in place
    assert torch.equal(b.adapter.weight, a.adapter.weight)
    for x, y in zip(a.buffer.contents(), b.buffer.contents(), strict=True):
        assert torch.equal(x, y)


def test_a_state_with_missing_or_unknown_keys_is_refused_naming_them():
    state = Counting(Counting.Knobs()).state_dict()
    with pytest.raises(ValueError, match=r"'counting_test'.*\['flops', 'seen'\].*'memory'"):
        Counting(Counting.Knobs()).load_state_dict({"flops": 0, "seen": 1})
    with pytest.raises(ValueError, match="extra"):
        Counting(Counting.Knobs()).load_state_dict({**state, "extra": 1})


def test_the_flop_meter_sums_integer_counts_exactly():
    m = Counting(Counting.Knobs())
    for _ in range(3):
        m.count_flops(2**53 + 1)  # a float sum would round each addend to 2**53
    assert m.state_dict()["flops"] == 3 * (2**53 + 1)
    assert m.flops(None) == float(3 * (2**53 + 1))
