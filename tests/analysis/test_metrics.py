"""CL metrics against matrices computed by hand (the numbers in the comments are the hand work)."""

import math

import numpy as np
import pytest

from forgetlab.analysis.metrics import convergence_steps, retention, to_scores
from forgetlab.analysis.registry import cl_metrics

ACC = [
    [0.1, 0.2, 0.3],
    [0.8, 0.3, 0.35],
    [0.6, 0.9, 0.4],
    [0.5, 0.7, 0.95],
]
LOSS = [
    [5.0, 5.0, 5.0],
    [2.0, 4.5, 4.8],
    [3.0, 2.5, 4.6],
    [3.5, 3.0, 2.0],
]


def test_accuracy_metrics_match_hand_computation():
    m = cl_metrics(ACC, "accuracy")
    assert m["ACC"] == pytest.approx(2.15 / 3)  # (0.5 + 0.7 + 0.95) / 3
    assert m["BWT"] == pytest.approx(-0.25)  # ((0.5-0.8) + (0.7-0.9)) / 2
    assert m["FWT"] == pytest.approx(0.1)  # ((0.3-0.2) + (0.4-0.3)) / 2
    assert m["forgetting"] == pytest.approx([0.3, 0.2])  # 0.8-0.5, max(0.3,0.9)-0.7
    assert m["average_forgetting"] == pytest.approx(0.25)
    assert m["retention"]["1"] == pytest.approx((0.6 / 0.8 + 0.7 / 0.9) / 2)
    assert m["retention"]["2"] == pytest.approx(0.5 / 0.8)
    assert m["plasticity"] == pytest.approx((0.7 + 0.6 + 0.55) / 3)  # 0.8-0.1, 0.9-0.3, 0.95-0.4


def test_loss_metrics_use_negated_scores_and_loss_ratio_retention():
    m = cl_metrics(LOSS, "loss")
    assert m["ACC"] == pytest.approx(-(3.5 + 3.0 + 2.0) / 3)
    assert m["final_mean"] == pytest.approx((3.5 + 3.0 + 2.0) / 3)
    assert m["BWT"] == pytest.approx(-1.0)  # ((2-3.5) + (2.5-3)) / 2
    assert m["FWT"] == pytest.approx(0.45)  # ((5-4.5) + (5-4.6)) / 2
    assert m["forgetting"] == pytest.approx([1.5, 0.5])  # forgetting is positive when loss rose
    assert m["average_forgetting"] == pytest.approx(1.0)
    assert m["retention"]["1"] == pytest.approx((2 / 3 + 2.5 / 3) / 2)  # L[j][j] / L[j+1][j]
    assert m["retention"]["2"] == pytest.approx(2 / 3.5)
    assert m["plasticity"] == pytest.approx((3 + 2 + 2.6) / 3)


def test_forgetting_takes_the_best_earlier_stage_not_the_one_just_after():
    # domain 1 peaks after stage 2 (0.9), not after stage 1 (0.5): f_1 = 0.9 - 0.4
    a = [[0.0, 0.0, 0.0], [0.5, 0.1, 0.1], [0.9, 0.8, 0.1], [0.4, 0.8, 0.9]]
    m = cl_metrics(a, "accuracy")
    assert m["forgetting"] == pytest.approx([0.5, 0.0])


def test_single_domain_has_no_backward_metrics():
    m = cl_metrics([[4.0], [2.0]], "loss")
    assert m["BWT"] is None and m["FWT"] is None and m["average_forgetting"] is None
    assert m["retention"] == {}
    assert m["plasticity"] == pytest.approx(2.0)


def test_no_forgetting_when_nothing_changes_after_learning():
    a = np.array([[5.0, 5.0], [2.0, 5.0], [2.0, 3.0]])
    m = cl_metrics(a, "loss")
    assert m["average_forgetting"] == 0.0 and m["BWT"] == 0.0
    assert m["retention"]["1"] == 1.0


def test_bad_shape_is_refused():
    with pytest.raises(ValueError, match=r"\(T\+1, T\)"):
        cl_metrics([[1.0, 2.0], [1.0, 2.0]], "loss")


def test_retention_rejects_k_below_one():
    with pytest.raises(ValueError):
        retention(to_scores(ACC, "accuracy"), 0)


def test_convergence_is_first_step_within_five_percent_of_total_drop():
    # drop = 5 - 2 = 3, threshold 0.15 above the end: 3.0, 2.2 are above, 2.05 is within
    # drop 3, level 2.0 + 0.05 x 3 = 2.15, crossed between step 20 (2.2) and 30 (2.05):
    # 20 + 10 x (2.2 - 2.15) / (2.2 - 2.05) = 23.33
    assert math.isclose(convergence_steps([0, 10, 20, 30, 40], [5.0, 3.0, 2.2, 2.05, 2.0]), 70 / 3)
    assert convergence_steps([0, 10], [2.0, 2.5]) == 0  # nothing dropped
    assert convergence_steps([0], [2.0]) is None
    # level 1.1 crossed between step 0 (3.0) and 5 (1.0): 5 x 1.9 / 2 = 4.75
    assert math.isclose(convergence_steps([0, 5, 9], [3.0, 1.0, 1.0]), 4.75)
    # two evaluations a stage apart still tell a fast learner from a slow one
    fast = convergence_steps([0, 30, 60], [7.0, 5.05, 5.0])
    slow = convergence_steps([0, 30, 60], [7.0, 6.0, 5.0])
    assert fast is not None and slow is not None and fast < 30 < slow < 60


def test_retention_skips_zero_denominators():
    a = np.array([[0.0, 0.0], [0.0, 0.1], [0.0, 0.2]])  # accuracy 0 right after learning domain 1
    assert retention(a, 1) is None
