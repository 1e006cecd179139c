"""The pre-registered test decides every p: each pairwise and omnibus test against values computed
independently (enumeration of every split, textbook formulas), and a groups study analysed under
each test, whose runs are chosen so that Welch's p and the declared test's p differ clearly."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from synthetic_experiment import write_experiment

from forgetlab.analysis.analyse import analyse
from forgetlab.analysis.document import load_analysis, to_json
from forgetlab.analysis.load import load_experiment, preregistration_hash
from forgetlab.analysis.procedure import procedure
from forgetlab.analysis.report import write_report
from forgetlab.analysis.stats import N_PERMUTATIONS, compare, omnibus
from forgetlab.config import ConfigError

PRIMARY = "loss.final_mean"  # lower is better
# three runs per group: A the reference, B lower everywhere, C skewed by one high run
RUNS = {"A": [4.0, 5.0, 6.0], "B": [1.0, 2.0, 3.0], "C": [4.5, 5.5, 12.0]}
WELCH_B = 2 * stats.t.sf(3 / np.sqrt(2 / 3), 4)  # B vs A: t = -3 / sqrt(1/3 + 1/3), 4 df
HYPOTHESIS = "p.B < 0.05 and effect.B < 0"  # reads the declared test's adjusted p and estimate


def enumerated_p(x: list[float], y: list[float], statistic: Callable[..., float]) -> float:
    """Two-sided p of ``statistic`` over every split of the pooled values into samples of the sizes
    of ``x`` and ``y``: twice the smaller tail, at most 1."""
    pooled = np.asarray([*x, *y], dtype=float)
    observed = statistic(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
    null = []
    for picked in itertools.combinations(range(pooled.size), len(x)):
        mask = np.zeros(pooled.size, dtype=bool)
        mask[list(picked)] = True
        null.append(statistic(pooled[mask], pooled[~mask]))
    values = np.asarray(null)
    tails = np.mean(values <= observed + 1e-9), np.mean(values >= observed - 1e-9)
    return float(min(1.0, 2 * min(tails)))


def u_statistic(x: np.ndarray, y: np.ndarray) -> float:
    """Mann-Whitney U of x: pairs with x above y, ties counted one half."""
    d = np.subtract.outer(x, y)
    return float((d > 0).sum() + 0.5 * (d == 0).sum())


def mean_difference(x: np.ndarray, y: np.ndarray) -> float:
    return float(x.mean() - y.mean())


def test_mann_whitney_on_two_3_run_groups_is_exact_and_differs_from_welch():
    # U = 0: 1 of the 20 splits is as extreme on each side, p = 2/20
    shift, ci, p = compare(RUNS["B"], RUNS["A"], "mann_whitney")
    assert p == pytest.approx(0.1) and ci is None and shift == -3.0
    assert compare(RUNS["B"], RUNS["A"], "welch_t").p == pytest.approx(WELCH_B)
    assert WELCH_B < 0.025  # Welch would call B different at 0.05, the rank test cannot


@pytest.mark.parametrize(
    ("x", "y"),
    [
        ([1.0, 3.0, 5.0], [2.0, 4.0, 6.0]),
        ([0.3, 1.2, 2.2, 2.9], [1.0, 2.5, 3.3, 4.1, 5.0]),
        ([1.0, 2.0, 2.0], [2.0, 3.0, 4.0]),  # ties: the exact permutation distribution of U
        ([1.0, 1.0, 2.0, 3.0], [2.0, 3.0, 3.0, 4.0, 4.0]),
    ],
)
def test_mann_whitney_p_is_the_enumerated_exact_p_and_the_shift_is_hodges_lehmann(x, y):
    shift, ci, p = compare(x, y, "mann_whitney")
    assert p == pytest.approx(enumerated_p(x, y, u_statistic), abs=1e-12)
    assert shift == np.median([a - b for a in x for b in y]) and ci is None


def test_mann_whitney_on_large_samples_is_the_tie_corrected_normal_approximation():
    rng = np.random.default_rng(5)
    x, y = rng.normal(0, 1, 20).round(1), rng.normal(0.8, 1, 25).round(1)  # rounded: ties
    ranks = stats.rankdata(np.concatenate([x, y]))
    u = ranks[:20].sum() - 20 * 21 / 2
    n = 45
    _, counts = np.unique(ranks, return_counts=True)
    var = 20 * 25 / 12 * ((n + 1) - (counts**3 - counts).sum() / (n * (n - 1)))
    z = (abs(u - 20 * 25 / 2) - 0.5) / np.sqrt(var)
    assert compare(x, y, "mann_whitney").p == pytest.approx(2 * stats.norm.sf(z), rel=1e-9)


@pytest.mark.parametrize(
    ("x", "y"),
    [
        (RUNS["B"], RUNS["A"]),
        ([0.1, 0.5, 0.9, 1.3], [0.7, 1.6, 2.0]),
        ([2.0, 2.0, 3.5, 4.0, 4.5], [1.0, 2.0, 2.5, 3.0, 3.0, 5.0]),
    ],
)
def test_permutation_p_is_the_enumerated_exact_p_when_the_splits_are_few(x, y):
    diff, ci, p = compare(x, y, "permutation")
    assert p == pytest.approx(enumerated_p(x, y, mean_difference), abs=1e-12)
    assert diff == pytest.approx(np.mean(x) - np.mean(y)) and ci is None


def test_permutation_p_with_many_splits_is_random_but_reproducible():
    rng = np.random.default_rng(0)
    x, y = rng.normal(0, 1, 8).tolist(), rng.normal(1, 1, 8).tolist()  # C(16, 8) = 12870 splits
    first, again = compare(x, y, "permutation", seed=3), compare(x, y, "permutation", seed=3)
    assert first == again
    assert compare(x, y, "permutation", seed=4).p != first.p  # the seed drives the draws
    exact = enumerated_p(x, y, mean_difference)
    assert first.p == pytest.approx(exact, abs=0.02)  # 9999 draws: Monte Carlo sd about 0.003
    # each tail counts the observed split too: p = 2 (hits + 1) / (N_PERMUTATIONS + 1)
    hits = first.p * (N_PERMUTATIONS + 1) / 2
    assert hits == pytest.approx(round(hits), abs=1e-6)


@pytest.mark.parametrize("test", ["welch_t", "mann_whitney", "permutation"])
def test_a_sample_of_one_run_or_without_variation_has_no_p(test):
    assert compare([1.0], [2.0, 3.0], test).p is None
    assert compare([2.0, 2.0], [2.0, 2.0, 2.0], test).p is None


def test_omnibus_tests_are_the_textbook_f_and_h():
    groups = {"a": np.array([1.0, 2.0, 3.0]), "b": np.array([4.0, 5.0, 6.0]),
              "c": np.array([7.0, 8.0, 9.0])}
    f = omnibus(groups, "anova")  # SS between 3 (9 + 0 + 9) = 54 on 2 df, within 6 on 6: F = 27
    assert f.statistic == pytest.approx(27.0) and f.p == pytest.approx(stats.f.sf(27.0, 2, 6))
    h = omnibus(groups, "kruskal")  # rank sums 6, 15, 24: H = 12 / 90 * 279 - 30 = 7.2
    assert h.statistic == pytest.approx(7.2) and h.p == pytest.approx(stats.chi2.sf(7.2, 2))
    lone = omnibus({"a": groups["a"], "b": np.array([4.0])}, "anova")  # one group with two runs
    assert lone.p is None and lone.groups == ["a"]


def test_each_test_means_one_procedure_per_design():
    assert procedure(None, None) == procedure("anova", "full_factorial")
    assert procedure("anova", "one_at_a_time").factorial
    assert procedure("anova", "full_factorial").pairwise == "welch_t"
    kruskal = procedure("kruskal", "sweep")
    assert (kruskal.pairwise, kruskal.omnibus, kruskal.factorial) == (
        "mann_whitney",
        "kruskal",
        False,
    )
    assert procedure("anova", "groups").omnibus == "anova"
    assert procedure("permutation", "groups").omnibus is None


def groups_study(root: Path, test: str) -> Path:
    """The synthetic study recut as a groups design: A (reference), B and C with three runs
    each whose primary metric is RUNS, ``test`` pre-registered."""
    write_experiment(root, seeds=3, fail_one=False)
    meta = json.loads((root / "experiment.json").read_text())
    names = {"T0W0R0": "A", "T0W1R0": "B", "T1W1R0": "C"}
    runs = [
        {**r, "group": names[r["group"]], "levels": {}}
        for r in meta["runs"]
        if r["group"] in names and r["order_name"] == "fwd"
    ]
    prereg = {
        "primary_metric": PRIMARY,
        "test": test,
        "alpha": 0.05,
        "correction": "holm",
        "hypotheses": [{"id": "H1", "statement": "B is lower", "criterion": HYPOTHESIS}],
    }
    meta.update(
        design="groups",
        factors={},
        reference="A",
        runs=runs,
        preregistration=prereg,
        preregistration_sha256=preregistration_hash(prereg),
    )
    (root / "experiment.json").write_text(json.dumps(meta))
    results = pd.read_parquet(root / "results.parquet")
    group_of = {r["run_id"]: r["group"] for r in runs}
    results = results[results["run_id"].isin(group_of)].copy()
    results["group"] = results["run_id"].map(group_of)
    results = results.drop(columns=[c for c in results if c.startswith("factor.")])
    for group, values in RUNS.items():
        results.loc[results["group"] == group, PRIMARY] = values
    results.to_parquet(root / "results.parquet", index=False)
    return root


def analysed(tmp_path: Path, test: str):
    return analyse(load_experiment(groups_study(tmp_path / test, test))).budgets["same_shape"]


def test_a_mann_whitney_study_reports_mann_whitney_p_values(tmp_path):
    root = groups_study(tmp_path / "exp", "mann_whitney")
    paths = write_report(root)
    an = load_analysis(root)
    assert (an.settings.test, an.settings.pairwise_test) == ("mann_whitney", "mann_whitney")
    assert json.loads(paths["analysis"].read_text())["settings"]["test"] == "mann_whitney"
    b = an.budgets["same_shape"]
    vs_b, vs_c = b.comparison("B", PRIMARY), b.comparison("C", PRIMARY)
    assert vs_b.test == "mann_whitney" and vs_b.p == pytest.approx(0.1) and vs_b.ci is None
    assert abs(vs_b.p - WELCH_B) > 0.07  # not Welch's p
    assert vs_c.diff == 0.5  # the Hodges-Lehmann shift; the difference of means is 7/3
    assert b.conclusions.versus_reference["no_difference"] == ["B", "C"]
    md = paths["markdown"].read_text()
    head = "| group | n | mean | 95% CI | Δ (Hodges-Lehmann) vs `A` | p (Mann-Whitney) | p (holm) |"
    assert head in md
    assert "| B | 3 | 2 | [-0.4841, 4.484] | -3 (-60.0%) | 0.1 | 0.2 |" in md  # Holm: 2 x 0.1
    verdict = b.hypotheses[0]
    assert verdict.verdict == "fail" and verdict.untested is None
    assert verdict.evidence == {"p.B": pytest.approx(0.2), "effect.B": -3.0}
    assert "Welch" not in md
    assert "Test `mann_whitney` (declared) under design `groups`" in md


def test_the_same_runs_under_welch_t_find_b_better(tmp_path):
    b = analysed(tmp_path, "welch_t")
    vs_b = b.comparison("B", PRIMARY)
    assert vs_b.test == "welch_t" and vs_b.p == pytest.approx(WELCH_B)
    assert vs_b.diff == -3.0 and vs_b.ci is not None
    assert b.conclusions.versus_reference["better"] == ["B"]  # Holm: 2 x 0.021 < 0.05
    assert vs_b.p_adjusted == pytest.approx(2 * WELCH_B)
    assert b.hypotheses[0].verdict == "pass"  # the same criterion fails under Mann-Whitney
    assert b.hypotheses[0].evidence["p.B"] == vs_b.p_adjusted
    assert not b.omnibus and not b.factorial


def test_permutation_study_p_is_exact_and_the_same_twice(tmp_path):
    root = groups_study(tmp_path / "exp", "permutation")
    first, again = (to_json(analyse(load_experiment(root))) for _ in range(2))
    assert first == again
    vs_b = first["budgets"]["same_shape"]["reference_comparison"]
    p = {c["group"]: c["p"] for c in vs_b if c["metric"] == PRIMARY}
    assert p["B"] == pytest.approx(0.1)
    assert p["C"] == pytest.approx(enumerated_p(RUNS["C"], RUNS["A"], mean_difference))


def test_kruskal_gates_the_mann_whitney_comparisons(tmp_path):
    b = analysed(tmp_path, "kruskal")
    gate = b.omnibus_on(PRIMARY)
    # ranks: B 1, 2, 3; A 4, 6, 8; C 5, 7, 9: H = 12 / 90 * (36 + 324 + 441) / 3 - 30 = 5.6
    assert gate.test == "kruskal" and gate.statistic == pytest.approx(5.6)
    assert gate.p == pytest.approx(stats.chi2.sf(5.6, 2))
    assert b.comparison("B", PRIMARY).test == "mann_whitney"
    assert b.conclusions.versus_reference["no_difference"] == ["B", "C"]
    assert any("Kruskal-Wallis across the groups finds no difference" in s
               for s in b.conclusions.statements)


def test_anova_gate_overrules_a_significant_welch_pair(tmp_path):
    b = analysed(tmp_path, "anova")
    values = [np.array(v) for v in RUNS.values()]
    grand = np.concatenate(values).mean()
    between = sum(v.size * (v.mean() - grand) ** 2 for v in values) / 2
    within = sum(((v - v.mean()) ** 2).sum() for v in values) / 6
    gate = b.omnibus_on(PRIMARY)
    assert gate.statistic == pytest.approx(between / within)
    assert gate.p == pytest.approx(stats.f.sf(between / within, 2, 6)) and gate.p > 0.05
    # Welch alone calls B better (previous test); behind the omnibus gate it is not
    vs_b = b.comparison("B", PRIMARY)
    assert vs_b.p == pytest.approx(WELCH_B) and vs_b.p_adjusted == gate.p  # max(0.043, 0.1)
    assert b.conclusions.versus_reference["better"] == []
    assert b.hypotheses[0].verdict == "fail"


def test_a_study_recorded_with_a_test_its_design_cannot_use_is_refused(tmp_path):
    root = write_experiment(tmp_path / "exp")
    meta = json.loads((root / "experiment.json").read_text())
    meta["preregistration"] = {**meta["preregistration"], "test": "kruskal"}
    (root / "experiment.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError) as err:
        analyse(load_experiment(root))
    assert str(err.value) == (
        "experiment.json: preregistration.test = 'kruskal' is not allowed for design "
        "'full_factorial' (a factor design is tested by the factorial effects model); "
        "allowed: ['anova']"
    )
