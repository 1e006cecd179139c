"""End-to-end trainer behaviour on the shipped fixture corpus with the micro preset (seconds)."""

import json

import pandas as pd
import pytest
import torch

import micro_run
from forgetlab.analysis.curves import time_to_target
from forgetlab.config import ConfigError
from forgetlab.models import load_model
from forgetlab.train import RunDir, Trainer

STEPS = 6


def micro_config(fixture_data, domains=3, mechanisms=(), **train):
    train = {"warmup_steps": 2, **train}
    return micro_run.micro_config(fixture_data, mechanisms, domains, seed=1, steps=STEPS,
                                  val_batches=2, **train)  # fmt: skip


@pytest.fixture(scope="module")
def finished_run(fixture_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    cfg = micro_config(fixture_data, eval_every=3)
    record = Trainer(cfg, out, progress=False).run()
    return cfg, out, record


def test_run_json_holds_the_contract(finished_run):
    cfg, out, _record = finished_run
    on_disk = json.loads((out / "run.json").read_text())
    assert on_disk["status"] == "finished" and on_disk["domains"] == cfg.data.domains
    for kind in ("loss", "bpb", "accuracy"):
        r = on_disk["R"][kind]
        assert len(r) == 4 and all(len(row) == 3 for row in r)  # (T+1) x T
        assert len(on_disk["unigram"][kind]) == 3
    for key in ("metrics", "flops", "tokens", "timing", "peak_memory", "env", "config"):
        assert key in on_disk
    assert set(on_disk["metrics"]) >= {"loss", "bpb", "accuracy", "convergence_steps"}
    assert on_disk["tokens"]["train_total"] == 3 * STEPS * 4 * 64
    assert on_disk["timing"]["per_stage"][0]["forward"] > 0


def test_training_lowers_the_loss_of_the_trained_domain(finished_run):
    _, _, record = finished_run
    r = record["R"]["loss"]
    for j in range(3):
        assert r[j + 1][j] < r[0][j]


def test_bpb_is_loss_in_bits_over_bytes(finished_run):
    _, _, record = finished_run
    loss, bpb = record["R"]["loss"][0][0], record["R"]["bpb"][0][0]
    # bytes per token of this tokenizer on this text is between 1 and 8
    ratio = (loss / 0.6931471805599453) / bpb
    assert 1.0 < ratio < 8.0


def test_curves_checkpoints_and_tensorboard_written(finished_run):
    _, out, _ = finished_run
    curves = pd.read_parquet(out / "curves.parquet")
    assert {"step", "stage", "train_loss", "lr", "tokens_per_s", "val_loss"} <= set(curves.columns)
    assert curves["val_loss"].notna().sum() == 3 * 2  # in-stage at step 3 and the stage end
    assert (out / "checkpoints" / "latest" / "model.safetensors").exists()
    assert any((out / "tb").iterdir())


def test_finished_run_is_never_overwritten(finished_run):
    cfg, out, _ = finished_run
    with pytest.raises(ConfigError, match="finished run"):
        Trainer(cfg, out, progress=False)


def test_unfinished_run_with_other_config_is_refused(fixture_data, tmp_path):
    out = tmp_path / "run"
    RunDir(out).root.mkdir()
    RunDir(out).write_run_json({"status": "running", "config_hash": "other"})
    with pytest.raises(ConfigError, match="another config"):
        Trainer(micro_config(fixture_data), out, progress=False)


def test_a_run_that_failed_before_its_first_checkpoint_accepts_a_corrected_config(
    fixture_data, tmp_path
):
    """The corrected command after a failure in set-up is not refused: nothing was trained."""
    out = tmp_path / "run"
    wrong = micro_config(fixture_data, domains=2, mechanisms=[{"name": "lora", "targets": ["x"]}])
    with pytest.raises(ConfigError, match=r"match no nn\.Linear"):
        Trainer(wrong, out, progress=False).run()
    failed = RunDir(out).read()
    assert failed["status"] == "failed" and not RunDir(out).has_checkpoint()
    (out / "tb").mkdir(exist_ok=True)
    (out / "tb" / "events.stale").write_text("x")

    record = Trainer(micro_config(fixture_data, domains=2), out, progress=False).run()
    assert record["status"] == "finished" and record["config_hash"] != failed["config_hash"]
    assert not (out / "tb" / "events.stale").exists()


def test_a_vocabulary_smaller_than_the_tokenizers_is_refused_naming_both(fixture_data, tmp_path):
    """model.vocab_size may pad the tokenizer's vocabulary, never cut it (ids past the embedding
    table): the run stops in set-up, before any step, naming the key and both sizes."""
    cfg = micro_config(fixture_data, domains=1)
    cfg.model.vocab_size = 100
    with pytest.raises(ConfigError, match=r"^model\.vocab_size = 100 is smaller than the "
                       rf"{fixture_data.tokenizer} tokenizer's \d+ tokens$"):
        Trainer(cfg, tmp_path / "run", progress=False).run()
    assert not RunDir(tmp_path / "run").has_checkpoint()


def test_a_failed_run_with_a_checkpoint_refuses_another_config(fixture_data, tmp_path):
    out = RunDir(tmp_path / "run")
    (out.latest).mkdir(parents=True)
    (out.latest / "trainer.pt").write_bytes(b"")
    out.write_run_json({"status": "failed", "config_hash": "other"})
    with pytest.raises(ConfigError, match="unfinished run with another config"):
        Trainer(micro_config(fixture_data), out.root, progress=False)


def test_an_out_that_is_a_file_is_refused_by_name(fixture_data, tmp_path):
    (tmp_path / "f").write_text("notes")
    with pytest.raises(ConfigError, match=r"--out '.*f' is a file, not a directory"):
        Trainer(micro_config(fixture_data), tmp_path / "f", progress=False)
    assert (tmp_path / "f").read_text() == "notes"


def test_resumed_run_ends_bitwise_equal_to_uninterrupted(fixture_data, tmp_path, killed_run):
    cfg = micro_config(fixture_data, domains=2, checkpoint_every=4)
    ref = Trainer(cfg, tmp_path / "ref", progress=False).run()

    killed_run(cfg, tmp_path / "resumed", at=10)  # stage 2, step 4: after the mid-stage checkpoint at global step 8
    assert RunDir(tmp_path / "resumed").status() == "failed"
    resumed = Trainer(cfg, tmp_path / "resumed", progress=False).run()

    assert resumed["R"] == ref["R"]
    a = load_model(tmp_path / "ref" / "checkpoints" / "latest" / "model.safetensors")
    b = load_model(tmp_path / "resumed" / "checkpoints" / "latest" / "model.safetensors")
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name


def test_generation_samples_are_recorded_and_reproducible(fixture_data, tmp_path):
    cfg = micro_config(fixture_data, domains=1, samples=2, sample_tokens=5)
    a = Trainer(cfg, tmp_path / "a", progress=False).run()
    b = Trainer(cfg, tmp_path / "b", progress=False).run()
    assert len(a["samples"]) == 2 and a["samples"] == b["samples"]
    s = a["samples"][0]
    assert s["domain"] == fixture_data.domains[0] and s["prompt"] and s["completion"]
    on_disk = json.loads((tmp_path / "a" / "run.json").read_text())
    assert on_disk["samples"] == a["samples"]


def test_same_seed_same_numbers(fixture_data, tmp_path):
    cfg = micro_config(fixture_data, domains=1)
    a = Trainer(cfg, tmp_path / "a", progress=False).run()
    b = Trainer(cfg, tmp_path / "b", progress=False).run()
    assert a["R"] == b["R"]


def test_time_to_target_is_the_first_evaluation_at_or_below_the_target(fixture_data, tmp_path):
    cfg = micro_config(fixture_data, domains=2, eval_every=2, target_ppl=1e9)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    record = trainer.run()
    reached = record["metrics"]["time_to_target"]
    # any perplexity is below 1e9: the first in-stage evaluation, after 2 steps of 4 x 64 tokens
    assert [t["steps"] for t in reached] == [2, 2]
    assert [t["tokens"] for t in reached] == [2 * 4 * 64] * 2
    assert all(0 < t["train_s"] < sum(record["timing"]["per_stage"][s].values())
               for s, t in enumerate(reached))

    # against the curves, for a target between the stage's first and last evaluation
    curves = pd.DataFrame(trainer.state.curves).dropna(subset=["val_loss"])
    first = curves[curves.stage == 0].sort_values("stage_step")
    target = float(torch.tensor(first.val_loss.tolist()).exp().median())
    expected = next(r for _, r in first.iterrows() if torch.tensor(r.val_loss).exp() <= target)
    got = time_to_target(trainer.state.curves, 2, target)[0]
    assert got["steps"] == expected.stage_step and got["train_s"] == expected.train_s
    assert time_to_target(trainer.state.curves, 2, 1.0001) == [None, None]  # never reached

    from forgetlab.analysis.columns import flatten_record

    row = flatten_record(record)
    assert row["steps_to_target"] == 2 and row["tokens_to_target"] == 512
    record["metrics"]["time_to_target"][1] = None  # one domain missed: no flattering mean
    assert pd.isna(flatten_record(record)["steps_to_target"])


def test_a_target_without_in_stage_evaluation_is_refused(fixture_data):
    with pytest.raises(ConfigError, match=r"target_ppl = 50.0 needs in-stage evaluation"):
        micro_config(fixture_data, target_ppl=50.0)


def test_config_hash_ignores_fields_left_at_their_default(fixture_data):
    """A field a newer forgetlab adds with a neutral default must not change existing run ids;
    any value away from the default must."""
    from forgetlab.train.rundir import config_hash

    cfg = micro_config(fixture_data)
    explicit = micro_config(fixture_data, target_ppl=None, compile=False, rewarm=True)
    assert config_hash(explicit) == config_hash(cfg)
    assert config_hash(micro_config(fixture_data, lr=2e-3)) != config_hash(cfg)
    assert config_hash(micro_config(fixture_data, compile=True)) != config_hash(cfg)


def test_frozen_qk_buffers_count_as_frozen_parameters_in_the_run_record(fixture_data, tmp_path):
    """OELM's frozen Q/K are buffers, not parameters; the record counts them as frozen weights
    (total - trainable), as `forgetlab inspect` does, or qk_freeze's H1 would read 0 frozen."""
    from forgetlab.models import build_model
    from forgetlab.models.inspection import inspect_model

    cfg = micro_config(fixture_data, domains=1, steps_per_stage=1, warmup_steps=0)
    cfg.model.attention, cfg.model.freeze_qk = "orthogonal", True
    record = Trainer(cfg, tmp_path / "r", progress=False).run()
    params = record["parameters"]
    qk = 2 * cfg.model.n_layer * cfg.model.n_embd**2
    assert params["total"] - params["trainable"] == qk
    table = inspect_model(build_model(cfg.model, record["model"]["vocab_size"]))
    assert (params["total"], params["trainable"]) == (table["total"], table["trainable"])


def test_a_mechanisms_batch_making_is_timed_as_mechanisms_not_data(fixture_data, tmp_path,
                                                                   monkeypatch):
    """Selective write scores every micro-batch with a forward pass inside make_batch: that time
    belongs to the mechanism (phase "mechanisms"), not to loading data."""
    from forgetlab.mechanisms.selective_write import SelectiveWrite
    from forgetlab.train.timing import PhaseTimer

    events: list[str] = []
    add, make_batch = PhaseTimer.add, SelectiveWrite.make_batch

    def logged_add(self, stage, phase, t0):
        events.append(phase)
        return add(self, stage, phase, t0)

    def logged_make_batch(self, ctx, batch):
        events.append("make_batch")
        return make_batch(self, ctx, batch)

    monkeypatch.setattr(PhaseTimer, "add", logged_add)
    monkeypatch.setattr(SelectiveWrite, "make_batch", logged_make_batch)
    cfg = micro_config(fixture_data, domains=1, steps_per_stage=2,
                       mechanisms=[{"name": "selective_write", "write_fraction": 0.5}])
    Trainer(cfg, tmp_path / "run", progress=False).run()
    calls = [i for i, e in enumerate(events) if e == "make_batch"]
    assert len(calls) == 2  # one micro-batch per step
    for i in calls:
        assert events[i - 1] == "data" and events[i + 1] == "mechanisms"


def test_a_redirected_progress_bar_writes_no_carriage_return_frames(fixture_data, tmp_path, capfd):
    """With progress on and stderr not a terminal (a log file, CI), tqdm draws nothing: a log
    must hold lines, not carriage-return animation frames."""
    cfg = micro_config(fixture_data, domains=1, steps_per_stage=2, warmup_steps=1)
    Trainer(cfg, tmp_path / "run", progress=True).run()
    err = capfd.readouterr().err
    assert "\r" not in err and "stage 1/1" not in err
