"""The public Python API: the README's notebook example runs as written, ``import forgetlab``
stays light, and wrong arguments fail with one clear line before any work."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import forgetlab
from forgetlab.config import ConfigError, RunConfig
from micro_run import micro_sections, runs_in_this_process

README = Path(__file__).resolve().parents[1] / "README.md"
DATA_LINE = 'data = {"domains": ["code", "math"], "tokenizer": "bpe-2k"}'


def readme_example() -> str:
    """The first python block of the README's "Python API" section."""
    section = README.read_text().split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the Python API section has no python example"
    return match.group(1)


def fixture_data_dict(fixture_data, domains: int = 2) -> dict:
    """The micro ``data`` section over the fixture stream, with its sources (runs prepare)."""
    return micro_sections(fixture_data, domains, sources=True)["data"]


@pytest.mark.slow
def test_the_readme_example_runs_as_written(fixture_data, tmp_path, monkeypatch):
    code = readme_example()
    assert DATA_LINE in code  # the one line this test points at the fixture corpus
    code = code.replace(DATA_LINE, f"data = {fixture_data_dict(fixture_data)!r}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    scope: dict = {"__name__": "readme_example"}
    with runs_in_this_process():  # the study's two runs: no worker process each (tested elsewhere)
        exec(compile(code, "README.md", "exec"), scope)
    record, results, again = scope["record"], scope["results"], scope["again"]
    assert isinstance(record, forgetlab.RunRecord) and record.status == "finished"
    assert record.r_matrix("loss").shape == (3, 2)
    assert (tmp_path / "results" / "api-demo" / "run" / "run.json").exists()
    assert sorted(results["group"]) == ["off", "on"]
    assert (results["status"] == "finished").all()
    assert again.status == "finished" and again.config.name == f"api-demo:{results['group'][0]}"


def test_import_forgetlab_loads_no_heavy_dependency():
    probe = "import sys, forgetlab; print([m for m in ('torch', 'pandas', 'pydantic', 'numpy') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert forgetlab.RunConfig is RunConfig  # lazily imported on first access


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: forgetlab.run(3), "spec must be a path to a TOML file, a shipped spec's name"),
        (lambda: forgetlab.run_config("quickstart", overrides=[1]), "overrides must be a list"),
        (lambda: forgetlab.run_config("quickstart", {"train.lr": None}), "overrides['train.lr'] = None"),
        (lambda: forgetlab.load_run({"status": "finished"}), "run_dir must be a path"),
        (lambda: forgetlab.load_results(["a"]), "study_dir must be a path"),
        (lambda: forgetlab.load_analysis(3), "study_dir must be a path"),
        (lambda: forgetlab.run_study("cl_mechanisms", workers=0), "workers must be an int >= 1"),
        (lambda: forgetlab.run_study(RunConfig()), "a RunConfig is one run, not a study"),
        (lambda: forgetlab.plan("cl_mechanisms", scale=1), "scale must be a str"),
    ],
)
def test_a_wrong_argument_type_is_a_clear_type_error(call, message):
    with pytest.raises(TypeError, match=re.escape(message)):
        call()


def test_a_study_given_to_run_and_a_run_given_to_a_study_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"is a study .*use forgetlab.run_study"):
        forgetlab.run("cl_mechanisms", out=tmp_path / "x")
    with pytest.raises(ConfigError, match=r"is a single run .*use forgetlab.run"):
        forgetlab.plan("quickstart")
    with pytest.raises(ConfigError, match="shipped: \\['cl_mechanisms'"):
        forgetlab.run("nosuch")
    assert not (tmp_path / "x").exists()


def test_overrides_as_a_dict_equal_the_command_line_form(tmp_path):
    as_dict = forgetlab.run_config(
        "quickstart",
        {"train.lr": 3e-4, "train.rewarm": False, "data.domains": ["code", "math"],
         "model.preset": "micro", "train.precision": "fp32",
         "mechanisms": [{"name": "replay", "capacity": 64}]},
    )  # fmt: skip
    as_list = forgetlab.run_config(
        "quickstart",
        ["train.lr=3e-4", "train.rewarm=false", 'data.domains=["code", "math"]',
         "model.preset=micro", "train.precision=fp32",
         'mechanisms=[{name = "replay", capacity = 64}]'],
    )  # fmt: skip
    assert as_dict == as_list and as_dict.train.lr == 3e-4 and as_dict.mechanisms[0].name == "replay"
    path = tmp_path / "spec.toml"
    path.write_text('name = "p"\n[model]\npreset = "micro"\n')
    from_path = forgetlab.run_config(path, {"train.lr": 0.01})
    from_dict = forgetlab.run_config({"name": "p", "model": {"preset": "micro"}}, ["train.lr=0.01"])
    assert from_path == from_dict
    assert forgetlab.run_config(from_path, {"seed": 7}).seed == 7


def test_load_run_gives_the_typed_record_or_the_dict(fixture_data, tmp_path):
    spec = {"name": "load", "model": {"preset": "micro"}, "data": fixture_data_dict(fixture_data, 1),
            "train": {"steps_per_stage": 2, "warmup_steps": 1, "batch_size": 2, "precision": "fp32",
                      "threads": 1}}  # fmt: skip
    record = forgetlab.run(spec, out=tmp_path / "run")
    raw = forgetlab.load_run(tmp_path / "run", typed=False)
    assert raw == json.loads((tmp_path / "run" / "run.json").read_text())
    typed = forgetlab.load_run(str(tmp_path / "run"))
    assert typed.R == record.R == raw["R"] and typed.config == record.config
    assert list(typed.r_matrix("accuracy").index) == ["init", "after code"]
    with pytest.raises(ConfigError, match="finished run"):  # never overwritten, API or CLI
        forgetlab.run(spec, out=tmp_path / "run")
