"""The report renders from a synthetic experiment directory; analysis.json holds every number."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import typer
from synthetic_experiment import PREREG, write_experiment
from typer.testing import CliRunner

from forgetlab.analysis.analyse import preregistration_status
from forgetlab.analysis.doc import Doc
from forgetlab.analysis.load import Experiment, load_experiment
from forgetlab.analysis.report import section_prereg
from forgetlab.cli.report_commands import register
from forgetlab.config import ConfigError
from forgetlab.experiments import ExperimentStore

TERM_KEYS = {"term", "estimate", "ci", "F", "p", "p_corrected", "partial_eta_sq"}


def test_report_files_and_plots_are_written(synthetic_report):
    for key in ("analysis", "markdown", "html"):
        assert synthetic_report[key].stat().st_size > 1000
    pngs = sorted(p.stem for p in synthetic_report["plots"].glob("*.png"))
    svgs = sorted(p.stem for p in synthetic_report["plots"].glob("*.svg"))
    assert pngs == svgs
    assert {
        "effects",
        "interactions",
        "r_matrices",
        "learning_curves",
        "domain_curves",
        "gains",
        "performance",
    } <= set(pngs)


def test_analysis_json_holds_group_stats_and_every_effect_term(synthetic_report):
    an = json.loads(synthetic_report["analysis"].read_text())
    a = an["budgets"]["same_shape"]
    fit = a["factorial"]["loss.average_forgetting"]
    assert fit["testable"] and [t["term"] for t in fit["terms"]] == [
        "T",
        "W",
        "R",
        "T:W",
        "T:R",
        "W:R",
        "T:W:R",
    ]
    assert all(set(t) >= TERM_KEYS and t["p_corrected"] is not None for t in fit["terms"])
    stat = next(
        s
        for s in a["group_stats"]
        if s["group"] == "T1W1R1" and s["metric"] == "loss.average_forgetting"
    )
    assert (
        stat["n"] == 3 and len(stat["t_ci"]) == 2 and len(stat["boot_ci"]) == 2
    )  # the failed run is dropped
    assert a["conclusions"]["minimal_set"]["on"] == ["T", "R"]
    assert a["conclusions"]["costly_without_gain"] == ["W"]
    assert a["conclusions"]["super_additive"] == ["T:R"]
    assert [v["verdict"] for v in a["hypotheses"]] == ["pass", "pass", "fail"]
    assert an["status_counts"] == {"finished": 31, "failed": 1}


def test_markdown_record_has_experiment_record_sections_and_failed_run(synthetic_report):
    md = synthetic_report["markdown"].read_text()
    for heading in (
        "## Goal and hypotheses",
        "## Pre-registration",
        "## Configuration",
        "## Environment",
        "## Command lines",
        "## Execution",
        "### Factorial effects",
        "### Hypothesis verdicts",
        "### Conclusions",
        "## Generation samples",
        "### Timing, memory and parameters",
    ):
        assert heading in md, heading
    assert "forgetlab experiment run experiments/ablation.toml --scale tiny" in md
    assert "RuntimeError: out of memory" in md and "| failed |" in md
    assert "`abc123`" in md and "working tree was dirty" in md
    assert PREREG["hypotheses"][0]["criterion"] in md
    assert "](plots/effects.png)" in md


def test_at_a_glance_marks_verdicts_without_a_test_and_leaves_tested_ones_plain(synthetic_report):
    """Replicated runs: a p-term criterion is a plain verdict, a means-only one says it is untested."""
    a = json.loads(synthetic_report["analysis"].read_text())["budgets"]["same_shape"]
    untested = {v["id"]: v["untested"] for v in a["hypotheses"]}
    assert untested == {"H1": "criterion has no test", "H2": None, "H3": "criterion has no test"}
    md = synthetic_report["markdown"].read_text()
    glance = md.split("## At a glance", 1)[1].split("\n## ", 1)[0]
    assert "H1: **pass, untested: criterion has no test**:" in glance
    assert "H2: **pass**: R is the strongest main effect" in glance
    assert "H3: **fail, untested: criterion has no test**:" in glance
    html = synthetic_report["html"].read_text()
    assert "pass, untested: criterion has no test" in html


def test_html_is_self_contained(synthetic_report):
    html = synthetic_report["html"].read_text()
    assert html.count("data:image/png;base64,") == len(
        list(synthetic_report["plots"].glob("*.png"))
    )
    assert 'src="plots/' not in html and 'src="http' not in html and "<link" not in html


def test_changed_preregistration_is_flagged(tmp_path):
    exp = load_experiment(write_experiment(tmp_path, seeds=1, prereg_changed=True, fail_one=False))
    status = preregistration_status(exp.meta)
    assert status.changed and status.sha256_now == "f" * 64
    doc = Doc("t")
    section_prereg(doc, status)
    assert "CHANGED after the first run started" in doc.markdown(tmp_path)
    assert 'class="warn"' in doc.html()
    same = Doc("t")
    section_prereg(
        same,
        preregistration_status(
            {**exp.meta, "preregistration_changed": False, "preregistration_sha256_now": None}
        ),
    )
    assert "CHANGED" not in same.markdown(tmp_path)


def _begin(store, block):
    fields = {"name": "toy", "scale": None, "runs": [], "preregistration": block}
    return store.begin(fields, ["forgetlab", "run"], {})


def _prereg_text(meta, tmp_path):
    doc = Doc("t")
    section_prereg(doc, preregistration_status(meta))
    return doc.markdown(tmp_path)


def test_a_preregistration_given_only_from_the_second_invocation_is_reported_as_added(tmp_path):
    store = ExperimentStore(tmp_path / "exp")
    _begin(store, None)
    assert preregistration_status(store.read()).status == "absent"
    _begin(store, PREREG)
    status = preregistration_status(store.read())
    assert status.status == "added" and status.changed and status.block == PREREG
    text = _prereg_text(store.read(), tmp_path)
    assert "ADDED after the first run started" in text and "unchanged" not in text
    # the analysis still tests the added block's hypotheses, reported as exploratory
    assert Experiment(store.root, store.read(), pd.DataFrame()).preregistration == PREREG


def test_a_preregistration_written_into_experiment_json_afterwards_is_reported_as_added(tmp_path):
    store = ExperimentStore(tmp_path / "exp")
    _begin(store, None)
    doc = store.read()
    doc["preregistration"] = PREREG  # a block added by hand after the first run
    store.write(doc)
    status = preregistration_status(store.read())
    assert status.status == "added" and status.changed
    text = _prereg_text(store.read(), tmp_path)
    assert "ADDED after the first run started" in text and "unchanged since" not in text


def test_a_registered_block_edited_in_experiment_json_is_reported_as_changed(tmp_path):
    store = ExperimentStore(tmp_path / "exp")
    _begin(store, PREREG)
    assert preregistration_status(store.read()).status == "unchanged"
    doc = store.read()
    doc["preregistration"] = {**PREREG, "alpha": 0.1}  # edited in place, hash left as it was
    store.write(doc)
    assert preregistration_status(store.read()).status == "changed"
    assert "CHANGED after the first run started" in _prereg_text(store.read(), tmp_path)


def test_not_an_experiment_dir_is_a_clear_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not a forgetlab experiment directory"):
        load_experiment(tmp_path)


def groups_experiment(root: Path) -> Path:
    """The OELM study's three groups, one run each, no results.parquet (read from run.json)."""
    write_experiment(root, seeds=1, fail_one=False)
    meta = json.loads((root / "experiment.json").read_text())
    keep = {"T0W0R0": "A", "T0W1R0": "B", "T1W1R0": "C"}
    meta["runs"] = [
        {**r, "group": keep[r["group"]], "levels": {}}
        for r in meta["runs"]
        if r["group"] in keep and r["order_name"] == "fwd"
    ]
    meta.update(
        design="groups",
        factors={},
        reference="A",
        preregistration={
            "primary_metric": "loss.final_mean",
            "test": "welch",
            "alpha": 0.05,
            "correction": "holm",
            "hypotheses": [
                {"id": "H4", "statement": "C competitive", "criterion": "ppl.C <= ppl.A * 1.1"}
            ],
        },
    )
    (root / "experiment.json").write_text(json.dumps(meta))
    (root / "results.parquet").unlink()
    return root


def test_cli_report_on_a_groups_design_with_one_run_per_group(tmp_path):
    root = groups_experiment(tmp_path / "exp")
    app = typer.Typer()
    register(app)
    app.callback()(lambda: None)
    result = CliRunner().invoke(app, ["report", str(root), "--json"])
    assert result.exit_code == 0, result.output
    an = json.loads((root / "analysis.json").read_text())
    a = an["budgets"]["same_shape"]
    assert [v["verdict"] for v in a["hypotheses"]] == ["pass"]
    assert a["hypotheses"][0]["untested"] == "1 run per group"
    assert a["conclusions"]["versus_reference"]["untestable"] == ["B", "C"]
    md = (root / "report.md").read_text()
    assert "too few runs" in md
    glance = md.split("## At a glance", 1)[1].split("\n## ", 1)[0]
    assert "H4: **pass, untested: 1 run per group**: C competitive" in glance
    assert "**pass**" not in glance
    assert "pass, untested: 1 run per group" in (root / "report.html").read_text()
    assert '"budgets"' in result.output and "report.html" in result.output
    bad = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert bad.exit_code == 2 and "not a forgetlab experiment directory" in bad.output


def test_a_study_without_probes_has_no_probe_section(synthetic_report):
    """(tests/experiments/test_probe_study.py shows the section of a study with probes)"""
    assert "General ability" not in synthetic_report["markdown"].read_text()
