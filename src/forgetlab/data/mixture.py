"""Training windows drawn from a mixture of domains: the data of joint training and base models.

A :class:`DomainMixture` holds several domains' train shards and one weight per domain. Each row of
a batch picks its domain independently with those weights, then a uniform random window of that
domain's train shard (multinomial mixing, the sampling of multi-domain pre-training corpora, e.g.
the Pile, Gao et al. 2020; T5's "examples-proportional mixing", Raffel et al. 2020). Weights are

* ``proportional``: each domain's share of the train tokens, so one pass over the mixture reads
  every domain as often as concatenating and shuffling the shards would;
* ``uniform``: every domain the same share, whatever its size;
* an explicit ``{domain: weight}`` mapping (normalised).

The mixture itself holds no state: every choice comes from the ``numpy`` generator the caller
passes (the trainer's data generator, seeded from the run's seed and saved in every checkpoint),
so the same seed gives the same batches and a run resumed mid-stage continues with exactly the
batches it would have drawn. A one-domain mixture draws exactly what
:func:`~forgetlab.data.stream.sample_windows` draws from the same generator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np

from forgetlab.data.errors import DataError
from forgetlab.data.stream import Stream, check_length, gather_windows, sample_windows, split_xy

if TYPE_CHECKING:
    import torch

Weighting = Literal["proportional", "uniform"]
WEIGHTINGS: tuple[str, ...] = get_args(Weighting)


def mixture_weights(
    token_counts: Mapping[str, int], weighting: Weighting | Mapping[str, float]
) -> dict[str, float]:
    """Normalised sampling weight of each domain, in ``token_counts`` order.

    ``proportional`` weighs a domain by its train tokens, ``uniform`` weighs all alike, a mapping
    gives each domain's weight explicitly (it must name exactly the mixture's domains).
    """
    names = list(token_counts)
    if not names:
        raise DataError("a domain mixture needs at least one domain")
    if isinstance(weighting, str):
        if weighting == "proportional":
            raw = {n: float(token_counts[n]) for n in names}
        elif weighting == "uniform":
            raw = dict.fromkeys(names, 1.0)
        else:
            raise DataError(
                f"mixture weighting = {weighting!r} is not known; allowed: {list(WEIGHTINGS)} "
                "or a {domain: weight} table"
            )
    else:
        if set(weighting) != set(names):
            raise DataError(
                f"mixture weights name {sorted(weighting)}; they must name exactly the mixture's "
                f"domains {names}"
            )
        raw = {n: float(weighting[n]) for n in names}
    bad = {n: w for n, w in raw.items() if not (math.isfinite(w) and w >= 0)}
    if bad:
        raise DataError(f"mixture weights {bad} are not finite and >= 0")
    total = sum(raw.values())
    if total <= 0:
        raise DataError(f"mixture weights {raw} sum to 0: no domain would ever be drawn")
    return {n: w / total for n, w in raw.items()}


class DomainMixture:
    """Random training windows from several domains' train shards, mixed by weight.

    ``train`` maps each domain to its train token array (a memory-mapped shard, or any 1-d array);
    ``weighting`` is ``proportional`` (to ``len`` of each array: its train tokens), ``uniform`` or
    explicit weights.
    """

    def __init__(
        self,
        train: Mapping[str, np.ndarray],
        weighting: Weighting | Mapping[str, float] = "proportional",
    ) -> None:
        self.names = list(train)
        self.shards = [train[n] for n in self.names]
        self.weighting = weighting if isinstance(weighting, str) else "explicit"
        by_name = mixture_weights({n: len(train[n]) for n in self.names}, weighting)
        self.weights = np.array([by_name[n] for n in self.names], dtype=np.float64)

    @property
    def label(self) -> str:
        """What progress bars and curves call this source: the domain, or the mixture."""
        if len(self.names) == 1:
            return self.names[0]
        return f"{self.weighting} mix of {len(self.names)}"

    def sample(
        self, rng: np.random.Generator, batch_size: int, block_size: int
    ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """A batch ``(x, y, domain)``: ``batch_size`` windows, ``y`` is ``x`` shifted by one
        token, ``domain[i]`` the index in :attr:`names` of row ``i``'s domain.

        Rows first draw their domains (one ``choice`` over the weights), then each domain in
        order draws the window starts of its rows, all from ``rng``.
        """
        if len(self.shards) == 1:  # the plain stream: exactly sample_windows' draws
            x, y = sample_windows(self.shards[0], rng, batch_size, block_size)
            return x, y, np.zeros(batch_size, dtype=np.int64)
        lengths = [check_length(t, block_size) for t in self.shards]  # every domain, every call
        domain = rng.choice(len(self.shards), size=batch_size, p=self.weights)
        windows = np.empty((batch_size, block_size + 1), dtype=np.int64)
        for d, (tokens, n) in enumerate(zip(self.shards, lengths, strict=True)):
            rows = np.flatnonzero(domain == d)
            if rows.size:
                starts = rng.integers(0, n - block_size, size=rows.size)
                windows[rows] = gather_windows(tokens, starts, block_size)
        x, y = split_xy(windows)
        return x, y, domain.astype(np.int64)

    def __repr__(self) -> str:
        shares = ", ".join(f"{n}={w:.3f}" for n, w in zip(self.names, self.weights, strict=True))
        return f"DomainMixture({shares})"


def stage_sources(stream: Stream, joint: Weighting | None) -> list[DomainMixture]:
    """What each stage of a run trains on: its own domain (the continual stream), or, under joint
    training, the same mixture of every domain of the stream at every stage."""
    if joint is None:
        return [DomainMixture({d: stream[d].train}) for d in stream.domains]
    mixture = DomainMixture({d: stream[d].train for d in stream.domains}, joint)
    return [mixture] * len(stream.domains)
