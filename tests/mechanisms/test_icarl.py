"""iCaRL's parts: the worked example of docs/methods.md (herding, truncation, NCM) and BCE +
distillation on its hand case (the scenario that assembles them is tested in
tests/experiments/test_class_incremental.py)."""

import math

import pytest
import torch

from forgetlab.mechanisms.parts.icarl import ExemplarMemory, class_means, icarl_loss, ncm_predict

A = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1], [2, 2]], dtype=torch.float64)
B = torch.tensor([[3, 3], [3, 2], [2, 3], [4, 4], [2, 2]], dtype=torch.float64)
C = torch.tensor([[-1, -1], [-1, 0], [0, -1], [-2, -2], [0, 0]], dtype=torch.float64)


def memory_means(memory):
    return class_means(dict(memory.exemplars))


def test_worked_example_memory_means_and_ncm_predictions():
    memory = ExemplarMemory(8)
    m = memory.quota(2)  # stage 1: classes A, B -> floor(8 / 2) = 4
    for label, feats in ((0, A), (1, B)):
        memory.add_class(label, feats, feats, m)  # the example's features are the samples
    assert memory.exemplars[0].tolist() == [[1, 1], [1, 0], [0, 1], [2, 2]]
    assert memory.exemplars[1].tolist() == [[3, 3], [3, 2], [2, 3], [4, 4]]
    classes, means = memory_means(memory)
    assert means.tolist() == [[1.0, 1.0], [3.0, 3.0]]
    pred, dist = ncm_predict(torch.tensor([[0.9, 0.7]], dtype=torch.float64), classes, means)
    assert pred.tolist() == [0] and dist[0, 0].item() == pytest.approx(math.sqrt(0.1), abs=1e-12)

    m = memory.quota(3)  # stage 2: class C arrives -> floor(8 / 3) = 2, prefixes kept
    memory.reduce(m)
    memory.add_class(2, C, C, m)
    assert len(memory) == 6
    assert memory.exemplars[2].tolist() == [[-1, -1], [-1, 0]]
    classes, means = memory_means(memory)
    assert means.tolist() == [[1.0, 0.5], [3.0, 2.5], [-1.0, -0.5]]
    pred, dist = ncm_predict(torch.tensor([[0.9, 0.7], [-0.9, -0.6]], dtype=torch.float64), classes, means)
    assert pred.tolist() == [0, 2]
    assert dist[0, 0].item() == pytest.approx(0.224, abs=5e-4)
    assert dist[1, 2].item() == pytest.approx(0.141, abs=5e-4)


def test_bce_and_distillation_on_the_worked_single_sample():
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    logits = torch.tensor([[logit(0.8), logit(0.15), logit(0.05)]], dtype=torch.float64)
    q_old = torch.tensor([[0.9, 0.1, 0.0]], dtype=torch.float64)
    new, distill = icarl_loss(logits, torch.tensor([0]), [2], [0, 1], q_old, lam=0.5)
    expected = -(0.9 * math.log(0.8) + 0.1 * math.log(0.2)) - (
        0.1 * math.log(0.15) + 0.9 * math.log(0.85)
    )
    assert distill.item() == pytest.approx(0.5 * expected, rel=1e-12)
    assert new.item() == pytest.approx(-math.log(0.95), rel=1e-12)  # an A exemplar: y_C = 0
    first, none = icarl_loss(logits, torch.tensor([0]), [0, 1], [], None)
    assert none.item() == 0 and first.item() == pytest.approx(
        -math.log(0.8) - math.log(0.85), rel=1e-12
    )
