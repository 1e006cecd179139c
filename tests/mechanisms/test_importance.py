"""Importance measures: the per-sample-gradient Fisher against closed forms, MAS and SI by hand."""

import math

import pytest
import torch
from torch import nn

from forgetlab.config import ModelConfig
from forgetlab.mechanisms.parts.importance import (
    diagonal_fisher,
    output_sensitivity,
    path_integral_importance,
    sequence_log_likelihood,
)
from forgetlab.models import build_model


def bernoulli_log_likelihood(forward, x, y):
    """log p(y | x) of a logistic regression: -BCE(sigmoid(w.x + b), y)."""
    z = forward(x).squeeze(-1)
    return -nn.functional.binary_cross_entropy_with_logits(z, y, reduction="sum")


@pytest.fixture
def logistic():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x = torch.randn(50, 3)
    with torch.no_grad():
        p = torch.sigmoid(model(x)).squeeze(-1)
    return model, x, p


def test_fisher_of_logistic_regression_is_p_one_minus_p_x_squared(logistic):
    model, x, p = logistic
    n = x.shape[0]
    # the expectation over y ~ p(y | x) enumerated exactly: y = 1 with weight p, y = 0 with 1 - p
    xs = torch.cat([x, x])
    ys = torch.cat([torch.ones(n), torch.zeros(n)])
    weights = torch.cat([p, 1 - p])
    fisher = diagonal_fisher(model, bernoulli_log_likelihood, [xs, ys], weights, chunk=16)

    closed_w = (p * (1 - p)).unsqueeze(1).mul(x.square()).mean(0)  # E[p(1-p) x_i^2]
    closed_b = (p * (1 - p)).mean()
    torch.testing.assert_close(fisher["weight"].squeeze(0), closed_w, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(fisher["bias"].squeeze(0), closed_b, rtol=1e-5, atol=1e-7)


def test_empirical_fisher_is_mean_of_squared_per_sample_scores_not_squared_mean(logistic):
    model, x, p = logistic
    y = torch.bernoulli(p, generator=torch.Generator().manual_seed(1))
    fisher = diagonal_fisher(model, bernoulli_log_likelihood, [x, y], chunk=7)
    scores = (y - p).unsqueeze(1) * x  # d log p / dw per sample
    torch.testing.assert_close(
        fisher["weight"].squeeze(0), scores.square().mean(0), rtol=1e-5, atol=1e-7
    )
    squared_mean = scores.mean(0).square()  # what squaring a mini-batch gradient gives
    assert (fisher["weight"].squeeze(0) > 2 * squared_mean).all()


def test_gpt_fisher_matches_a_loop_of_single_sequence_gradients():
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=32)
    torch.manual_seed(0)
    model = build_model(cfg)
    x = torch.randint(0, 32, (5, 8))
    y = torch.randint(0, 32, (5, 8))
    fisher = diagonal_fisher(model, sequence_log_likelihood, [x, y], chunk=2)

    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(5):
        model.zero_grad()
        sequence_log_likelihood(model, x[i : i + 1], y[i : i + 1]).backward()
        for n, p in model.named_parameters():  # the tied wte / lm_head weight appears once
            expected[n] += p.grad.square() / 5
    assert set(fisher) == set(expected)
    for n in expected:
        torch.testing.assert_close(fisher[n], expected[n], rtol=1e-4, atol=1e-9)


def test_mas_averages_per_sample_gradient_magnitudes():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 1.0]]))
    # d ||w.x||^2 / dw = 2 (w.x) x: x1 = (1, -2) gives (-2, 4), x2 = (1, 0) gives (2, 0)
    x = torch.tensor([[1.0, -2.0], [1.0, 0.0]])
    omega = output_sensitivity(model, x, chunk=1)["weight"]
    torch.testing.assert_close(omega, torch.tensor([[2.0, 2.0]]))  # |mean| would give (0, 2)


def test_si_importance_by_hand():
    # path integral 1.25 over a total change of -0.75 with xi = 0.1: 1.25 / (0.5625 + 0.1)
    omega = path_integral_importance(torch.tensor([1.25, -0.3]), torch.tensor([-0.75, 0.2]), 0.1)
    assert math.isclose(float(omega[0]), 1.25 / 0.6625, rel_tol=1e-6)
    assert float(omega[1]) == 0.0  # a negative path integral gives no importance
