"""``[base_model]``: a base pretrained once per declaration and data, stored content-addressed
under the data cache, reused by every run that declares it, resumable, trained by one of several
concurrent claimants, and never reused when its stored weights are damaged.

Every test declares its own base (its own ``seed``): the fixture cache, and so its ``bases/``
directory, is shared by the whole session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from forgetlab.config import ConfigError, RunConfig, resolve_run_config
from forgetlab.train import Trainer
from forgetlab.train.base_model import (
    BASE_JSON,
    BaseModelError,
    base_run_config,
    ensure_base,
    locate,
    train_base,
)
from forgetlab.train.rundir import MODEL_FILE
from micro_run import fixture_sources, micro_sections


def raw_config(fixture_data, seed: int, base: dict[str, Any] | None = None, **train) -> dict:
    """A micro stream of two domains after a base pretrained on a third."""
    return {
        "name": "base-test",
        **micro_sections(fixture_data, domains=2, steps=2, **train),
        "base_model": {
            "domains": ["dialogue"],
            "steps": 6,
            "batch_size": 4,
            "warmup_steps": 1,
            "seed": seed,
            **(base or {}),
        },
    }


def config(fixture_data, seed: int, base: dict[str, Any] | None = None, **train) -> RunConfig:
    return resolve_run_config(raw_config(fixture_data, seed, base, **train))


@pytest.fixture
def base_trainings(monkeypatch) -> list[Path]:
    """The run directories Trainer.run trained a base into, in this process."""
    seen: list[Path] = []
    original = Trainer.run

    def counting(self):
        if self.cfg.name == "base_model":
            seen.append(self.run_dir.root)
        return original(self)

    monkeypatch.setattr(Trainer, "run", counting)
    return seen


def test_a_base_is_trained_once_for_two_runs_and_anew_when_its_config_changes(
    fixture_data, tmp_path, base_trainings
):
    first = config(fixture_data, seed=101, lr=3e-3)
    second = config(fixture_data, seed=101, lr=1e-3)  # another stream, the same base
    base = ensure_base(first, progress=False)
    assert base is not None and len(base_trainings) == 1
    finished_at = (base.run_dir.run_json).stat().st_mtime_ns
    a = Trainer(first, tmp_path / "a", progress=False).run()

    assert ensure_base(second, progress=False) == base
    assert len(base_trainings) == 1  # reused: not trained again
    assert base.run_dir.run_json.stat().st_mtime_ns == finished_at
    b = Trainer(second, tmp_path / "b", progress=False).run()
    assert a["base_model"] == b["base_model"]
    assert a["base_model"]["key"] == base.key and a["base_model"]["domains"] == ["dialogue"]
    assert a["R"]["loss"][0] == b["R"]["loss"][0]  # both start from the same weights
    assert (base.root / BASE_JSON).is_file()

    changed = config(fixture_data, seed=101, base={"steps": 4}, lr=3e-3)
    other = ensure_base(changed, progress=False)
    assert other is not None and other.key != base.key
    assert base_trainings == [base.run_dir.root, other.run_dir.root]


def test_the_key_ignores_what_does_not_decide_the_weights(fixture_data):
    key = locate(config(fixture_data, seed=102)).key
    sourced = raw_config(fixture_data, 102)  # how its data were made: the shards' sha256 count
    sourced["data"]["sources"] = {"dialogue": {"files": ["/elsewhere/*.jsonl"]}}
    same = [
        config(fixture_data, seed=102, lr=1e-2, threads=2),  # the stream's training
        resolve_run_config({**raw_config(fixture_data, 102), "seed": 7, "device": "cpu"}),
        resolve_run_config(sourced),
    ]
    assert all(locate(c).key == key for c in same)
    differ = [
        config(fixture_data, seed=103),
        config(fixture_data, seed=102, base={"lr": 2e-3}),
        config(fixture_data, seed=102, base={"domains": ["legal"]}),
        resolve_run_config(
            {**raw_config(fixture_data, 102), "model": {"preset": "micro", "n_layer": 1}}
        ),
    ]
    assert len({locate(c).key for c in differ} | {key}) == len(differ) + 1


def test_the_run_starts_from_the_base_weights(fixture_data, tmp_path):
    """R row 0 scores the base (not a random model): equal to a run whose model.init names the
    base's run directory, and the run's id holds the base's declaration, not its path."""
    cfg = config(fixture_data, seed=104)
    base = ensure_base(cfg, progress=False)
    assert base is not None
    with_base = Trainer(cfg, tmp_path / "base", progress=False).run()
    raw = raw_config(fixture_data, 104)
    del raw["base_model"]
    raw["model"]["init"] = str(base.run_dir.root)
    with_init = Trainer(resolve_run_config(raw), tmp_path / "init", progress=False).run()
    assert with_base["R"]["loss"][0] == with_init["R"]["loss"][0]
    assert with_base["base_model"]["sha256"] == with_init["config"]["model"]["init"]["sha256"]
    assert str(base.root) not in json.dumps(with_base["config"])


def test_a_killed_base_resumes_and_ends_as_an_uninterrupted_one(
    fixture_data, tmp_path, killed_run
):
    cfg = config(fixture_data, seed=105)
    base = locate(cfg)
    killed_run(base.config, base.run_dir.root, at=4)  # a checkpoint every step: 3 are kept
    assert base.status() != "finished" and base.run_dir.has_checkpoint()
    assert train_base(base, progress=False)
    assert base.status() == "finished"
    clean = tmp_path / "clean"
    Trainer(base_run_config(cfg), clean, progress=False).run()
    resumed = (base.final_checkpoint() / MODEL_FILE).read_bytes()
    assert resumed == (clean / "checkpoints" / "latest" / MODEL_FILE).read_bytes()


CLAIMANT = """
import json, logging, os, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
from forgetlab.config import RunConfig
from forgetlab.train import base_model
from forgetlab.train.step import StepRunner
cfg = RunConfig.model_validate_json(open(sys.argv[1]).read())
if len(sys.argv) > 2:  # hold every step until the gate file exists
    step = StepRunner.train_step
    def gated(self, stage):
        while not os.path.exists(sys.argv[2]):
            time.sleep(0.05)
        return step(self, stage)
    StepRunner.train_step = gated
trained = base_model.train_base(base_model.locate(cfg), progress=False)
print(json.dumps({"trained": trained}), flush=True)
"""


def test_two_concurrent_claimants_train_the_base_once(fixture_data, tmp_path):
    cfg = config(fixture_data, seed=106)
    base = locate(cfg)
    spec = tmp_path / "cfg.json"
    spec.write_text(cfg.model_dump_json())
    gate = tmp_path / "go"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-c", CLAIMANT, str(spec)]
    first = subprocess.Popen([*cmd, str(gate)], stdout=subprocess.PIPE, text=True, env=env)
    second = None
    try:
        lock = base.run_dir.root / ".lock"
        while not (lock.exists() and base.run_dir.run_json.exists()):  # first trains (gated)
            assert first.poll() is None, first.communicate()[0]
            time.sleep(0.05)
        second = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
        assert second.stdout is not None
        lines = []
        while not any("waiting for the process that trains it" in ln for ln in lines):
            line = second.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        gate.touch()  # the second now waits on the lock, while the first trains
        out_first = first.communicate(timeout=300)[0]
        out_second = "".join(lines) + second.communicate(timeout=300)[0]
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
    assert first.returncode == 0 and second.returncode == 0, out_first + out_second
    assert json.loads(out_first.strip().splitlines()[-1]) == {"trained": True}
    assert json.loads(out_second.strip().splitlines()[-1]) == {"trained": False}
    assert base.status() == "finished"


def test_a_corrupt_cached_base_is_named_and_not_reused(fixture_data, tmp_path, base_trainings):
    cfg = config(fixture_data, seed=107)
    base = ensure_base(cfg, progress=False)
    assert base is not None
    weights = base.final_checkpoint() / MODEL_FILE
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF  # one flipped byte in the last tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(BaseModelError, match="does not match the sha256") as e:
        ensure_base(cfg, progress=False)
    assert str(weights) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(BaseModelError, match="does not match the sha256"):
        Trainer(cfg, tmp_path / "run", progress=False).run()
    (base.final_checkpoint() / "checkpoint.json").unlink()
    with pytest.raises(BaseModelError, match="no readable manifest"):
        ensure_base(cfg, progress=False)
    assert len(base_trainings) == 1  # detected, never silently trained over or loaded


def test_an_untrained_base_is_refused_by_the_run(fixture_data, tmp_path):
    cfg = config(fixture_data, seed=108)
    with pytest.raises(BaseModelError, match="is not trained"):
        Trainer(cfg, tmp_path / "run", progress=False).run()


@pytest.mark.parametrize(
    "base, expected",
    [
        ({"steps": 0}, "base_model.steps = 0"),
        ({"warmup_steps": 9}, "base_model.warmup_steps = 9 is larger than base_model.steps = 6"),
        ({"min_lr": 1.0}, "base_model.min_lr = 1.0 is above base_model.lr"),
        ({"domains": ["dialogue", "dialogue"]}, "lists ['dialogue'] twice"),
        ({"stepz": 3}, "unknown key 'base_model.stepz' (value 3); allowed in [base_model]"),
    ],
)
def test_a_bad_base_declaration_is_refused_in_one_line(fixture_data, base, expected):
    with pytest.raises(ConfigError) as e:
        config(fixture_data, seed=0, base=base)
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_model_init_and_a_base_together_are_refused(fixture_data):
    raw = raw_config(fixture_data, 0)
    raw["model"]["init"] = "/nonexistent/run"
    with pytest.raises(ConfigError, match=r"model.init = '/nonexistent/run' and \[base_model\]"):
        resolve_run_config(raw)


def test_a_single_run_trains_its_base_first_and_a_second_run_reuses_it(
    fixture_data, tmp_path, base_trainings
):
    from forgetlab.train.launch import train_run

    raw = raw_config(fixture_data, 109)
    # the fixture's own sources: train_run prepares the run's domains and must find them prepared
    raw["data"]["sources"] = fixture_sources(fixture_data.domains)
    cfg = resolve_run_config(raw)
    first = train_run(cfg, tmp_path / "first", progress=False)
    second = train_run(cfg.model_copy(update={"seed": 1}), tmp_path / "second", progress=False)
    assert base_trainings == [locate(cfg).run_dir.root]
    assert first["base_model"] == second["base_model"]
    assert first["base_model"]["key"] == locate(cfg).key


def test_a_base_on_several_domains_reads_their_mixture(fixture_data, base_trainings):
    """Joint training's mixture: every domain read in each of its stages, one schedule over all
    its steps; the weighting is part of the key."""
    mixed = config(fixture_data, seed=110, base={"domains": ["dialogue", "legal"], "steps": 6})
    base = ensure_base(mixed, progress=False)
    assert base is not None and base_trainings == [base.run_dir.root]
    record = base.run_dir.read()
    assert record["config"]["train"]["joint"] == "proportional"
    assert record["tokens"]["train_total"] == 6 * 4 * 64  # steps x batch x block: all of them
    read = record["tokens"]["new_data_per_domain"]
    assert set(read) == {"dialogue", "legal"} and all(n > 0 for n in read.values())
    assert base.record()["steps"] == 6 and base.record()["data"] == (
        "dialogue, legal (proportional mix)"
    )
    uniform = config(
        fixture_data, seed=110, base={"domains": ["dialogue", "legal"], "steps": 6,
                                      "mixture": "uniform"}
    )
    assert locate(uniform).key != base.key


def test_steps_that_do_not_divide_among_the_domains_are_refused(fixture_data):
    with pytest.raises(ConfigError) as e:
        config(fixture_data, seed=0, base={"domains": ["dialogue", "legal"], "steps": 7})
    assert "base_model.steps = 7 is not a multiple of its 2 domains" in str(e.value)
    assert "allowed e.g. 6 or 8" in str(e.value) and "\n" not in str(e.value)
