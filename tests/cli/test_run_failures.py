"""`forgetlab run` on a diverging config and on a run directory with a truncated run.json (the
command as a real process: its exit code and what it prints on stderr)."""

import json

from test_run_command import cli, forgetlab, write_spec


def test_a_diverging_run_exits_non_zero_with_one_line(fixture_data, tmp_path):
    spec = write_spec(tmp_path / "s.toml", fixture_data)
    out = tmp_path / "run"
    done = forgetlab("run", str(spec), "--out", str(out), "--set", "train.lr=1e3",
                     "--set", "train.warmup_steps=0", "--quiet")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training diverged: the gradient norm is nan at step 2 ")
    assert "last finite checkpoint: none" in last
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "failed" and record["failure"]["step"] == 2


def test_a_truncated_run_json_is_rebuilt_from_the_checkpoints(fixture_data, tmp_path):
    spec = write_spec(tmp_path / "s.toml", fixture_data)
    out = tmp_path / "run"
    assert cli("run", str(spec), "--out", str(out), "--quiet").exit_code == 0  # the run to break
    before = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text((out / "run.json").read_text()[:50])
    done = forgetlab("run", str(spec), "--out", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    assert "is unreadable; resuming from the checkpoints" in done.stderr
    after = json.loads((out / "run.json").read_text())
    assert after["status"] == "finished" and after["R"] == before["R"]


def test_a_truncated_run_json_without_checkpoints_starts_the_run_again(fixture_data, tmp_path):
    spec = write_spec(tmp_path / "s.toml", fixture_data)
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text('{"status": "runn')  # killed mid-write by a broken disk
    (out / "curves.parquet").write_text("rows of the attempt")
    done = forgetlab("run", str(spec), "--out", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    assert "run.json is unreadable and the run has no checkpoint; starting it again" in done.stderr
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
