"""The report renders from a synthetic experiment directory; analysis.json holds every number."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import typer
from synthetic_experiment import PREREG, write_experiment
from typer.testing import CliRunner

from forgetlab.analysis.analyse import preregistration_status
from forgetlab.analysis.doc import MAX_COLUMNS, Doc, split_columns
from forgetlab.analysis.load import Experiment, load_experiment
from forgetlab.analysis.report import prereg_block
from forgetlab.analysis.tables import Column
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
        "### Hypothesis verdicts and their evidence",
        "**Conclusions**",
        "## Generation samples",
        "### Timing, memory and parameters",
    ):
        assert heading in md, heading
    assert "forgetlab experiment run experiments/ablation.toml --scale tiny" in md
    assert "RuntimeError: out of memory" in md and "| failed |" in md
    assert "`abc123`" in md and "working tree was dirty" in md
    assert PREREG["hypotheses"][0]["criterion"] in md
    assert "](plots/effects.png)" in md


def answer(md: str) -> str:
    """The report's Answer section (Markdown)."""
    return md.split("\n## Answer\n", 1)[1].split("\n## ", 1)[0]


def test_the_answer_marks_verdicts_without_a_test_and_leaves_tested_ones_plain(synthetic_report):
    """Replicated runs: a p-term criterion is a plain verdict, a means-only one says it is
    untested; each verdict says how many runs stand behind it."""
    a = json.loads(synthetic_report["analysis"].read_text())["budgets"]["same_shape"]
    untested = {v["id"]: v["untested"] for v in a["hypotheses"]}
    assert untested == {"H1": "criterion has no test", "H2": None, "H3": "criterion has no test"}
    found = answer(synthetic_report["markdown"].read_text())
    assert (
        "| H1 | T alone lowers forgetting | pass, untested: criterion has no test | 4 per group |"
        in found
    )
    assert "| H2 | R is the strongest main effect | pass | 31 runs |" in found  # the factorial fit
    assert (
        "| H3 | W alone speeds training | fail, untested: criterion has no test | 4 per group |"
        in found
    )
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
    prereg_block(doc, status)
    assert "CHANGED after the first run started" in doc.markdown(tmp_path)
    assert 'class="warn"' in doc.html()
    same = Doc("t")
    prereg_block(
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
    prereg_block(doc, preregistration_status(meta))
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
            "test": "welch_t",
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
    found = answer(md)
    assert "| H4 | C competitive | pass, untested: 1 run per group | 1 per group |" in found
    assert "| pass |" not in found
    assert "pass, untested: 1 run per group" in (root / "report.html").read_text()
    assert '"budgets"' in result.output and "report.html" in result.output
    bad = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert bad.exit_code == 2 and "not a forgetlab experiment directory" in bad.output


SECTION_ORDER = (
    "## Answer",
    "## Plots",
    "## Goal and hypotheses",
    "## Pre-registration",
    "## Configuration",
    "## Results in detail",
    "## Execution",
    "## Environment",
    "## Definitions",
    "## Appendix: full resolved configuration",
)


@pytest.mark.parametrize("report", ["synthetic_report", "micro_study_report"])
def test_the_answer_comes_first_then_the_plots_then_the_detail(report, request):
    md = request.getfixturevalue(report)["markdown"].read_text()
    at = [md.index(f"\n{heading}\n") for heading in SECTION_ORDER]
    assert at == sorted(at), dict(zip(SECTION_ORDER, at, strict=True))
    head = md[: at[0]]
    assert "## " not in head  # only the title and the one-paragraph summary come before it
    found = answer(md)
    assert "| group | n | mean | 95% CI | Δ vs `" in found  # the primary metric with intervals
    assert "| term | effect | 95% CI | p (holm) |" in found  # the effects
    assert "**Conclusions**" in found and "](plots/" not in found


def test_no_table_is_wider_than_the_column_limit(synthetic_report, micro_study_report):
    for report in (synthetic_report, micro_study_report):
        widths = [
            line.count("|") - 1
            for line in report["markdown"].read_text().splitlines()
            if line.startswith("|---")
        ]
        assert widths and max(widths) <= MAX_COLUMNS


def test_a_wide_table_is_split_into_even_parts_repeating_its_key_columns():
    assert split_columns(8) == [list(range(8))]
    assert split_columns(9) == [[0, 1, 2, 3, 4], [0, 5, 6, 7, 8]]
    assert split_columns(10, key_columns=2) == [[0, 1, 2, 3, 4, 5], [0, 1, 6, 7, 8, 9]]
    doc = Doc("t")
    doc.table(
        [
            Column("group", lambda r: r[0]),
            *[Column(f"m{i}", lambda r, i=i: r[i]) for i in range(1, 12)],
        ],
        [["A", *range(1, 12)], ["B", *range(11, 0, -1)]],
    )
    tables = [b for kind, b in doc.blocks if kind == "table"]
    assert [t[0] for t in tables] == [
        ["group", *[f"m{i}" for i in range(1, 7)]],
        ["group", *[f"m{i}" for i in range(7, 12)]],
    ]
    assert tables[1][1] == [["A", 7, 8, 9, 10, 11], ["B", 5, 4, 3, 2, 1]]


def test_configuration_lists_settings_that_matter_and_every_group_difference(micro_study_report):
    md = micro_study_report["markdown"].read_text()
    config = md.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    shared = config.split("### Shared settings", 1)[1].split("Left out:", 1)[0]
    assert "`n_layer` = 2" in shared and "`steps_per_stage` = 4" in shared
    for unused in ("moe", "memory", "rope_theta", "cache_dir", "threads", "null"):
        assert unused not in shared, unused
    assert "settings of parts no run uses: `model.freeze_qk`, `model.qk_init`" in config
    assert "`model.moe.*`, `model.memory.*`" in config and "`data.cache_dir`" in config
    assert "Vary between the runs of a group (see the groups table): `seed`." in config
    differences = config.split("### Per-group differences", 1)[1]
    assert "| setting | W0_R0 | W0_R1 | W1_R0 | W1_R1 |" in differences
    assert (
        "| `mechanisms` | none | replay | selective_write | selective_write, replay |"
        in differences
    )
    assert "| `mechanisms.replay.capacity` | unused | 16 | unused | 16 |" in differences
    assert "replay.herding_pool" not in differences  # null wherever replay runs
    # a knob the spec left at its default is shown with the value the runs used
    assert "| `mechanisms.selective_write.window` | unused | unused | 8192 | 8192 |" in differences


def test_the_full_resolved_configuration_is_folded_at_the_end(micro_study_report):
    page = micro_study_report["html"].read_text()
    appendix = page.split("Appendix: full resolved configuration", 1)[1]
    folds = re.findall(r"<details><summary>(W\d_R\d): run \w+</summary>\s*<pre>", appendix)
    assert folds == ["W0_R0", "W0_R1", "W1_R0", "W1_R1"]
    assert "&quot;moe&quot;: {" in appendix  # the full config, unused parts included
    assert page.index("<details>") > page.index("Definitions</h2>")


def test_a_study_without_probes_has_no_probe_section(synthetic_report):
    """(tests/experiments/test_probe_study.py shows the section of a study with probes)"""
    assert "General ability" not in synthetic_report["markdown"].read_text()
