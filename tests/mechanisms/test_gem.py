"""GEM's QP against brute force, A-GEM's projection by hand, both through the Trainer."""

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from forgetlab.mechanisms import gem as gem_module
from forgetlab.mechanisms.gem import agem_project, gem_project
from micro_run import run


def test_agem_projects_a_conflicting_gradient_onto_the_reference_plane():
    g, g_ref = torch.tensor([2.0, -3.0]), torch.tensor([1.0, 1.0])
    # g.g_ref = -1 < 0: g - (-1 / 2) * g_ref = (2.5, -2.5), orthogonal to g_ref
    projected = agem_project(g, g_ref)
    torch.testing.assert_close(projected, torch.tensor([2.5, -2.5]))
    assert float(projected @ g_ref) == 0.0


def test_agem_leaves_an_agreeing_gradient_alone():
    g = torch.tensor([1.0, 1.0])
    assert agem_project(g, torch.tensor([0.0, 1.0])) is g


def brute_force_projection(g: np.ndarray, G: np.ndarray) -> np.ndarray:
    """min ||x - g|| s.t. G x >= 0 by trying every active set (the optimum lies on one face)."""
    best, best_dist = None, np.inf
    for k in range(len(G) + 1):
        for active in itertools.combinations(range(len(G)), k):
            A = G[list(active)]
            x = g - A.T @ np.linalg.solve(A @ A.T, A @ g) if k else g.copy()
            if (G @ x >= -1e-9).all() and np.linalg.norm(x - g) < best_dist:
                best, best_dist = x, np.linalg.norm(x - g)
    return best


@pytest.mark.parametrize("seed", range(5))
def test_gem_qp_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    G = rng.normal(size=(4, 7))
    g = -G[:2].sum(0) + 0.3 * rng.normal(size=7)  # conflicts with at least the first memories
    assert (G @ g < 0).any()
    ours = gem_project(torch.tensor(g), torch.tensor(G)).numpy()
    np.testing.assert_allclose(ours, brute_force_projection(g, G), atol=1e-7)
    assert (G @ ours >= -1e-9).all()
    # and against a generic solver on the primal from many random starts
    cons = {"type": "ineq", "fun": lambda x: G @ x, "jac": lambda x: G}
    starts = [rng.normal(size=7) * 3 for _ in range(20)]
    results = [
        minimize(
            lambda x: 0.5 * np.sum((x - g) ** 2),
            x0,
            jac=lambda x: x - g,
            constraints=[cons],
            method="SLSQP",
            options={"ftol": 1e-12, "maxiter": 500},
        )
        for x0 in starts
    ]
    best = min((r for r in results if r.success), key=lambda r: r.fun)
    np.testing.assert_allclose(ours, best.x, atol=1e-5)


def test_gem_leaves_a_feasible_gradient_alone():
    g = torch.tensor([1.0, 2.0])
    assert gem_project(g, torch.tensor([[1.0, 0.0], [0.0, 1.0]])) is g


def test_gem_keeps_every_memory_constraint_in_a_trainer_run(fixture_data, tmp_path, monkeypatch):
    calls = []
    original = gem_module.gem_project

    def spy(g, G, margin=0.0):
        out = original(g, G, margin)
        calls.append((G.shape[0], float((G.double() @ out.double()).min())))
        return out

    monkeypatch.setattr(gem_module, "gem_project", spy)
    mech = [{"name": "gem", "memory_per_domain": 2}]
    record = run(fixture_data, tmp_path / "r", mech, domains=3, steps_per_stage=2)
    assert [n for n, _ in calls] == [1] * 2 + [2] * 2  # one constraint per past domain
    assert all(m >= -1e-6 for _, m in calls)
    # memory gradients: (1 + 2 domains) * 2 steps * 2 windows * 64 tokens, 6N+ FLOPs each
    assert record["flops"]["total"]["mechanisms"] > 6 * 2 * 64 * 6 * 2 * 64 * 64


def test_agem_runs_through_the_trainer(fixture_data, tmp_path):
    mech = [{"name": "agem", "memory_per_domain": 4, "reference_batch": 3}]
    record = run(fixture_data, tmp_path / "r", mech, steps_per_stage=3, log_every=1)
    assert record["flops"]["total"]["mechanisms"] > 0
    r = record["R"]["loss"]
    assert r[2][1] < r[0][1]


def test_gem_handles_linearly_dependent_memories():
    G = torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]])  # the same constraint twice
    projected = gem_project(torch.tensor([-1.0, 1.0, 2.0]), G)
    torch.testing.assert_close(projected, torch.tensor([0.0, 1.0, 2.0]), atol=1e-6, rtol=0)
