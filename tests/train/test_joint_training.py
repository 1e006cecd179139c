"""Joint training (``train.joint``): one pass over the mixture of every domain, with the stream's
evaluation points and the same new-data tokens as the stream."""

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch
from test_trainer import STEPS, micro_config

from forgetlab.config import ConfigError
from forgetlab.data import DomainMixture
from forgetlab.models import load_model
from forgetlab.train import RunDir, Trainer

BATCH, BLOCK = 4, 64  # micro_config's batch size and the micro preset's context


def joint_config(fixture_data, joint="proportional", **train):
    return micro_config(fixture_data, joint=joint, rewarm=False, **train)


@pytest.fixture(scope="module")
def joint_and_plain(fixture_data, tmp_path_factory):
    """A joint run whose every training batch's domains are recorded, and a plain stream run."""
    root = tmp_path_factory.mktemp("joint")
    drawn: list[tuple[int, list[str]]] = []  # (stage, domain of each row) per batch
    original = DomainMixture.sample

    def spy(self, rng, batch_size, block_size):
        x, y, domain = original(self, rng, batch_size, block_size)
        drawn.append((len(drawn) // STEPS, [self.names[d] for d in domain]))
        return x, y, domain

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DomainMixture, "sample", spy)
        joint = Trainer(joint_config(fixture_data, eval_every=2), root / "joint", progress=False).run()
    plain = Trainer(micro_config(fixture_data, eval_every=2), root / "plain", progress=False).run()
    return joint, plain, drawn, root


def test_every_stage_of_a_joint_run_trains_on_every_domain(joint_and_plain, fixture_data):
    joint, _, drawn, _ = joint_and_plain
    domains = fixture_data.domains[:3]
    assert len(drawn) == 3 * STEPS
    for stage in range(3):
        seen = {d for s, rows in drawn if s == stage for d in rows}
        assert seen == set(domains), (stage, seen)
    counted = {d: sum(rows.count(d) for _, rows in drawn) * BLOCK for d in domains}
    assert joint["tokens"]["new_data_per_domain"] == counted


def test_a_joint_run_reads_as_many_new_tokens_as_the_stream(joint_and_plain):
    _, plain, _, root = joint_and_plain
    on_disk = {n: json.loads((root / n / "run.json").read_text()) for n in ("joint", "plain")}
    expected = 3 * STEPS * BATCH * BLOCK
    assert on_disk["joint"]["tokens"]["train_total"] == on_disk["plain"]["tokens"]["train_total"]
    assert on_disk["joint"]["tokens"]["train_total"] == expected
    assert sum(on_disk["joint"]["tokens"]["new_data_per_domain"].values()) == expected
    # the stream reads each domain in its own stage only
    assert plain["tokens"]["new_data_per_domain"] == dict.fromkeys(
        plain["domains"], STEPS * BATCH * BLOCK
    )


def test_a_joint_run_has_the_streams_evaluation_points_and_metrics(joint_and_plain):
    joint, plain, _, _ = joint_and_plain
    for kind in ("loss", "bpb", "accuracy"):
        assert np.shape(joint["R"][kind]) == np.shape(plain["R"][kind]) == (4, 3)  # (T+1) x T
    assert joint["R"]["loss"][0] == plain["R"]["loss"][0]  # same seed, same initial model
    assert set(joint["metrics"]["loss"]) == set(plain["metrics"]["loss"])
    # after the whole pass every domain sits below where the untrained model started
    assert all(a < b for a, b in zip(joint["R"]["loss"][-1], joint["R"]["loss"][0], strict=True))


def test_a_joint_run_follows_one_learning_rate_schedule(joint_and_plain):
    root = joint_and_plain[3]

    def train_rows(name):
        curves = pd.read_parquet(root / name / "curves.parquet")
        return curves[curves["lr"].notna()]

    joint_lr = train_rows("joint")["lr"].tolist()[1:]  # after the warmup (the 1st row: step 2)
    assert all(b <= a for a, b in itertools.pairwise(joint_lr)), joint_lr
    plain_lr = train_rows("plain")["lr"].tolist()
    assert any(b > a for a, b in itertools.pairwise(plain_lr))  # rewarmed stages


def test_a_joint_runs_training_rows_name_the_mixture_and_its_evaluations_the_domain(
    joint_and_plain, fixture_data
):
    """A curve row says what it measures: joint training's loss is the mixture's (labelling it
    with the stage's domain made stage 1 of a joint run look like training on code alone)."""
    root = joint_and_plain[3]
    for name, trained in (("joint", ["proportional mix of 3"] * 3), ("plain", None)):
        curves = pd.read_parquet(root / name / "curves.parquet")
        train = curves[curves["train_loss"].notna()].groupby("stage")["domain"].unique()
        evals = curves[curves["val_loss"].notna()].groupby("stage")["domain"].unique()
        domains = fixture_data.domains[:3]
        assert [list(v) for v in train] == [[d] for d in (trained or domains)]
        assert [list(v) for v in evals] == [[d] for d in domains]


def test_a_killed_joint_run_resumes_mid_stage_to_the_same_numbers(
    fixture_data, tmp_path, killed_run
):
    cfg = joint_config(fixture_data, "uniform", checkpoint_every=4)
    ref = Trainer(cfg, tmp_path / "ref", progress=False).run()
    killed_run(cfg, tmp_path / "resumed", at=10)  # stage 2 step 4, after the checkpoint at 8
    assert RunDir(tmp_path / "resumed").status() == "failed"
    resumed = Trainer(cfg, tmp_path / "resumed", progress=False).run()
    assert resumed["R"] == ref["R"]
    assert resumed["tokens"]["new_data_per_domain"] == ref["tokens"]["new_data_per_domain"]
    a = load_model(tmp_path / "ref" / "checkpoints" / "latest" / "model.safetensors")
    b = load_model(tmp_path / "resumed" / "checkpoints" / "latest" / "model.safetensors")
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name


def test_joint_training_refuses_a_rewarm_mechanisms_and_unknown_weightings(fixture_data):
    with pytest.raises(ConfigError, match=r"train.joint = 'uniform' .* set train.rewarm = false"):
        micro_config(fixture_data, joint="uniform")
    with pytest.raises(ConfigError, match=r"mechanisms \['ewc'\] .* remove the mechanisms"):
        micro_config(fixture_data, mechanisms=[{"name": "ewc"}], joint="uniform", rewarm=False)
    with pytest.raises(ConfigError, match=r"train.joint.*'proportional'.*'uniform'"):
        micro_config(fixture_data, joint="sorted", rewarm=False)
