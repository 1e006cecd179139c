"""The shared quadratic penalty: value by hand, appended and folded terms, its analytic gradient."""

import torch

from forgetlab.mechanisms.parts.penalty import QuadraticPenalty


def t(*v):
    return torch.tensor(v)


def test_penalty_value_by_hand():
    pen = QuadraticPenalty()
    pen.append({"w": t(2.0, 3.0), "b": t(0.5)}, {"w": t(0.0, 1.0), "b": t(1.0)})
    params = {"w": t(1.0, 2.0), "b": t(3.0)}
    # lambda / 2 * (2 * 1^2 + 3 * 1^2 + 0.5 * 2^2) = 2 * 7
    assert float(pen.value(params, lam=4.0)) == 14.0
    pen.append({"w": t(1.0, 1.0), "b": t(1.0)}, {"w": t(1.0, 1.0), "b": t(3.0)})
    assert float(pen.value(params, lam=4.0)) == 16.0  # second term: 1 * 1^2


def test_fold_decays_old_importance_and_moves_the_anchor():
    pen = QuadraticPenalty()
    pen.fold({"w": t(2.0, 3.0)}, {"w": t(0.0, 1.0)}, decay=0.5)
    pen.fold({"w": t(1.0, 1.0)}, {"w": t(1.0, 1.0)}, decay=0.5)
    ((omega, anchor),) = pen.terms
    torch.testing.assert_close(omega["w"], t(2.0, 2.5))  # 0.5 * (2, 3) + (1, 1)
    torch.testing.assert_close(anchor["w"], t(1.0, 1.0))
    assert float(pen.value({"w": t(1.0, 2.0)}, lam=4.0)) == 5.0  # 2 * 2.5 * 1^2


def test_analytic_gradient_equals_autograd():
    pen = QuadraticPenalty()
    pen.append({"w": t(2.0, 3.0)}, {"w": t(0.0, 1.0)})
    pen.append({"w": t(0.5, 1.5)}, {"w": t(-1.0, 4.0)})
    w = t(1.0, 2.0).requires_grad_()
    pen.value({"w": w}, lam=3.0).backward()
    torch.testing.assert_close(pen.gradient({"w": w}, lam=3.0)["w"], w.grad)


def test_state_round_trip_keeps_the_value():
    pen = QuadraticPenalty()
    pen.append({"w": t(2.0, 3.0)}, {"w": t(0.0, 1.0)})
    other = QuadraticPenalty()
    other.load_state_dict(pen.state_dict())
    params = {"w": t(1.0, -2.0)}
    assert float(other.value(params, 1.0)) == float(pen.value(params, 1.0))
