"""``model.init`` inside a study: a group that starts from a finished run's weights."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from forgetlab.config import ConfigError, resolve_run_config
from forgetlab.experiments import expand, load_spec, run_experiment
from forgetlab.train import Trainer
from micro_run import runs_in_this_process


def test_a_study_group_starts_from_a_finished_runs_weights(micro_base, tmp_path):
    base_cfg = micro_base(domains=1, steps=4)
    base_dir = tmp_path / "base"
    base = Trainer(resolve_run_config(base_cfg), base_dir, progress=False).run()

    raw = {
        "name": "from-base",
        "base": micro_base(domains=1, steps=2),
        "factors": {"INIT": {"scratch": {}, "pretrained": {"model": {"init": str(base_dir)}}}},
        "seeds": [0],
    }
    spec, _ = load_spec(raw)
    runs = {r.group: r for r in expand(spec)}
    assert runs["scratch"].config.model.init is None
    assert runs["pretrained"].config.model.init.format == "forgetlab"
    assert runs["pretrained"].run_id != runs["scratch"].run_id

    out = tmp_path / "exp"
    with runs_in_this_process():
        summary = run_experiment(raw, out, workers=1, quiet=True)
    assert summary["failed"] == []
    frame = pd.read_parquet(out / "results.parquet").set_index("group")
    record = json.loads(
        (out / "runs" / frame.loc["pretrained", "run_id"] / "run.json").read_text()
    )
    # row 0 is the base model after its stage (the same validation windows of the first domain)
    assert record["R"]["loss"][0][0] == pytest.approx(base["R"]["loss"][-1][0], rel=1e-6)
    scratch = json.loads((out / "runs" / frame.loc["scratch", "run_id"] / "run.json").read_text())
    assert scratch["R"]["loss"][0][0] > record["R"]["loss"][0][0]  # random init knows less


def test_a_group_whose_init_contradicts_its_shape_is_refused_before_any_run(micro_base, tmp_path):
    base_dir = tmp_path / "base"
    Trainer(resolve_run_config(micro_base(domains=1, steps=1)), base_dir, progress=False).run()
    raw = {
        "name": "bad-init",
        "base": micro_base(domains=2, steps=2),
        "factors": {"W": {"wide": {"model": {"n_embd": 128, "init": str(base_dir)}}}},
    }
    spec, _ = load_spec(raw)
    with pytest.raises(ConfigError, match=r"group 'wide'.*model\.n_embd = 128 contradicts"):
        expand(spec)
    with pytest.raises(ConfigError, match="n_embd = 128"):
        run_experiment(raw, tmp_path / "exp", workers=1, quiet=True)
    assert not (tmp_path / "exp" / "runs").exists()
