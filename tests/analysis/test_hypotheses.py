"""The restricted criterion evaluator: right verdicts, and refusal of anything but arithmetic."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import pytest

from forgetlab.analysis.hypotheses import HypothesisError, evaluate, group_namespace, judge

NS = {"ppl": {"A": 20.0, "B": 10.0, "C": 10.3}, "frozen": {"B": 0.0, "C": 3.5e6}}


def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "group": ["A", "A", "B", "B", "oelm-freeze", "oelm-freeze"],
            "order": ["x"] * 6,
            "loss.final_mean": [3.0, 3.2, 2.3, 2.35, 2.32, 2.36],
            "tokens_per_s": [100.0, 110.0, 90.0, 95.0, 120.0, 118.0],
            "params.total": [44.9e6] * 2 + [41.8e6] * 4,
            "params.trainable": [44.9e6] * 2 + [41.8e6] * 2 + [38e6] * 2,
        }
    ).assign(**{"params.frozen": lambda d: d["params.total"] - d["params.trainable"]})


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("abs(ppl.C - ppl.B) / ppl.B < 0.05", True),
        ("ppl.C <= ppl.A * 1.1", True),
        ("frozen.C > 3e6 and not frozen.B > 0", True),
        ("max(ppl.A, ppl.B) == 20 or min(ppl.B, ppl.C) > 11", True),
        ("1 < ppl.B < 5", False),
        ("-ppl.B ** 2 < -99", True),
    ],
)
def test_criteria_evaluate_to_the_right_verdict(expr, expected):
    assert evaluate(expr, NS) is expected


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os').system('true')",
        "open('/etc/passwd')",
        "ppl.__class__",
        "ppl['A']",
        "(lambda: 1)()",
        "[x for x in ()]",
        "abs(*[1])",
        "max(ppl.A, key=abs)",
        "ppl.A if True else 0",
        "2 ** 1000",
        "ppl.Z > 1",
        "nothing.A > 1",
    ],
)
def test_evaluator_refuses_anything_else(expr):
    with pytest.raises(HypothesisError):
        evaluate(expr, NS)


def test_namespace_means_aliases_and_sanitised_group_names():
    ns = group_namespace(frame(), ["loss.final_mean", "tokens_per_s"])
    assert ns["ppl"]["A"] == pytest.approx((math.exp(3.0) + math.exp(3.2)) / 2)
    assert ns["loss_final_mean"]["B"] == pytest.approx(2.325)
    assert ns["frozen"]["oelm_freeze"] == pytest.approx(3.8e6)
    assert ns["speed"]["oelm_freeze"] == pytest.approx(119.0)


def test_oelm_hypotheses_get_verdicts_with_evidence():
    hyps = [
        {"id": "H1", "statement": "C freezes > 3M", "criterion": "frozen.oelm_freeze > 3e6"},
        {
            "id": "H2",
            "statement": "PPL kept",
            "criterion": "abs(ppl.oelm_freeze - ppl.B) / ppl.B < 0.05",
        },
        {"id": "H3", "statement": "faster", "criterion": "speed.oelm_freeze > speed.B"},
        {"id": "H4", "statement": "competitive", "criterion": "ppl.oelm_freeze <= ppl.A * 0.4"},
        {"id": "H5", "statement": "bad", "criterion": "__import__('os')"},
        {"id": "H6", "statement": "no data", "criterion": "bpb.A < 1"},
    ]
    cols = ["loss.final_mean", "tokens_per_s"]
    v = {x.id: x for x in judge(hyps, frame(), cols)}
    assert [v[k].verdict for k in ("H1", "H2", "H3", "H4")] == ["pass", "pass", "pass", "fail"]
    assert v["H3"].evidence == {"speed.oelm_freeze": 119.0, "speed.B": 92.5}
    assert v["H3"].support == pytest.approx(1.0)
    assert v["H5"].verdict == "undetermined" and "not allowed" in v["H5"].note
    assert v["H6"].verdict == "undetermined" and "missing value" in v["H6"].note


def test_a_verdict_without_a_test_says_why_beside_it():
    """One run per group, or a criterion with no p / interval term: judged on means alone."""
    one_run = frame().drop_duplicates("group")
    term = SimpleNamespace(term="T", estimate=-0.5, ci=(-0.8, -0.2), p_corrected=0.01)
    hyps = [
        {"id": "means", "statement": "B better", "criterion": "ppl.B < ppl.A"},
        {"id": "tested", "statement": "T helps", "criterion": "effect.T < 0 and p.T < 0.05"},
        {"id": "interval", "statement": "T helps", "criterion": "effect_hi.T < 0"},
    ]
    cols = ["loss.final_mean"]
    single = {x.id: x for x in judge(hyps, one_run, cols, [term])}
    assert single["means"].verdict == "pass" and single["means"].untested == "1 run per group"
    assert single["means"].label == "pass, untested: 1 run per group"
    replicated = {x.id: x for x in judge(hyps, frame(), cols, [term])}
    assert replicated["means"].untested == "criterion has no test"
    assert replicated["means"].label == "pass, untested: criterion has no test"
    for key in ("tested", "interval"):
        assert replicated[key].verdict == "pass" and replicated[key].untested is None
        assert replicated[key].label == "pass"
    undetermined = judge([{"id": "H", "criterion": "bpb.A < 1"}], one_run, cols)[0]
    assert undetermined.verdict == "undetermined" and undetermined.untested is None


def test_probe_forgetting_alias_and_per_probe_columns_evaluate():
    probed = frame().assign(
        **{
            "loss.probe_forgetting": [0.9, 1.1, 0.3, 0.5, 0.2, 0.2],
            "loss.probe_forgetting@books": [1.0, 1.2, 0.4, 0.6, 0.1, 0.3],
        }
    )
    hyps = [
        {"id": "P1", "statement": "B keeps general ability better than A",
         "criterion": "probe_forgetting.B < probe_forgetting.A / 2"},
        {"id": "P2", "statement": "books barely moves under oelm",
         "criterion": "loss_probe_forgetting_books.oelm_freeze < 0.1"},
    ]
    cols = ["loss.probe_forgetting", "loss.probe_forgetting@books"]
    v = {x.id: x for x in judge(hyps, probed, cols)}
    assert v["P1"].verdict == "pass"
    assert v["P1"].evidence == pytest.approx({"probe_forgetting.B": 0.4, "probe_forgetting.A": 1.0})
    assert v["P2"].verdict == "fail"
    assert v["P2"].evidence == pytest.approx({"loss_probe_forgetting_books.oelm_freeze": 0.2})
