"""Replay memories: fixed-capacity stores of token sequences and the policies that fill them.

Shared by every mechanism that keeps samples (``replay``, ``sleep``, ``generative_replay``,
``latent_replay``), as Mammoth keeps its buffer in ``utils/`` rather than in a method, with what
they do alike: writing a batch's stream rows, herding at a stage end, checking the capacity, and
:class:`BatchReplay`, the batch mixing ``replay`` and ``generative_replay`` share. The selection
rules are pure functions, tested on their own:

* :func:`reservoir_slot` -- Vitter 1985, Algorithm R: the t-th sample is kept with probability
  min(1, K/t) into a uniformly chosen slot, so every sample seen so far is held with the same
  probability K/t.
* ring -- FIFO, the last K samples (Chaudhry et al. 2019, "On tiny episodic memories").
* balanced -- each of the t seen domains gets floor(K/t) slots (a uniform sample of that domain
  kept by Algorithm R), older domains truncated at random when a domain arrives.
* :func:`herding_order` -- iCaRL's greedy exemplar selection (Rebuffi et al. 2017, Alg. 4): the
  k-th pick makes the mean of the first k picked features closest to the domain's mean feature, so
  truncating the exemplar list to any prefix keeps the best approximation of that mean.
* loss -- hardest first: per domain, the floor(K/t) samples with the highest loss when written.

All randomness comes from a ``torch.Generator`` the caller passes, so a run is reproducible and a
resumed run continues the same draws (the trainer checkpoints the generator).
"""

from __future__ import annotations

import re
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from forgetlab.config import ConfigError, RunConfig
from forgetlab.mechanisms.base import Batch, Mechanism, StepOutput, TrainContext
from forgetlab.models import model_flops_per_token

Policy = Literal["reservoir", "ring", "balanced", "herding", "loss"]
PER_DOMAIN: frozenset[str] = frozenset({"balanced", "herding", "loss"})


def _randint(high: int, generator: torch.Generator) -> int:
    """A uniform integer in [0, high) from ``generator`` (on the generator's own device)."""
    return int(torch.randint(high, (1,), generator=generator, device=generator.device))


def reservoir_slot(t: int, capacity: int, generator: torch.Generator) -> int | None:
    """Algorithm R (Vitter 1985) for the ``t``-th sample (1-based) of a stream into ``capacity``
    slots: the slot to write, or None to drop it. The first K samples fill slots 0..K-1; after
    that j ~ U{0..t-1} and the sample replaces slot j when j < K (probability K/t)."""
    if t <= capacity:
        return t - 1
    j = _randint(t, generator)
    return j if j < capacity else None


def herding_order(features: torch.Tensor, m: int) -> torch.Tensor:
    """Indices of ``m`` rows of ``features`` (n, C) in iCaRL herding order (Rebuffi 2017, Alg. 4).

    p_k = argmin_x || mu - (phi(x) + sum_{j<k} phi(p_j)) / k ||, over rows not yet picked, i.e. the
    row nearest to the target k * mu - sum_{j<k} phi(p_j); ties go to the lowest index.
    """
    f = features.double()
    n = f.shape[0]
    m = min(m, n)
    mu = f.mean(0)
    picked = torch.zeros(n, dtype=torch.bool, device=f.device)
    total = torch.zeros_like(mu)
    order = []
    for k in range(1, m + 1):
        dist = ((k * mu - total) - f).pow(2).sum(1)
        dist[picked] = float("inf")
        i = int(torch.argmin(dist))
        order.append(i)
        picked[i] = True
        total += f[i]
    return torch.tensor(order, dtype=torch.long, device=features.device)


class SequenceBuffer:
    """At most ``capacity`` (x, y) sequence pairs with their domain and a score (loss when written).

    Storage is preallocated on the first write; a slot's ``domain`` is -1 while it is empty. Each
    write takes the next value of a counter (``order``), so a domain's rows in ``order`` are its
    insertion (for herding: selection) order. With the herding policy, :meth:`add` fills a pool of
    the current domain's samples (a reservoir of ``pool`` rows) and :meth:`commit_herding` picks the
    exemplars from it once the model has seen the whole domain.
    """

    def __init__(self, capacity: int, policy: Policy, pool: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity = {capacity} must be >= 1")
        self.capacity, self.policy = capacity, policy
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.domain = torch.full((capacity,), -1, dtype=torch.long)
        self.score = torch.zeros(capacity)
        self.order = torch.zeros(capacity, dtype=torch.long)
        self.writes = 0  # rows written so far (the ``order`` counter)
        self.offered = 0  # samples offered to the buffer (t of Algorithm R for global policies)
        self.seen: dict[int, int] = {}  # domain -> samples offered (t of Algorithm R per domain)
        self.pool: SequenceBuffer | None = None
        if policy == "herding":
            if pool < 1:
                raise ValueError("the herding policy needs a candidate pool of >= 1 rows")
            self.pool = SequenceBuffer(pool, "reservoir")

    # ------------------------------------------------------------------------------- reading
    def __len__(self) -> int:
        return int((self.domain >= 0).sum())

    def quota(self) -> int:
        """floor(K / t) slots per seen domain (iCaRL's m, Rebuffi et al. 2017)."""
        return self.capacity // max(len(self.seen), 1)

    def rows_of(self, domain: int) -> torch.Tensor:
        """Slots holding ``domain``, in insertion order."""
        slots = (self.domain == domain).nonzero().flatten()
        return slots[torch.argsort(self.order[slots])]

    def contents(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All held (x, y, domain), oldest write first."""
        slots = (self.domain >= 0).nonzero().flatten()
        slots = slots[torch.argsort(self.order[slots])]
        if self.x is None or self.y is None:
            empty = torch.empty(0, 0, dtype=torch.long)
            return empty, empty, self.domain[:0]
        return self.x[slots], self.y[slots], self.domain[slots]

    def sample(
        self, n: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``n`` rows uniformly at random: without replacement when enough are held, else with."""
        slots = (self.domain >= 0).nonzero().flatten()
        if len(slots) == 0:
            raise ValueError("cannot sample from an empty buffer")
        if n <= len(slots):
            pick = torch.randperm(len(slots), generator=generator, device=generator.device)[:n]
        else:
            pick = torch.randint(len(slots), (n,), generator=generator, device=generator.device)
        chosen = slots[pick.cpu()]
        assert self.x is not None and self.y is not None
        return self.x[chosen], self.y[chosen], self.domain[chosen]

    # ------------------------------------------------------------------------------- writing
    def add(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        domain: int,
        generator: torch.Generator,
        scores: torch.Tensor | None = None,
    ) -> None:
        """Offer the rows of (x, y), all from ``domain``, to the buffer under its policy."""
        if self.policy == "loss" and scores is None:
            raise ValueError("the loss policy needs a score (loss) per row")
        self._admit(domain, generator)
        if self.pool is not None:
            self.offered += x.shape[0]
            self.seen[domain] += x.shape[0]
            self.pool.add(x, y, domain, generator)
            return
        for i in range(x.shape[0]):
            self.offered += 1
            self.seen[domain] += 1
            score = 0.0 if scores is None else float(scores[i])
            slot = self._slot(domain, score, generator)
            if slot is not None:
                self._write(slot, x[i], y[i], domain, score)

    def commit_herding(self, features: torch.Tensor, generator: torch.Generator) -> None:
        """Write the pool's ``quota()`` herding exemplars (``features``: one row per pool row, in
        :meth:`contents` order of the pool) and empty the pool."""
        assert self.pool is not None, "commit_herding needs the herding policy"
        px, py, pdom = self.pool.contents()
        if len(pdom) == 0:
            return
        domain = int(pdom[0])
        self._admit(domain, generator)
        for i in herding_order(features, self.quota()).tolist():
            self._write(self._free_slot(), px[i], py[i], domain, 0.0)
        self.pool = SequenceBuffer(self.pool.capacity, "reservoir")

    def _admit(self, domain: int, generator: torch.Generator) -> None:
        """Register a new domain; per-domain policies shrink older domains to the new quota."""
        if domain in self.seen:
            return
        self.seen[domain] = 0
        if self.policy not in PER_DOMAIN:
            return
        m = self.quota()
        for d in list(self.seen):
            slots = self.rows_of(d)
            if len(slots) <= m:
                continue
            if self.policy == "herding":  # keep the herding prefix P_y[0:m]
                keep = torch.arange(m)
            elif self.policy == "loss":  # keep the hardest
                keep = torch.argsort(self.score[slots], descending=True, stable=True)[:m]
            else:  # balanced: a uniform subset of a uniform sample is uniform
                keep = torch.randperm(len(slots), generator=generator, device=generator.device)
                keep = keep[:m].cpu()
            drop = torch.ones(len(slots), dtype=torch.bool)
            drop[keep] = False
            self.domain[slots[drop]] = -1

    def _slot(self, domain: int, score: float, generator: torch.Generator) -> int | None:
        """Where the next offered sample goes under the policy, or None to drop it."""
        if self.policy == "reservoir":
            return reservoir_slot(self.offered, self.capacity, generator)
        if self.policy == "ring":
            return (self.offered - 1) % self.capacity
        slots = self.rows_of(domain)
        if len(slots) < self.quota():
            return self._free_slot()
        if self.policy == "balanced":
            j = reservoir_slot(self.seen[domain], self.quota(), generator)
            return None if j is None else int(slots[j])
        weakest = int(torch.argmin(self.score[slots]))  # loss: replace the easiest if harder
        return int(slots[weakest]) if score > float(self.score[slots[weakest]]) else None

    def _free_slot(self) -> int:
        return int((self.domain < 0).nonzero()[0])

    def _write(
        self, slot: int, x: torch.Tensor, y: torch.Tensor, domain: int, score: float
    ) -> None:
        if self.x is None or self.y is None:
            self.x = x.new_zeros((self.capacity, *x.shape))
            self.y = y.new_zeros((self.capacity, *y.shape))
        self.x[slot], self.y[slot] = x, y
        self.domain[slot], self.score[slot] = domain, score
        self.order[slot] = self.writes
        self.writes += 1

    # -------------------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        return {
            "x": None if self.x is None else self.x.clone(),
            "y": None if self.y is None else self.y.clone(),
            "domain": self.domain.clone(),
            "score": self.score.clone(),
            "order": self.order.clone(),
            "writes": self.writes,
            "offered": self.offered,
            "seen": dict(self.seen),
            "pool": None if self.pool is None else self.pool.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        self.x = None if state["x"] is None else state["x"].to(device, copy=True)
        self.y = None if state["y"] is None else state["y"].to(device, copy=True)
        self.domain = state["domain"].clone()
        self.score = state["score"].clone()
        self.order = state["order"].clone()
        self.writes, self.offered = state["writes"], state["offered"]
        self.seen = dict(state["seen"])
        if self.pool is not None:
            self.pool.load_state_dict(state["pool"], device)


def stream_rows(weights: torch.Tensor | None, replayed: torch.Tensor | None, n: int) -> torch.Tensor:
    """(n,) bool: the batch rows a memory may store -- stream rows (not replayed) that a selective
    write gate let through. A row passes the gate when at least half its tokens do (with a
    per-sequence gate, exactly the rows it kept)."""
    keep = torch.ones(n, dtype=torch.bool)
    if replayed is not None:
        keep &= ~replayed.cpu()
    if weights is not None:
        keep &= ((weights > 0).float().mean(1) >= 0.5).cpu()
    return keep


class MixKnobs(BaseModel):
    """How many rows of each batch come from the memory: ER's "new:old" ratio (commonly 1:1 or
    2:1; Chaudhry et al. 2019) or the replayed share of the rows. The default is 1:1."""

    model_config = ConfigDict(extra="forbid")

    ratio: str | None = Field(None, description='new:old rows per batch, e.g. "1:1" or "2:1"')
    replay_fraction: float | None = Field(
        None, ge=0, le=1, description="share of each batch's rows replaced by memory rows"
    )

    @model_validator(mode="after")
    def _one_way(self) -> MixKnobs:
        if self.ratio is not None and self.replay_fraction is not None:
            raise ValueError("give either ratio or replay_fraction, not both")
        if self.ratio is not None:
            m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*:\s*(\d+(?:\.\d*)?)\s*", self.ratio)
            if m is None or float(m[1]) + float(m[2]) == 0:
                raise ValueError(f"ratio = {self.ratio!r} is not new:old, e.g. '1:1' or '2:1'")
        return self

    def old_share(self) -> float:
        """The fraction of a batch's rows drawn from the memory."""
        if self.replay_fraction is not None:
            return self.replay_fraction
        if self.ratio is None:
            return 0.5
        new, old = (float(v) for v in self.ratio.split(":"))
        return old / (new + old)


def mix_in(batch: Batch, x_old: torch.Tensor, y_old: torch.Tensor) -> Batch:
    """Replace the last ``len(x_old)`` rows of ``batch`` by memory rows. The batch keeps its shape,
    so every step costs the same FLOPs whatever the mix; replayed rows get weight 1 and are marked
    in ``Batch.replayed``."""
    b, n = batch.x.shape[0], x_old.shape[0]
    keep = slice(0, b - n)
    x = torch.cat([batch.x[keep], x_old.to(batch.x.device)])
    y = torch.cat([batch.y[keep], y_old.to(batch.y.device)])
    weights = None
    if batch.weights is not None:
        weights = torch.cat([batch.weights[keep], batch.weights.new_ones((n, y.shape[1]))])
    replayed = torch.zeros(b, dtype=torch.bool, device=batch.x.device)
    if batch.replayed is not None:
        replayed[: b - n] = batch.replayed[keep]
    replayed[b - n :] = True
    return Batch(x, y, weights, batch.domain, replayed)


def write_stream_rows(
    buffer: SequenceBuffer, ctx: TrainContext, batch: Batch, output: StepOutput
) -> None:
    """Offer the batch's stream rows that passed any write gate, scored by their mean loss."""
    keep = stream_rows(batch.weights, batch.replayed, batch.x.shape[0]).to(batch.x.device)
    if keep.any():
        scores = output.token_loss.detach().float().mean(1)[keep].cpu()
        buffer.add(batch.x[keep], batch.y[keep], batch.domain, ctx.generator, scores)


@torch.no_grad()
def commit_herding(buffer: SequenceBuffer, ctx: TrainContext, batch_size: int = 64) -> float:
    """Herd the current domain's exemplars from the buffer's pool with the current model's
    features (mean-pooled final hidden state, as iCaRL uses the current phi); returns the forward
    FLOPs of the feature passes."""
    assert buffer.pool is not None
    x, _, _ = buffer.pool.contents()
    if len(x) == 0:
        return 0.0
    model = ctx.model
    was_training = model.training
    model.eval()
    try:
        feats = []
        for i in range(0, len(x), batch_size):
            with ctx.autocast():
                feats.append(model.hidden(x[i : i + batch_size]).float().mean(1))
    finally:
        model.train(was_training)
    buffer.commit_herding(torch.cat(feats), ctx.generator)
    seq = x.shape[1]
    return float(model_flops_per_token(model.config, seq)["forward"] * seq * len(x))


def check_capacity(capacity: int, policy: str, run: RunConfig, who: str) -> None:
    """Per-domain policies give floor(K / t) slots per domain: K below the number of domains would
    leave the last domains no slot at all."""
    n = len(run.data.domains)
    if policy in PER_DOMAIN and capacity < n:
        raise ConfigError(
            f"mechanism {who!r}: capacity = {capacity} with policy = {policy!r} gives "
            f"floor({capacity}/{n}) = 0 slots per domain at the last of {n} domains; "
            f"use capacity >= {n}"
        )


class BatchReplay(Mechanism):
    """A memory whose rows replace a share of every stream batch (``replay`` keeps real rows,
    ``generative_replay`` generated ones): the buffer, the mixing, the capacity check and the
    saved state; a subclass decides what the memory holds."""

    incompatible_reason = (
        "both replace a share of every batch by their own memory's rows, so together they would "
        "silently double the replayed share; choose real (replay) or generated "
        "(generative_replay) samples"
    )
    saved = ("buffer",)

    class Knobs(MixKnobs):
        capacity: int = Field(256, ge=1, description="memory size in sequences")

    def __init__(self, knobs: Knobs, buffer: SequenceBuffer) -> None:
        super().__init__(knobs)
        self.knobs: BatchReplay.Knobs = knobs
        self.buffer = buffer

    def check_run(self, run: RunConfig) -> None:
        check_capacity(self.knobs.capacity, self.buffer.policy, run, self.name)

    def make_batch(self, ctx: TrainContext, batch: Batch) -> Batch:
        n_old = round(batch.x.shape[0] * self.knobs.old_share())
        if n_old == 0 or len(self.buffer) == 0:
            return batch
        x, y, _ = self.buffer.sample(n_old, ctx.generator)
        return mix_in(batch, x, y)
