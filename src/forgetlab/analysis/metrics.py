"""Continual-learning metrics from an R matrix: pure functions the trainer and analysis both call.

Notation (the README repeats it): ``a[i][j]`` is the score on domain ``j`` (columns, 1..T in the
formulas, 0-based in code) after stage ``i`` (rows 0..T; row 0 = the model before stage 1).
Scores are higher-is-better: token accuracy as is, loss as ``-loss``. Forgetting is positive
when performance dropped.

* ACC = mean_j a[T][j]
* BWT = mean_{j<T} (a[T][j] - a[j][j])                       (Lopez-Paz & Ranzato 2017, GEM)
* FWT = mean_{j>=2} (a[j-1][j] - a[0][j])                    (GEM, against the untrained model)
* f_j = max_{1<=l<T} a[l][j] - a[T][j];  AF = mean_{j<T} f_j (Chaudhry et al. 2018, RWalk)
* Retention@k = mean_{j: j+k<=T} a[j+k][j] / a[j][j]; for loss L[j][j] / L[j+k][j]
* plasticity = mean_j (a[j][j] - a[j-1][j])                  (gain on the domain being learned)
* convergence = optimizer steps until the in-stage validation loss on the new domain first comes
  within 5% of the stage's total drop from its end value, linearly interpolated between the two
  evaluations around the crossing (evaluations every E steps would otherwise round it up to a
  multiple of E: at 60 steps per stage with E = 30 every run "converged" at 60).

Probe domains (``data.probes``, never trained on) give a (T+1) x P matrix per kind, rows as R's:

* probe forgetting_p = a[0][p] - a[T][p]: the score on probe p before the stream minus after it
  (for loss, L[T][p] - L[0][p]); what the stream cost the general ability the probe measures

A metric whose index set is empty (e.g. BWT with one domain) is ``None``, never 0. Which of these
a run records, under which names, is declared in :mod:`forgetlab.analysis.registry`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

Kind = Literal["loss", "accuracy", "bpb"]
KINDS: tuple[Kind, ...] = ("loss", "bpb", "accuracy")  # what the trainer evaluates, in this order
LOWER_IS_BETTER: frozenset[str] = frozenset({"loss", "bpb"})


def check_shape(a: np.ndarray) -> int:
    """T, after checking that ``a`` is an R matrix: T+1 rows (row 0 untrained), T columns."""
    if a.ndim != 2 or a.shape[0] != a.shape[1] + 1:
        raise ValueError(f"R must have shape (T+1, T); got {a.shape}")
    return a.shape[1]


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def to_scores(r: np.ndarray | Sequence[Sequence[float]], kind: Kind) -> np.ndarray:
    """Turn a raw R matrix into higher-is-better scores (loss and bpb are negated)."""
    a = np.asarray(r, dtype=np.float64)
    return -a if kind in LOWER_IS_BETTER else a


def average_accuracy(a: np.ndarray) -> float:
    """ACC: mean final score over all domains."""
    t = check_shape(a)
    return float(np.mean(a[t, :]))


def backward_transfer(a: np.ndarray) -> float | None:
    """BWT: mean change of each earlier domain's score from just after learning it to the end."""
    t = check_shape(a)
    return _mean([a[t, j] - a[j + 1, j] for j in range(t - 1)])


def forward_transfer(a: np.ndarray) -> float | None:
    """FWT: how much the stages before domain j already helped it, against the untrained model."""
    t = check_shape(a)
    return _mean([a[j, j] - a[0, j] for j in range(1, t)])


def forgetting_per_domain(a: np.ndarray) -> list[float]:
    """f_j = max over stages 1..T-1 of the score on j, minus the final score (domains 1..T-1)."""
    t = check_shape(a)
    return [float(np.max(a[1:t, j]) - a[t, j]) for j in range(t - 1)]


def average_forgetting(a: np.ndarray) -> float | None:
    """Average Forgetting: mean of f_j over the domains that were followed by another stage."""
    return _mean(forgetting_per_domain(a))


def retention(a: np.ndarray, k: int, lower_is_better: bool = False) -> float | None:
    """Retention@k: score on domain j k stages after learning it, relative to just after.

    For higher-is-better scores a[j+k][j] / a[j][j]; for losses (pass the raw, positive losses and
    ``lower_is_better=True``) L[j][j] / L[j+k][j], so that 1 means fully kept and < 1 means lost.
    Domains whose ratio has a zero denominator are left out (``None`` if none remain).
    """
    t = check_shape(a)
    if k < 1:
        raise ValueError(f"retention needs k >= 1, got {k}")
    ratios = []
    for j in range(t):
        if j + 1 + k > t:
            continue
        just, later = a[j + 1, j], a[j + 1 + k, j]
        denominator = later if lower_is_better else just
        if denominator == 0:  # a ratio to zero (accuracy 0 just after learning) is undefined
            continue
        ratios.append((just if lower_is_better else later) / denominator)
    return _mean([float(x) for x in ratios])


def plasticity(a: np.ndarray) -> float:
    """Mean gain on each domain from the stage that trains on it."""
    t = check_shape(a)
    return float(np.mean([a[j + 1, j] - a[j, j] for j in range(t)]))


def convergence_steps(
    steps: Sequence[int], losses: Sequence[float], fraction: float = 0.05
) -> float | None:
    """Optimizer steps until the in-stage loss first comes within ``fraction`` of the stage's total
    drop from its end value, interpolated linearly between the evaluations on either side of that
    crossing. ``steps[0]``/``losses[0]`` is the start of the stage (step 0), the last point its end.
    ``None`` when the curve has fewer than two points; 0 when nothing dropped.
    """
    if len(steps) != len(losses):
        raise ValueError("steps and losses must have the same length")
    if len(steps) < 2:
        return None
    start, end = float(losses[0]), float(losses[-1])
    drop = start - end
    if drop <= 0:
        return 0.0
    level = end + fraction * drop
    for i, (s, v) in enumerate(zip(steps, losses, strict=True)):
        if float(v) <= level:
            if i == 0:
                return float(s)
            s0, v0 = float(steps[i - 1]), float(losses[i - 1])
            return s0 + (float(s) - s0) * (v0 - level) / (v0 - float(v))
    return float(steps[-1])


def probe_forgetting(a: np.ndarray) -> list[float]:
    """Per probe (column), the score before the stream minus the score after it: row 0 - row T
    of a higher-is-better probe matrix, > 0 when the stream cost what the probe measures."""
    if a.ndim != 2 or a.shape[0] < 2:
        raise ValueError(f"a probe matrix must have shape (T+1, P) with T >= 1; got {a.shape}")
    return [float(v) for v in a[0, :] - a[-1, :]]
