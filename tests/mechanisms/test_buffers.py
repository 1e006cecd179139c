"""Replay memories: each storage policy, herding on the iCaRL worked example, mixing."""

import pytest
import torch
from scipy.stats import chisquare

from forgetlab.mechanisms import Batch
from forgetlab.mechanisms.parts.buffers import (
    MixKnobs,
    SequenceBuffer,
    herding_order,
    mix_in,
    reservoir_slot,
    stream_rows,
)


def rows(ids):
    """Sequences of length 2 whose first token is the id, so a row says which sample it is."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    return torch.stack([ids, ids + 1000], 1), torch.stack([ids + 1000, ids + 2000], 1)


def held(buf, domain=None):
    x, _, dom = buf.contents()
    if domain is not None:
        x = x[dom == domain]
    return x[:, 0].tolist() if len(x) else []


# docs/methods.md, the worked example: 2-D features of classes A, B (stage 1) and C (stage 2)
A = [(0, 0), (1, 0), (0, 1), (1, 1), (2, 2)]
B = [(3, 3), (3, 2), (2, 3), (4, 4), (2, 2)]
C = [(-1, -1), (-1, 0), (0, -1), (-2, -2), (0, 0)]


def test_herding_reproduces_the_icarl_worked_example():
    # by hand, target_k = k * mu - sum of picks: A (mu = (0.8, 0.8)) -> (1,1) [d2=.08], then
    # target (.6,.6): (1,0) and (0,1) tie at .52, the first listed wins -> (1,0); target (.4,1.4)
    # -> (0,1) [.32]; target (1.2,1.2) -> (2,2) [1.28 < 2.88]
    order = herding_order(torch.tensor(A, dtype=torch.float), 4)
    assert [A[i] for i in order] == [(1, 1), (1, 0), (0, 1), (2, 2)]
    order = herding_order(torch.tensor(B, dtype=torch.float), 4)
    assert [B[i] for i in order] == [(3, 3), (3, 2), (2, 3), (4, 4)]
    order = herding_order(torch.tensor(C, dtype=torch.float), 2)
    assert [C[i] for i in order] == [(-1, -1), (-1, 0)]


def test_herding_never_picks_a_row_twice_and_caps_at_n():
    f = torch.randn(7, 3, generator=torch.Generator().manual_seed(0))
    order = herding_order(f, 10)
    assert sorted(order.tolist()) == list(range(7))


def test_herding_buffer_truncates_to_prefix_and_gives_document_ncm_predictions():
    """K = 8: after A and B each keeps m = 4 (Memory^(1)); C arriving cuts all to m = 2."""
    g = torch.Generator().manual_seed(0)
    buf = SequenceBuffer(8, "herding", pool=5)
    feats = {}
    for d, points in enumerate((A, B, C)):
        ids = torch.arange(5) + 10 * d
        feats.update({int(i): p for i, p in zip(ids, points, strict=True)})
        buf.add(*rows(ids), d, g)
        px, _, _ = buf.pool.contents()
        buf.commit_herding(torch.tensor([feats[int(i)] for i in px[:, 0]], dtype=torch.float), g)
        if d == 1:
            memory1 = {k: [feats[i] for i in held(buf, k)] for k in (0, 1)}
    memory2 = {k: [feats[i] for i in held(buf, k)] for k in (0, 1, 2)}
    assert memory1 == {0: [(1, 1), (1, 0), (0, 1), (2, 2)], 1: [(3, 3), (3, 2), (2, 3), (4, 4)]}
    assert memory2 == {0: [(1, 1), (1, 0)], 1: [(3, 3), (3, 2)], 2: [(-1, -1), (-1, 0)]}

    def ncm(memory, point):  # nearest class mean over the exemplars (iCaRL's classifier)
        means = {k: torch.tensor(v, dtype=torch.float).mean(0) for k, v in memory.items()}
        dist = {k: float((torch.tensor(point) - m).norm()) for k, m in means.items()}
        best = min(dist, key=dist.get)
        return best, dist[best]

    label, dist = ncm(memory1, (0.9, 0.7))
    assert label == 0 and dist == pytest.approx(0.316, abs=1e-3)  # mu_A = (1, 1)
    label, dist = ncm(memory2, (0.9, 0.7))
    assert label == 0 and dist == pytest.approx(0.224, abs=1e-3)  # mu_A = (1, 0.5)
    label, dist = ncm(memory2, (-0.9, -0.6))
    assert label == 2 and dist == pytest.approx(0.141, abs=1e-3)  # mu_C = (-1, -0.5)


def test_reservoir_keeps_every_sample_with_equal_probability():
    k, n, streams = 5, 20, 2000
    g = torch.Generator().manual_seed(1234)
    counts = torch.zeros(n)
    for _ in range(streams):
        buf = SequenceBuffer(k, "reservoir")
        buf.add(*rows(range(n)), 0, g)
        assert len(buf) == k
        counts[held(buf)] += 1
    assert counts.sum() == k * streams
    _, p = chisquare(counts.numpy())  # expected K/N * streams = 500 per sample
    assert p > 0.01, counts


def test_reservoir_slot_fills_then_replaces_with_probability_k_over_t():
    g = torch.Generator().manual_seed(0)
    assert [reservoir_slot(t, 3, g) for t in (1, 2, 3)] == [0, 1, 2]
    kept = [reservoir_slot(10, 3, g) for _ in range(4000)]
    share = sum(s is not None for s in kept) / len(kept)
    assert share == pytest.approx(0.3, abs=0.03)
    assert {s for s in kept if s is not None} == {0, 1, 2}


def test_ring_keeps_the_last_k_in_fifo_order():
    g = torch.Generator().manual_seed(0)
    buf = SequenceBuffer(3, "ring")
    buf.add(*rows(range(7)), 0, g)
    assert held(buf) == [4, 5, 6]
    buf.add(*rows([7]), 1, g)
    assert held(buf) == [5, 6, 7]


def test_balanced_gives_each_seen_domain_floor_k_over_t_slots():
    g = torch.Generator().manual_seed(0)
    buf = SequenceBuffer(10, "balanced")
    buf.add(*rows(range(30)), 0, g)
    assert len(held(buf, 0)) == 10
    before = set(held(buf, 0))
    buf.add(*rows(range(100, 130)), 1, g)
    assert [len(held(buf, d)) for d in (0, 1)] == [5, 5]
    assert set(held(buf, 0)) <= before  # truncated, never refilled with something else
    buf.add(*rows(range(200, 230)), 2, g)
    assert [len(held(buf, d)) for d in (0, 1, 2)] == [3, 3, 3]  # floor(10 / 3)
    assert set(held(buf, 2)) <= set(range(200, 230))


def test_loss_policy_keeps_the_hardest_per_domain():
    g = torch.Generator().manual_seed(0)
    buf = SequenceBuffer(4, "loss")
    perm = torch.randperm(10, generator=g)
    buf.add(*rows(perm), 0, g, scores=perm.float())
    assert sorted(held(buf)) == [6, 7, 8, 9]
    buf.add(*rows(perm + 100), 1, g, scores=perm.float())
    assert sorted(held(buf, 0)) == [8, 9] and sorted(held(buf, 1)) == [108, 109]
    with pytest.raises(ValueError, match="score"):
        buf.add(*rows([1]), 1, g)


@pytest.mark.parametrize("policy", ["reservoir", "ring", "balanced", "loss", "herding"])
def test_restored_buffer_continues_identically(policy):
    def stream(buf, g, start, stop):
        for d in range(start, stop):
            ids = torch.arange(12) + 100 * d
            buf.add(*rows(ids), d % 3, g, scores=(ids % 7).float())

    g = torch.Generator().manual_seed(5)
    a = SequenceBuffer(6, policy, pool=4)
    stream(a, g, 0, 2)
    state, g_state = a.state_dict(), g.get_state()
    stream(a, g, 2, 4)
    b = SequenceBuffer(6, policy, pool=4)
    b.load_state_dict(state)
    g2 = torch.Generator().manual_seed(99)
    g2.set_state(g_state)
    stream(b, g2, 2, 4)
    for ta, tb in zip(a.contents(), b.contents(), strict=True):
        assert torch.equal(ta, tb)
    if policy == "herding":
        assert torch.equal(a.pool.contents()[0], b.pool.contents()[0])


@pytest.mark.parametrize(
    ("knobs", "batch", "old"),
    [({}, 8, 4), ({"ratio": "1:1"}, 6, 3), ({"ratio": "2:1"}, 6, 2), ({"replay_fraction": 0.25}, 8, 2)],
)
def test_mixing_replaces_the_right_number_of_rows(knobs, batch, old):
    mix = MixKnobs(**knobs)
    n_old = round(batch * mix.old_share())
    assert n_old == old
    x, y = rows(range(batch))
    xo, yo = rows(range(500, 500 + n_old))
    w = torch.zeros(batch, 2)
    out = mix_in(Batch(x, y, w, 3), xo, yo)
    assert out.x.shape == x.shape and out.domain == 3
    assert out.x[:, 0].tolist() == list(range(batch - old)) + list(range(500, 500 + old))
    assert out.replayed.tolist() == [False] * (batch - old) + [True] * old
    assert out.weights[batch - old :].eq(1).all() and out.weights[: batch - old].eq(0).all()


def test_mix_knobs_refuse_bad_ratios():
    with pytest.raises(ValueError, match="not new:old"):
        MixKnobs(ratio="1-1")
    with pytest.raises(ValueError, match="not both"):
        MixKnobs(ratio="1:1", replay_fraction=0.5)


def test_stream_rows_skip_replayed_and_gated_rows():
    weights = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    replayed = torch.tensor([False, False, False, True])
    assert stream_rows(weights, replayed, 4).tolist() == [True, True, False, False]
    assert stream_rows(None, None, 2).tolist() == [True, True]
