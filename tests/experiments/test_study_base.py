"""A study with ``[base_model]``: the base is trained once, before the runs, through the study's
executor; every run starts from it; a later study that declares the same base reuses it; the plan
costs it once; a damaged cached base stops the study before any run starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cluster_studies import write_study

from forgetlab.experiments import ExperimentStore, build_plan, load_spec, run_experiment
from forgetlab.train.base_model import BASES, BaseModelError
from forgetlab.train.rundir import MODEL_FILE, RunDir

BASE_MODEL = {"domains": ["dialogue"], "steps": 4, "batch_size": 4, "warmup_steps": 1, "seed": 201}


def study(micro_base, name: str) -> dict:
    return {
        "name": name,
        "base": micro_base(domains=2, steps=2),
        "base_model": dict(BASE_MODEL),
        "factors": {"LR": {"lo": {}, "hi": {"train": {"lr": 3e-3}}}},
        "seeds": [0],
    }


@pytest.fixture(scope="module")
def first_study(micro_base, tmp_path_factory):
    raw = study(micro_base, "based")
    out = tmp_path_factory.mktemp("study") / "exp"
    summary = run_experiment(raw, out, workers=2, quiet=True, argv=["forgetlab", "run"])
    return raw, out, summary


def bases_of(out) -> list[dict]:
    return ExperimentStore(out).read()["base_models"]


def test_the_base_is_trained_once_and_every_run_starts_from_it(first_study, fixture_data):
    _, out, summary = first_study
    assert summary["finished"] == summary["distinct"] == 2
    [base] = bases_of(out)
    assert base["domains"] == ["dialogue"] and base["steps"] == 4
    assert (Path(fixture_data.cache_dir) / BASES / base["key"] / "run").is_dir()
    records = [RunDir(p).read() for p in sorted((out / "runs").iterdir())]
    assert all(r["base_model"] == base for r in records)
    assert records[0]["R"]["loss"][0] == records[1]["R"]["loss"][0]  # the same start
    # the base ran as a task of the study's executor: its log sits beside the runs' logs
    assert (out / "logs" / f"base-{base['key']}.log").is_file()


def test_a_later_study_reuses_the_base(first_study, micro_base, tmp_path):
    _, out, _ = first_study
    [base] = bases_of(out)
    finished = (RunDir(base["path"]).run_json).stat().st_mtime_ns
    raw = study(micro_base, "again")
    raw["factors"] = {"LR": {"mid": {"train": {"lr": 2e-3}}}}
    run_experiment(raw, tmp_path / "again", quiet=True, argv=["forgetlab", "run"])
    assert bases_of(tmp_path / "again") == [base]
    assert not (tmp_path / "again" / "logs" / f"base-{base['key']}.log").exists()  # not run
    assert RunDir(base["path"]).run_json.stat().st_mtime_ns == finished


def test_the_plan_costs_the_base_once(first_study, micro_base):
    raw = study(micro_base, "planned")
    raw["seeds"] = [0, 1]
    spec, scale = load_spec(raw)
    plan = build_plan(spec, scale, bench=False)
    [base] = plan["base_models"]
    assert base["runs"] == 4 and base["cached"] is True  # trained by the first study
    assert base["train_tokens"] == 4 * 4 * 64  # steps x batch x block (micro)
    assert base["flops_training"] > 0 and base["gpus"][0]["seconds"] > 0
    fresh = study(micro_base, "fresh")
    fresh["base_model"]["seed"] = 202
    plan = build_plan(*load_spec(fresh), bench=False)
    assert [b["cached"] for b in plan["base_models"]] == [False]


def test_a_damaged_cached_base_stops_the_study_before_any_run(first_study, micro_base, tmp_path):
    _, out, _ = first_study
    [base] = bases_of(out)
    weights = RunDir(base["path"]).latest / MODEL_FILE
    intact = weights.read_bytes()
    damaged = bytearray(intact)
    damaged[-1] ^= 0x01
    raw = study(micro_base, "damaged")
    try:
        weights.write_bytes(bytes(damaged))
        with pytest.raises(BaseModelError, match="does not match the sha256"):
            run_experiment(raw, tmp_path / "damaged", quiet=True, argv=["forgetlab", "run"])
    finally:
        weights.write_bytes(intact)  # the other tests of this module share the base
    assert not (tmp_path / "damaged" / "runs").exists()


def test_the_report_show_and_plan_name_the_base(first_study, micro_base, tmp_path):
    from typer.testing import CliRunner

    from forgetlab.analysis.report import write_report
    from forgetlab.cli.main import app

    _, out, _ = first_study
    [base] = bases_of(out)
    md = write_report(out)["markdown"].read_text()
    section = md[md.index("### Base model") :]
    assert f"`{base['key']}`" in section and "| dialogue | 4 |" in section
    run = sorted((out / "runs").iterdir())[0]
    shown = CliRunner().invoke(app, ["show", str(run)])
    assert shown.exit_code == 0, shown.output
    assert f"started from base model {base['key']}: pretrained on dialogue for 4 steps" in (
        " ".join(shown.output.split())
    )
    spec = write_study(tmp_path / "study.toml", study(micro_base, "planned"))
    planned = CliRunner().invoke(app, ["plan", str(spec)])
    assert planned.exit_code == 0, planned.output
    table = planned.output[planned.output.index("base models (trained once") :]
    assert "dialogue" in table and "yes (0 s)" in table  # cached by the first study


@pytest.mark.slow
def test_a_base_is_trained_as_a_slurm_task_before_the_runs_that_start_from_it(
    micro_base, tmp_path
):
    """The base goes through the study's executor like a run: here a submitit array task (the
    local stand-in for Slurm), and every run starts from it."""
    pytest.importorskip("submitit", reason="submitit is an optional extra: forgetlab[slurm]")

    raw = study(micro_base, "slurm-based")
    raw["base_model"]["seed"] = 203  # a base no other test trains: this study must train it
    raw["slurm"] = {"cluster": "local", "time": 10, "poll_s": 0.5}
    raw["factors"] = {"LR": {"lo": {}}}  # one run is enough: the base is what is tested
    out = tmp_path / "slurm"
    summary = run_experiment(raw, out, executor="slurm", quiet=True)
    assert summary["finished"] == 1 and summary["failed"] == [], summary
    [base] = bases_of(out)
    assert RunDir(base["path"]).status() == "finished"
    jobs = json.loads((out / "logs" / "slurm" / "jobs.json").read_text())["jobs"]
    assert f"base-{base['key']}" in jobs  # submitted as an array task of its own
    [run] = (out / "runs").iterdir()
    assert RunDir(run).read()["base_model"] == base  # key, path and the weights' sha256
