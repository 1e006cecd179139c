"""`forgetlab run --set model.init=RUN`: a run started from another run's weights, and a spec that
contradicts the checkpoint stopped with one line before any run directory exists."""

import json
from pathlib import Path

from test_run_command import cli, forgetlab

from micro_run import micro_sections, write_toml


def test_run_from_another_runs_weights_and_a_contradiction_refused(fixture_data, tmp_path):
    sections = micro_sections(fixture_data, 1, 3, val_batches=2, sources=True)
    spec = write_toml(tmp_path / "spec.toml", sections)
    base = tmp_path / "base"
    assert cli("run", str(spec), "--out", str(base), "--quiet").exit_code == 0
    child = tmp_path / "child"
    res = cli("run", str(spec), "--out", str(child), "--quiet", "--set", f"model.init={base}")
    assert res.exit_code == 0, res.output
    parent, record = (json.loads((d / "run.json").read_text()) for d in (base, child))
    assert record["R"]["loss"][0] == parent["R"]["loss"][-1]  # row 0: the base, as it ended
    assert record["config"]["model"]["init"]["path"] == str(base)

    wide = tmp_path / "wide"
    res = forgetlab(
        "run", str(spec), "--out", str(wide), "--quiet",
        "--set", f"model.init={base}", "--set", "model.n_embd=128",
    )  # fmt: skip
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"error: model.n_embd = 128 contradicts model.init = {str(base)!r}, whose checkpoint has "
        "n_embd = 64; the checkpoint sets the model's shape: drop the key"
    ]
    assert not Path(wide).exists()
