"""The command line's error boundary: every bad input a new user tries is one line naming the key
or path and the value, exit code 2, and nothing left behind; a bug keeps its traceback."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import typer.main
from test_run_command import write_spec
from typer.testing import CliRunner

from forgetlab.cli.main import app


def study_spec(path: Path, fixture_data, level_b: str = '{ "train.lr" = 2e-3 }') -> Path:
    path.write_text(
        "\n".join(
            [
                'name = "toy"',
                "seeds = [0]",
                "[base.model]",
                'preset = "micro"',
                "[base.data]",
                f"domains = {json.dumps(fixture_data.domains[:2])}",
                f'tokenizer = "{fixture_data.tokenizer}"',
                f'cache_dir = "{fixture_data.cache_dir}"',
                "[base.train]",
                "steps_per_stage = 2",
                "warmup_steps = 1",
                "[factors.F]",
                "A = {}",
                f"B = {level_b}",
            ]
        )
        + "\n"
    )
    return path


def _empty(tmp: Path, data) -> list[str]:
    (tmp / "s.toml").write_text("")
    return ["run", str(tmp / "s.toml"), "--out", str(tmp / "o")]


def _out_is_a_file(tmp: Path, data) -> list[str]:
    (tmp / "o").write_text("notes")
    return ["run", str(write_spec(tmp / "s.toml", data)), "--out", str(tmp / "o")]


def _study_out_is_a_file(tmp: Path, data) -> list[str]:
    (tmp / "o").write_text("notes")
    return ["run", str(study_spec(tmp / "s.toml", data)), "--out", str(tmp / "o")]


def _spec_is_a_directory(tmp: Path, data) -> list[str]:
    (tmp / "specs").mkdir()
    return ["run", str(tmp / "specs"), "--out", str(tmp / "o")]


def _binary_spec(tmp: Path, data) -> list[str]:
    (tmp / "s.toml").write_bytes(b'name = "\xff"\n')
    return ["run", str(tmp / "s.toml"), "--out", str(tmp / "o")]


def _lifelong_moe_on_dense(tmp: Path, data) -> list[str]:
    spec = write_spec(tmp / "s.toml", data)
    return ["run", str(spec), "--out", str(tmp / "o"), "--mechanism", "lifelong_moe"]


def _long_warmup(tmp: Path, data) -> list[str]:
    spec = write_spec(tmp / "s.toml", data)
    return ["run", str(spec), "--out", str(tmp / "o"), "--set", "train.warmup_steps=50"]


def _unknown_key(tmp: Path, data) -> list[str]:
    spec = write_spec(tmp / "s.toml", data, stepz=5)
    return ["run", str(spec), "--out", str(tmp / "o")]


def _wrong_type(tmp: Path, data) -> list[str]:
    spec = write_spec(tmp / "s.toml", data)
    return ["run", str(spec), "--out", str(tmp / "o"), "--set", "train.lr=fast"]


def _set_without_value(tmp: Path, data) -> list[str]:
    spec = write_spec(tmp / "s.toml", data)
    return ["run", str(spec), "--out", str(tmp / "o"), "--set", "train.lr"]


def _negative_steps(tmp: Path, data) -> list[str]:
    spec = write_spec(tmp / "s.toml", data)
    return ["run", str(spec), "--out", str(tmp / "o"), "--set", "train.steps_per_stage=-5"]


def _unknown_domain(tmp: Path, data) -> list[str]:
    spec = write_spec(tmp / "s.toml", data)
    return ["run", str(spec), "--out", str(tmp / "o"), "--set", "data.domains=['cooking']"]


def _invalid_study(tmp: Path, data) -> list[str]:
    spec = study_spec(tmp / "s.toml", data, level_b='{ "model.n_head" = 3 }')
    return ["run", str(spec), "--out", str(tmp / "o")]


def _unknown_study_key(tmp: Path, data) -> list[str]:
    spec = study_spec(tmp / "s.toml", data, level_b='{ "train.lr" = 2e-3 }\n[design]\ncolour = 1')
    return ["plan", str(spec)]


def _plan_a_run_spec(tmp: Path, data) -> list[str]:
    return ["plan", str(write_spec(tmp / "s.toml", data))]


def _unknown_scale(tmp: Path, data) -> list[str]:
    return ["run", str(study_spec(tmp / "s.toml", data)), "--out", str(tmp / "o"), "--scale", "huge"]


def _bad_executor(tmp: Path, data) -> list[str]:
    spec = study_spec(tmp / "s.toml", data)
    return ["run", str(spec), "--out", str(tmp / "o"), "--executor", "spark"]


def _zero_workers(tmp: Path, data) -> list[str]:
    spec = study_spec(tmp / "s.toml", data)
    return ["run", str(spec), "--out", str(tmp / "o"), "--workers", "0"]


def _report_not_a_study(tmp: Path, data) -> list[str]:
    (tmp / "o").mkdir()
    return ["report", str(tmp / "o")]


def _show_missing(tmp: Path, data) -> list[str]:
    return ["show", str(tmp / "o")]


def _inspect_missing_checkpoint(tmp: Path, data) -> list[str]:
    return ["inspect", str(tmp / "o")]


def _diagnose_missing_checkpoint(tmp: Path, data) -> list[str]:
    return ["diagnose", str(tmp / "o")]


def _convert_bad_format(tmp: Path, data) -> list[str]:
    return ["convert", "micro", str(tmp / "o"), "--to", "onnx"]


def _sample_unprepared_domain(tmp: Path, data) -> list[str]:
    return ["data", "sample", "cooking", "--tokenizer", data.tokenizer, "--cache-dir", data.cache_dir]


def _prepare_bad_files_option(tmp: Path, data) -> list[str]:
    return ["data", "prepare", "--files", "notes", "--cache-dir", str(tmp / "o")]


def _prepare_bad_val_fraction(tmp: Path, data) -> list[str]:
    return ["data", "prepare", "--files", "notes=n/*.txt", "--val-fraction", "2",
            "--cache-dir", str(tmp / "o")]


def _init_over_an_existing_file(tmp: Path, data) -> list[str]:
    (tmp / "mine.toml").write_text("# my notes\n")
    return ["init", str(tmp / "mine"), "--from", "quickstart"]


def _init_from_an_unknown_spec(tmp: Path, data) -> list[str]:
    return ["init", str(tmp / "mine"), "--from", "nosuchspec"]


def _bench_bad_override(tmp: Path, data) -> list[str]:
    return ["bench", "train", "--preset", "micro", "--set", "model.n_head=3"]


# (command, how to make its arguments, what the one line must say)
CASES: list[tuple[str, Callable[[Path, object], list[str]], str]] = [
    ("run", _empty, r"spec file '.*s\.toml' is empty"),
    ("run", _out_is_a_file, r"--out '.*o' is a file, not a directory"),
    ("run", _study_out_is_a_file, r"--out '.*o' is a file, not a directory"),
    ("run", _spec_is_a_directory, r"spec (file )?'.*specs' is a directory, not a TOML file"),
    ("run", _binary_spec, r"spec file '.*s\.toml' is not UTF-8 text \(byte 8\)"),
    ("run", _lifelong_moe_on_dense, r"'lifelong_moe' needs an MoE model: model\.ffn = 'mlp'; "
                                    r"allowed: 'moe'"),
    ("run", _long_warmup, r"train\.warmup_steps = 50 is larger than train\.steps_per_stage = 4"),
    ("run", _unknown_key, r"unknown key 'train\.stepz' \(value 5\); allowed in \[train\]: "
                          r"\[.*'steps_per_stage'"),
    ("run", _wrong_type, r"train\.lr = 'fast': Input should be a valid number"),
    ("run", _set_without_value, r"override 'train\.lr' is not of the form key\.path=value"),
    ("run", _negative_steps, r"train\.steps_per_stage = -5: Input should be greater than or "
                             r"equal to 1"),
    ("run", _unknown_domain, r"unknown domain 'cooking'; built-in domains are code"),
    ("run", _invalid_study, r"group 'B' \(levels \{'F': 'B'\}\): invalid config: model\.n_embd"),
    ("plan", _unknown_study_key, r"unknown key 'design\.colour' \(value 1\); allowed in "
                                 r"\[design\]: \['factor', 'kind', 'reference'\]"),
    ("plan", _plan_a_run_spec, r"spec file '.*s\.toml' is a single-run spec: `forgetlab plan` "
                               r"takes a study spec"),
    ("run", _unknown_scale, r"--scale = 'huge' is not a scale of this spec; it defines no "
                            r"\[scales\.NAME\] block"),
    ("run", _bad_executor,
     r"--executor = 'spark' is not an executor; allowed: \['local', 'ray', 'slurm'\]"),
    ("run", _zero_workers, r"--workers = 0: allowed: an integer >= 1"),
    ("report", _report_not_a_study, r"not a forgetlab experiment directory"),
    ("show", _show_missing, r"'.*o' holds no run\.json"),
    ("inspect", _inspect_missing_checkpoint, r"'.*o' is neither a preset \(allowed: "),
    ("diagnose", _diagnose_missing_checkpoint, r"'.*o' is neither a preset \(allowed: "),
    ("convert", _convert_bad_format, r"--to = 'onnx'; allowed: \['forgetlab', 'hf'\]"),
    ("data sample", _sample_unprepared_domain, r"cooking"),
    ("data prepare", _prepare_bad_files_option, r"'notes' is not NAME=VALUE"),
    ("data prepare", _prepare_bad_val_fraction, r"source 'notes': val_fraction = 2\.0: Input "
                                                r"should be less than 1"),
    ("init", _init_over_an_existing_file, r"'.*mine\.toml' already exists; it is never "
                                          r"overwritten"),
    ("init", _init_from_an_unknown_spec, r"spec 'nosuchspec' is neither an existing file nor a "
                                         r"shipped spec; shipped: \['cl_mechanisms'"),
    ("bench train", _bench_bad_override, r"model\.n_embd = 64 is not divisible by model\.n_head"),
]
# commands that take no input a user can get wrong (beyond what typer itself checks)
NO_BAD_INPUT = {"bench peak", "data info"}


@pytest.mark.parametrize(("command", "make_args", "expected"), CASES,
                         ids=[f"{c}:{f.__name__[1:]}" for c, f, _ in CASES])
def test_a_bad_input_is_one_line_with_exit_code_2_and_leaves_nothing(
    fixture_data, tmp_path, command, make_args, expected
):
    args = make_args(tmp_path, fixture_data)
    made = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert re.search(expected, lines[0]), lines[0]
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == made, "the command left files behind"


def test_every_command_is_covered_by_the_bad_input_cases():
    """A new command joins CASES (or NO_BAD_INPUT), so its errors are shown to be one line."""
    def leaves(cmd, prefix: str = "") -> list[str]:
        subs = getattr(cmd, "commands", None)
        if subs is None:
            return [prefix.strip()]
        return [name for n, c in subs.items() for name in leaves(c, f"{prefix} {n}")]

    assert set(leaves(typer.main.get_command(app))) == {c for c, _, _ in CASES} | NO_BAD_INPUT


def test_an_unknown_exception_keeps_its_traceback(monkeypatch, tmp_path):
    """A bug is not a bad input: the boundary lets it through with its type and traceback."""
    import forgetlab.config

    def broken(path):
        raise RuntimeError("a bug, not a bad input")

    monkeypatch.setattr(forgetlab.config, "load_toml", broken)
    (tmp_path / "s.toml").write_text('name = "x"\n')
    result = CliRunner().invoke(app, ["run", str(tmp_path / "s.toml")])
    assert isinstance(result.exception, RuntimeError) and result.exit_code == 1
    assert "error: " not in result.stderr
