"""analysis.json is written from typed results and read back into the same types by one loader."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from forgetlab.analysis.conclusions import MinimalSet
from forgetlab.analysis.document import Analysis, load_analysis, to_json
from forgetlab.analysis.effects import FactorialResult
from forgetlab.config import ConfigError


def test_analysis_json_reads_back_into_the_types_it_was_written_from(synthetic_report):
    document = json.loads(synthetic_report["analysis"].read_text())
    analysis = load_analysis(synthetic_report["analysis"].parent)  # a study directory works too
    assert isinstance(analysis, Analysis)
    assert to_json(analysis) == document  # nothing lost or added by the round trip
    budget = analysis.budgets["same_shape"]
    assert budget.stat("T1W1R1", "loss.average_forgetting").n == 3  # the failed run is dropped
    assert budget.stat("T1W1R1", "no.such_metric") is None
    fit = budget.factorial["loss.average_forgetting"]
    assert isinstance(fit, FactorialResult) and fit.testable and fit.terms[0].ci is not None
    assert isinstance(fit.terms[0].factors, tuple) and fit.block is not None
    assert budget.conclusions.minimal_set.on == ["T", "R"]
    assert analysis.settings.primary == "loss.average_forgetting"
    assert [run.status for run in analysis.runs].count("failed") == 1


def test_to_json_writes_json_values_and_leaves_out_only_declared_absent_fields():
    found = MinimalSet(best={"T": "T1"}, best_mean=np.float64(0.5), reason="too few runs")
    assert to_json(found) == {"best": {"T": "T1"}, "best_mean": 0.5, "reason": "too few runs"}
    assert type(to_json(np.int64(3))) is int
    assert to_json({"a": (1.0, math.nan), 2: [math.inf]}) == {"a": [1.0, None], "2": [None]}
    fit = FactorialResult("m", [], 0, True, False, "holm", 0.05, reason="no two-level factors")
    written = to_json(fit)
    assert written["testable"] is False and written["block"] is None  # a property, a kept None


def test_a_missing_or_unreadable_analysis_json_says_to_run_the_report(tmp_path):
    with pytest.raises(ConfigError, match="does not exist: run `forgetlab report`"):
        load_analysis(tmp_path)
    (tmp_path / "analysis.json").write_text('{"experiment": ')  # cut short by a crash
    with pytest.raises(ConfigError, match="not readable JSON"):
        load_analysis(tmp_path / "analysis.json")


def test_a_tampered_analysis_json_is_refused_naming_the_key_and_value(synthetic_report, tmp_path):
    document = json.loads(synthetic_report["analysis"].read_text())
    document["budgets"]["same_shape"]["group_stats"][0]["n"] = "many"
    path = tmp_path / "analysis.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ConfigError) as caught:
        load_analysis(path)
    message = str(caught.value)
    assert "budgets.same_shape.group_stats.0.n = 'many'" in message
    assert str(path) in message and "\n" not in message


def test_the_python_api_loads_a_studys_analysis(synthetic_report):
    import forgetlab

    analysis = forgetlab.load_analysis(str(synthetic_report["analysis"].parent))
    assert isinstance(analysis, forgetlab.Analysis)
    assert analysis.budgets["same_shape"].hypotheses[0].id == "H1"
