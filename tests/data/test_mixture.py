"""A mixture of domains: weights, empirical shares, determinism and resumption."""

from __future__ import annotations

import json

import numpy as np
import pytest

from forgetlab.data import (
    DataError,
    DomainMixture,
    mixture_weights,
    open_stream,
    sample_windows,
    stage_sources,
)

BLOCK = 8


def _domains() -> dict[str, np.ndarray]:
    """Three domains of 2,000 / 6,000 / 12,000 tokens whose ids tell them apart: domain d uses
    only ids 100 d .. 100 d + 99 (proportional weights 0.1 / 0.3 / 0.6, uniform 1/3 each)."""
    rng = np.random.default_rng(123)
    sizes = {"a": 2_000, "b": 6_000, "c": 12_000}
    return {
        n: (100 * d + rng.integers(0, 100, size=s)).astype(np.uint16)
        for d, (n, s) in enumerate(sizes.items())
    }


def test_weights_are_train_token_shares_or_uniform_or_explicit():
    counts = {"code": 1_000, "math": 3_000}
    assert mixture_weights(counts, "proportional") == {"code": 0.25, "math": 0.75}
    assert mixture_weights(counts, "uniform") == {"code": 0.5, "math": 0.5}
    assert mixture_weights(counts, {"math": 1.0, "code": 3.0}) == {"code": 0.75, "math": 0.25}
    mix = DomainMixture(_domains(), "proportional")
    assert mix.weights.tolist() == pytest.approx([0.1, 0.3, 0.6])


@pytest.mark.parametrize(
    ("weighting", "shares"), [("proportional", [0.1, 0.3, 0.6]), ("uniform", [1 / 3] * 3)]
)
def test_empirical_domain_shares_match_the_weights(weighting, shares):
    data = _domains()
    mix = DomainMixture(data, weighting)
    rng = np.random.default_rng([0, 0])
    counts = np.zeros(3)
    for _ in range(400):  # 25,600 rows: a share's standard error is <= 0.003
        x, y, domain = mix.sample(rng, 64, BLOCK)
        counts += np.bincount(domain, minlength=3)
        assert (x[:, 1:] == y[:, :-1]).all()
        # every row really comes from the domain it is labelled with (ids 100 d .. 100 d + 99)
        assert ((x.numpy() // 100) == domain[:, None]).all()
    assert (counts / counts.sum()).tolist() == pytest.approx(shares, abs=0.01)


def test_the_same_seed_gives_the_same_batches_and_another_seed_others():
    mix = DomainMixture(_domains(), "uniform")

    def batches(seed: int) -> list[np.ndarray]:
        rng = np.random.default_rng([seed, 2])
        return [mix.sample(rng, 16, BLOCK)[0].numpy() for _ in range(5)]

    assert all((p == q).all() for p, q in zip(batches(7), batches(7), strict=True))
    assert not all((p == q).all() for p, q in zip(batches(7), batches(8), strict=True))


def test_resuming_mid_mixture_from_the_saved_generator_state_gives_the_same_batches():
    mix = DomainMixture(_domains(), "proportional")
    rng = np.random.default_rng([3, 1])
    for _ in range(5):
        mix.sample(rng, 16, BLOCK)
    saved = json.loads(json.dumps(rng.bit_generator.state))  # what a checkpoint stores
    uninterrupted = [mix.sample(rng, 16, BLOCK) for _ in range(5)]

    resumed_rng = np.random.default_rng([3, 1])
    resumed_rng.bit_generator.state = saved
    fresh = DomainMixture(_domains(), "proportional")  # a new process rebuilds the mixture
    for (x, y, d), (x2, y2, d2) in zip(
        uninterrupted, [fresh.sample(resumed_rng, 16, BLOCK) for _ in range(5)], strict=True
    ):
        assert (x == x2).all() and (y == y2).all() and (d == d2).all()


def test_a_one_domain_mixture_draws_exactly_what_sample_windows_draws():
    tokens = _domains()["b"]
    x, y, d = DomainMixture({"b": tokens}).sample(np.random.default_rng(5), 16, BLOCK)
    x2, y2 = sample_windows(tokens, np.random.default_rng(5), 16, BLOCK)
    assert (x == x2).all() and (y == y2).all() and (d == 0).all()


def test_bad_weights_and_a_too_short_domain_are_refused_by_name():
    data = _domains()
    with pytest.raises(DataError, match=r"'sorted' is not known; allowed: \['proportional'"):
        DomainMixture(data, "sorted")  # type: ignore[arg-type]
    with pytest.raises(DataError, match=r"must name exactly the mixture's domains"):
        DomainMixture(data, {"a": 1.0, "b": 1.0})
    with pytest.raises(DataError, match=r"not finite and >= 0"):
        DomainMixture(data, {"a": -1.0, "b": 1.0, "c": 1.0})
    with pytest.raises(DataError, match=r"sum to 0"):
        DomainMixture(data, {"a": 0.0, "b": 0.0, "c": 0.0})
    with pytest.raises(DataError, match=r"at least one domain"):
        DomainMixture({})
    short = {**data, "tiny": np.arange(5, dtype=np.uint16)}
    with pytest.raises(DataError, match=r"a split of 5 tokens is shorter than one window"):
        DomainMixture(short, "uniform").sample(np.random.default_rng(0), 4, BLOCK)


def test_joint_stages_share_one_mixture_weighted_by_the_shards_train_tokens(fixture_data):
    stream = open_stream(fixture_data.domains, fixture_data.tokenizer, fixture_data.cache_dir)
    plain = stage_sources(stream, None)
    assert [s.names for s in plain] == [[d] for d in stream.domains]
    assert [s.label for s in plain] == stream.domains
    joint = stage_sources(stream, "proportional")
    assert len(joint) == len(stream.domains) and all(s is joint[0] for s in joint)
    tokens = {d: stream[d].manifest["tokens"]["train"] for d in stream.domains}
    total = sum(tokens.values())
    assert joint[0].names == stream.domains
    assert joint[0].weights.tolist() == pytest.approx([tokens[d] / total for d in stream.domains])
    assert stage_sources(stream, "uniform")[0].weights.tolist() == pytest.approx([0.2] * 5)
