"""``data.probes``: domains evaluated with the stream at row 0 and after every stage, and never
trained on, whatever the mechanisms (plain, replay, sleep on real or generated samples,
generative replay) or joint training on the mixture of the stream's domains."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from forgetlab.config import ModelConfig, resolve_run_config
from forgetlab.data import fixed_windows, open_stream
from forgetlab.models import load_model, model_flops_per_token
from forgetlab.train import RunDir, Trainer
from forgetlab.train.device import autocast_factory
from forgetlab.train.evaluate import evaluate, make_eval_set
from forgetlab.train.step import StepRunner
from micro_run import micro_config

STREAM, PROBES = ["code", "math"], ["legal", "dialogue"]
VAL_BATCHES, BATCH, EVAL_BATCH, STEPS = 2, 4, 8, 4


def probe_config(fixture_data, domains=STREAM, probes=PROBES, mechanisms=(), **extra):
    return micro_config(fixture_data, mechanisms, list(domains), seed=5, steps=STEPS,
                        val_batches=VAL_BATCHES, data={"probes": list(probes)}, **extra)  # fmt: skip


@pytest.fixture(scope="module")
def base(fixture_data, tmp_path_factory) -> Path:
    """A finished micro run on medical: the weights the probed run starts from (model.init)."""
    out = tmp_path_factory.mktemp("base") / "base"
    Trainer(probe_config(fixture_data, ["medical"], []), out, progress=False).run()
    return out


@pytest.fixture(scope="module")
def probed(fixture_data, base, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("probed") / "run"
    cfg = probe_config(fixture_data, model={"init": str(base)})
    return out, Trainer(cfg, out, progress=False).run()


def independent_scores(model: torch.nn.Module, fixture_data) -> dict[str, list[float]]:
    """Each probe's scores, evaluated here from the shards (not through the trainer)."""
    stream = open_stream(PROBES, fixture_data.tokenizer, fixture_data.cache_dir)
    token_bytes = stream.tokenizer.token_byte_lengths()
    autocast = autocast_factory(torch.device("cpu"), "fp32")
    out: dict[str, list[float]] = {"loss": [], "bpb": [], "accuracy": []}
    for name in PROBES:
        x, y = fixed_windows(stream[name].val, VAL_BATCHES * BATCH, model.config.block_size)
        res = evaluate(model, make_eval_set(x, y, token_bytes, torch.device("cpu")), EVAL_BATCH,
                       autocast)
        for k in out:
            out[k].append(res[k])
    return out


def test_probe_rows_equal_an_independent_evaluation_of_each_checkpoint(
    fixture_data, base, probed
):
    out, record = probed
    probes = json.loads((out / "run.json").read_text())["probes"]
    assert probes["domains"] == PROBES and record["domains"] == STREAM
    for kind in ("loss", "bpb", "accuracy"):
        assert np.asarray(probes["R"][kind]).shape == (len(STREAM) + 1, len(PROBES))
        assert np.asarray(record["R"][kind]).shape == (len(STREAM) + 1, len(STREAM))
    # row 0 is the base the run starts from; rows 1 and 2 its checkpoints after each stage
    models = [load_model(base / "checkpoints" / "latest" / "model.safetensors")]
    steps = sorted((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name[5:]))
    models += [load_model(p / "model.safetensors") for p in steps[-2:]]
    for row, model in enumerate(models):
        ref = independent_scores(model, fixture_data)
        for kind in ref:
            assert probes["R"][kind][row] == pytest.approx(ref[kind], abs=1e-5), (row, kind)


def test_probe_forgetting_is_the_last_probe_row_minus_the_first(probed):
    _, record = probed
    probes = record["probes"]
    loss, acc = np.asarray(probes["R"]["loss"]), np.asarray(probes["R"]["accuracy"])
    recorded = probes["metrics"]["loss"]["probe_forgetting"]
    assert recorded["per_probe"] == pytest.approx(dict(zip(PROBES, loss[-1] - loss[0], strict=True)))
    assert recorded["mean"] == pytest.approx(float(np.mean(loss[-1] - loss[0])))
    dropped = probes["metrics"]["accuracy"]["probe_forgetting"]["per_probe"]
    assert dropped == pytest.approx(dict(zip(PROBES, acc[0] - acc[-1], strict=True)))


def test_probes_count_as_evaluation_cost_and_have_their_baselines(probed):
    _, record = probed
    probes = record["probes"]
    assert probes["eval_tokens"] == [VAL_BATCHES * BATCH * 64] * len(PROBES)  # micro: block 64
    assert all(v is not None and v > 0 for v in probes["unigram"]["loss"])
    per_token = model_flops_per_token(ModelConfig.model_validate(record["model"]), 64)["forward"]
    evaluated = sum(record["tokens"]["eval_per_domain"]) + sum(probes["eval_tokens"])
    assert record["flops"]["total"]["eval"] == per_token * evaluated * (len(STREAM) + 1)


# ------------------------------------------------------------------- never in a training batch
def windows_of(tokens: np.ndarray, block: int) -> set[bytes]:
    """Every contiguous run of ``block`` ids in ``tokens`` (a training row is one of them)."""
    ids = np.asarray(tokens, dtype=np.int64)
    return {w.tobytes() for w in np.lib.stride_tricks.sliding_window_view(ids, block)}


class BatchSpy:
    """Every row of every batch the trainer computes a training loss on (stream steps and a
    mechanism's extra steps, e.g. sleep phases, go through the same forward)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rows: list[bytes] = []
        original = StepRunner.forward_loss

        def spy(steps: StepRunner, batch):
            for row in batch.x.detach().cpu().to(torch.int64).numpy():
                self.rows.append(row.tobytes())
            return original(steps, batch)

        monkeypatch.setattr(StepRunner, "forward_loss", spy)

    def leaked(self, fixture_data, names: list[str], block: int) -> int:
        """How many trained rows are windows of the train or val split of ``names``."""
        stream = open_stream(names, fixture_data.tokenizer, fixture_data.cache_dir)
        seen: set[bytes] = set()
        for name in names:
            seen |= windows_of(stream[name].train, block) | windows_of(stream[name].val, block)
        return sum(row in seen for row in self.rows)


MECHANISMS = {
    "plain": [],
    "replay": [{"name": "replay", "capacity": 8, "ratio": "1:1"}],
    "sleep": [{"name": "sleep", "every": 2, "steps": 2, "capacity": 8}],
    "generated_sleep": [
        {"name": "sleep", "every": 2, "steps": 1, "source": "generated", "capacity": 2,
         "gen_batch_size": 2}
    ],
    "generative_replay": [{"name": "generative_replay", "capacity": 2, "gen_batch_size": 2}],
}
GENERATED = ("generated_sleep", "generative_replay")  # rows the model wrote, not the stream's


@pytest.mark.parametrize("mechanism", list(MECHANISMS))
def test_no_probe_token_window_ever_reaches_a_training_batch(
    fixture_data, tmp_path, monkeypatch, mechanism
):
    spy = BatchSpy(monkeypatch)
    cfg = probe_config(fixture_data, mechanisms=MECHANISMS[mechanism])
    record = Trainer(cfg, tmp_path / "run", progress=False).run()
    block = cfg.model.block_size
    assert record["probes"]["R"]["loss"] and len(spy.rows) >= len(STREAM) * STEPS * BATCH
    assert spy.leaked(fixture_data, PROBES, block) == 0
    if mechanism not in GENERATED:  # the detector sees real rows: every one is the stream's
        assert spy.leaked(fixture_data, STREAM, block) == len(spy.rows)


def test_joint_training_draws_from_every_stream_domain_and_never_from_a_probe(
    fixture_data, tmp_path, monkeypatch
):
    """train.joint samples each batch from the mixture of the stream's domains: only those."""
    spy = BatchSpy(monkeypatch)
    cfg = probe_config(fixture_data, joint="proportional", rewarm=False)
    record = Trainer(cfg, tmp_path / "run", progress=False).run()
    block = cfg.model.block_size
    assert len(spy.rows) == len(STREAM) * STEPS * BATCH
    assert spy.leaked(fixture_data, PROBES, block) == 0
    assert spy.leaked(fixture_data, STREAM, block) == len(spy.rows)
    read = record["tokens"]["new_data_per_domain"]
    assert set(read) == set(STREAM) and all(n > 0 for n in read.values())
    assert len(record["probes"]["R"]["loss"]) == len(STREAM) + 1


def test_the_leak_detector_catches_a_probe_drawn_into_training(fixture_data, tmp_path, monkeypatch):
    """The fault injected: the stream the trainer opens reads its second domain from a probe's
    shards (as a sampler, memory or mixture drawing from a probe would)."""
    import forgetlab.train.trainer as trainer_module
    from forgetlab.data import Stream

    spy = BatchSpy(monkeypatch)
    original = trainer_module.open_stream

    def leaking(domains, tokenizer, cache_dir=None, verify=False):
        stream = original(domains, tokenizer, cache_dir, verify)
        probe = original(PROBES[:1], tokenizer, cache_dir, verify)[PROBES[0]]
        return Stream(stream.tokenizer, {domains[0]: stream[domains[0]], domains[1]: probe})

    monkeypatch.setattr(trainer_module, "open_stream", leaking)
    cfg = probe_config(fixture_data)
    Trainer(cfg, tmp_path / "run", progress=False).run()
    assert spy.leaked(fixture_data, PROBES, cfg.model.block_size) == STEPS * BATCH


# ------------------------------------------------------------------------------ resume, refusal
def test_a_resumed_run_ends_with_the_same_probe_rows(fixture_data, tmp_path, killed_run):
    cfg = probe_config(fixture_data, checkpoint_every=3)
    ref = Trainer(cfg, tmp_path / "ref", progress=False).run()
    killed_run(cfg, tmp_path / "resumed", at=STEPS + 2)  # in stage 2, after its first checkpoint
    assert RunDir(tmp_path / "resumed").status() == "failed"
    resumed = Trainer(cfg, tmp_path / "resumed", progress=False).run()
    assert resumed["probes"] == ref["probes"] and resumed["R"] == ref["R"]


def test_a_run_without_probes_writes_no_probe_section(fixture_data, tmp_path):
    record = Trainer(probe_config(fixture_data, STREAM[:1], []), tmp_path / "run",
                     progress=False).run()
    assert "probes" not in record


def test_the_mmlu_probe_is_prepared_with_its_run_and_evaluated_without_a_train_split(
    tmp_path, mmlu_root
):
    """``train_run`` prepares the stream and the evaluation-only mmlu probe (its pinned wheel;
    the session's copy), trains, and records mmlu's rows; with no train split there is no
    unigram baseline."""
    from forgetlab.train.launch import train_run

    root = mmlu_root
    corpus = Path(__file__).parents[1] / "fixtures" / "corpus"
    cfg = resolve_run_config({
        "model": {"preset": "micro"},
        "data": {"domains": ["code"], "probes": ["mmlu"], "tokenizer": "gpt2",
                 "cache_dir": str(root), "val_batches": 1, "eval_batch_size": 8,
                 "sources": {"code": {"files": [str(corpus / "code" / "*.jsonl")],
                                      "val_fraction": 0.2}}},
        # one step: the gpt2 vocabulary makes every step of even the micro model slow
        "train": {"steps_per_stage": 1, "batch_size": 2, "warmup_steps": 1, "precision": "fp32"},
    })
    record = train_run(cfg, tmp_path / "run", progress=False)
    probes = record["probes"]
    assert probes["domains"] == ["mmlu"] and len(probes["R"]["loss"]) == 2
    assert probes["unigram"]["loss"] == [None]
    assert probes["metrics"]["loss"]["probe_forgetting"]["per_probe"]["mmlu"] == pytest.approx(
        probes["R"]["loss"][1][0] - probes["R"]["loss"][0][0]
    )
