"""The statistical procedure a pre-registration's ``test`` declares, per design: decided here only.

The spec validator refuses a test its design cannot use, and the analysis runs what this module
says, so the p-values a report prints are the declared test's and are labelled by it.

Factor designs (``full_factorial``, ``one_at_a_time``) are answered by the factorial effects model
(:mod:`forgetlab.analysis.effects`: effect-coded OLS, type III ANOVA): only ``anova`` is allowed.
A factorial main effect is a contrast over every cell; a two-sample test (Welch, Mann-Whitney, a
permutation of the two samples) of "on" against "off" would pool cells that differ in the other
factors, and rank or permutation versions of the factorial model (Scheirer-Ray-Hare, Freedman-Lane)
are not implemented. Their pairwise comparisons (each group against the reference, the minimal
mechanism set against the best combination) are Welch t-tests, the pairwise test of ``anova``.

Group designs (``groups``, ``sweep``) compare groups, each against the reference group:

* ``welch_t``: Welch's t-test of each group against the reference (Welch 1947);
* ``mann_whitney``: the Mann-Whitney U test (two-sided) of each group against the reference; the
  difference it reports is the Hodges-Lehmann shift (Hodges & Lehmann 1963);
* ``permutation``: a permutation test of the difference of means of each group against the
  reference (Good 2005, *Permutation, Parametric, and Bootstrap Tests of Hypotheses*);
* ``anova``: the one-way ANOVA F test across all groups first (the omnibus), then Welch t-tests of
  each group against the reference; a pairwise difference counts only when the omnibus rejects;
* ``kruskal``: the Kruskal-Wallis H test across all groups first, then Mann-Whitney tests of each
  group against the reference, under the same gate (Kruskal & Wallis 1952).

The pairwise p-values are corrected across the groups with the pre-registered ``correction``.
"""

from __future__ import annotations

from dataclasses import dataclass

from forgetlab.config import ConfigError

TESTS = ("anova", "welch_t", "mann_whitney", "kruskal", "permutation")
PAIRWISE_TESTS = ("welch_t", "mann_whitney", "permutation")
FACTOR_DESIGNS = ("full_factorial", "one_at_a_time")
GROUP_DESIGNS = ("groups", "sweep")
DEFAULT_TEST = "anova"
DEFAULT_DESIGN = "full_factorial"

# what each design allows, and for a group design which pairwise test and omnibus a test means
ALLOWED: dict[str, tuple[str, ...]] = {
    **{design: ("anova",) for design in FACTOR_DESIGNS},
    **{design: TESTS for design in GROUP_DESIGNS},
}
PAIRWISE = {
    "anova": "welch_t",
    "welch_t": "welch_t",
    "kruskal": "mann_whitney",
    "mann_whitney": "mann_whitney",
    "permutation": "permutation",
}
OMNIBUS = {"anova": "anova", "kruskal": "kruskal"}
LABELS = {
    "anova": "one-way ANOVA",
    "welch_t": "Welch t",
    "mann_whitney": "Mann-Whitney",
    "kruskal": "Kruskal-Wallis",
    "permutation": "permutation",
}
# what the difference a pairwise test reports is (its estimate of the effect it tests)
ESTIMATES = {
    "welch_t": "difference of means",
    "mann_whitney": "Hodges-Lehmann shift",
    "permutation": "difference of means",
}


@dataclass(frozen=True)
class Procedure:
    """How one study is tested: the declared test, the pairwise test behind every group-versus-
    reference p, the omnibus test that gates them (group designs under anova / kruskal) and
    whether the factorial effects model is the design's test (factor designs)."""

    test: str
    design: str
    pairwise: str
    omnibus: str | None
    factorial: bool


def allowed_tests(design: str) -> tuple[str, ...]:
    return ALLOWED.get(design, TESTS)


def check_test(test: str, design: str) -> str:
    """``test`` when design ``design`` can use it; ValueError naming both and what is allowed."""
    allowed = allowed_tests(design)
    if test not in allowed:
        why = (
            " (a factor design is tested by the factorial effects model)"
            if design in FACTOR_DESIGNS and test in TESTS
            else ""
        )
        raise ValueError(
            f"preregistration.test = {test!r} is not allowed for design {design!r}{why}; "
            f"allowed: {list(allowed)}"
        )
    return test


def procedure(test: str | None, design: str | None) -> Procedure:
    """The procedure of a study's declared ``test`` under its ``design`` (the spec's defaults,
    ``anova`` and ``full_factorial``, where either is absent); ConfigError for a test the design
    cannot use (a study recorded before the spec refused it)."""
    test = test or DEFAULT_TEST
    design = design or DEFAULT_DESIGN
    try:
        check_test(test, design)
    except ValueError as e:
        raise ConfigError(f"experiment.json: {e}") from None
    group_design = design in GROUP_DESIGNS
    return Procedure(
        test=test,
        design=design,
        pairwise=PAIRWISE[test],
        omnibus=OMNIBUS.get(test) if group_design else None,
        factorial=not group_design,
    )


def describe(pairwise: str, omnibus: str | None, factorial: bool) -> str:
    """The procedure in one sentence, as the report states it."""
    against = f"each group against the reference by {LABELS[pairwise]} tests ({ESTIMATES[pairwise]})"
    if factorial:
        return (
            "the factorial effects model (effect-coded OLS, type III ANOVA) for the factors; "
            f"{against}, and the minimal mechanism set against the best combination likewise"
        )
    if omnibus:
        return f"{LABELS[omnibus]} across the groups first; then, only if it rejects, {against}"
    return against
