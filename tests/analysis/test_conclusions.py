"""Computed conclusions: additivity, minimal mechanism set, cost without gain, too few runs."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from forgetlab.analysis.conclusions import conclude, minimal_set
from forgetlab.analysis.effects import factorial_effects
from forgetlab.analysis.gains import marginal_gains

FACTORS = {"T": ["T0", "T1"], "W": ["W0", "W1"], "R": ["R0", "R1"]}
METRIC = "loss.average_forgetting"  # lower is better


def frame(reps: int, tr: float, seed: int = 0) -> pd.DataFrame:
    """Forgetting 1.0, T and R each remove 0.2, W nothing but costs FLOPs; T:R adds ``tr``."""
    rng = np.random.default_rng(seed)
    rows = []
    for t, w, r in itertools.product([0, 1], repeat=3):
        for rep in range(reps):
            rows.append(
                {
                    "group": f"T{t}W{w}R{r}",
                    "factor.T": f"T{t}",
                    "factor.W": f"W{w}",
                    "factor.R": f"R{r}",
                    "order": "a>b",
                    "seed": rep,
                    METRIC: 1.0 - 0.2 * t - 0.2 * r + tr * t * r + rng.normal(0, 0.01),
                    "flops.training_total": 1e12 * (1 + 0.1 * w + 0.3 * r),
                }
            )
    return pd.DataFrame(rows)


def run(df: pd.DataFrame):
    res = factorial_effects(df, FACTORS, METRIC)
    return conclude(
        res, df, FACTORS, METRIC, 0.05, "holm", marginal_gains(df, FACTORS, METRIC), "T0W0R0"
    )


def test_together_better_than_the_sum_is_super_additive():
    c = run(frame(reps=3, tr=-0.15))  # extra forgetting drop when T and R are both on
    assert c.significant == ["T", "R"] and c.super_additive == ["T:R"] and not c.sub_additive
    assert c.costly_without_gain == ["W"]
    assert c.minimal_set.on == ["T", "R"]


def test_redundant_mechanisms_are_sub_additive_and_the_minimal_set_drops_one():
    c = run(frame(reps=3, tr=0.2))  # T and R do the same job: together no better than one
    assert c.sub_additive == ["T:R"]
    assert len(c.minimal_set.on) == 1  # T1 alone or R1 alone is not worse than the best
    assert any("sub-additive" in s for s in c.statements)


def test_too_few_runs_yields_no_significance_and_says_so():
    df = frame(reps=1, tr=-0.15)
    c = run(df)
    assert not c.significant and not c.super_additive and not c.costly_without_gain
    assert any("No significance test" in s and "too few runs" in s for s in c.statements)
    ms = minimal_set(df, FACTORS, METRIC, 0.05, "holm")
    assert ms.minimal is None and "too few runs" in ms.reason
    assert ms.best == {"T": "T1", "W": "W0", "R": "R1"} or ms.best["T"] == "T1"


def test_level_means_are_means_of_cell_means_so_unequal_runs_per_cell_do_not_bias_them():
    """T costs nothing (same FLOPs in every T cell); W doubles the FLOPs. With 3 runs in the
    expensive W1 cell of T1 and 1 elsewhere, a plain mean would charge T1 extra FLOPs."""
    import pandas as pd

    from forgetlab.analysis.gains import level_mean

    rows = [("T0", "W0", 1.0), ("T0", "W1", 2.0), ("T1", "W0", 1.0)] + [("T1", "W1", 2.0)] * 3
    df = pd.DataFrame(
        [{"factor.T": t, "factor.W": w, "flops.training_total": f, "m": f} for t, w, f in rows]
    )
    assert level_mean(df, "T", "T0", "flops.training_total") == 1.5
    assert level_mean(df, "T", "T1", "flops.training_total") == 1.5  # plain mean: 1.75
    assert level_mean(df, "W", "W1", "flops.training_total") == 2.0
    curves = marginal_gains(df, {"T": ["T0", "T1"], "W": ["W0", "W1"]}, "m")
    assert curves["T"][1].extra_flops == 0.0 and curves["W"][1].extra_flops == 1.0
