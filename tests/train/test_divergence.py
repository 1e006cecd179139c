"""A run whose loss, gradients, weights or evaluation go non-finite stops as failed, naming where."""

import json
import math

import pytest
import torch
from test_trainer import micro_config

from forgetlab.train import RunDir, Trainer
from forgetlab.train.failures import DivergenceError
from forgetlab.train.step import StepRunner


def test_a_huge_learning_rate_fails_the_run_at_the_first_non_finite_step(
    fixture_data, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    cfg = micro_config(fixture_data, domains=2, lr=1e3, warmup_steps=0, log_every=3)
    trainer = Trainer(cfg, out, progress=False)
    seen: list[tuple[float, float]] = []
    step = StepRunner.train_step

    def recording(steps, stage):  # the values the run saw, step by step, until it stopped
        try:
            stats = step(steps, stage)
        except DivergenceError:
            seen.append((math.nan, math.nan))
            raise
        seen.append((stats["train_loss"], stats["grad_norm"]))
        return stats

    monkeypatch.setattr(StepRunner, "train_step", recording)
    with pytest.raises(DivergenceError, match=r"gradient norm is nan at step 2 \(stage 1 'code', "
                       r"step 2 of the stage\); last finite checkpoint: none.*lower train\.lr"):
        trainer.run()
    assert len(seen) == 2 and all(math.isfinite(v) for v in seen[0])  # step 1 was finite
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "failed" and record["error"].startswith("training diverged")
    assert record["failure"] | {"value": None} == {
        "kind": "divergence", "what": "the gradient norm", "value": None, "step": 2, "stage": 0,
        "domain": "code", "stage_step": 2, "checkpoint": None}
    assert len(record["R"]["loss"]) == 1 and not record["metrics"]  # no R row after a NaN


def test_divergence_in_a_later_stage_names_the_last_finite_checkpoint(
    fixture_data, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    cfg = micro_config(fixture_data, domains=2)
    trainer = Trainer(cfg, out, progress=False)
    forward = StepRunner.forward_loss

    def poisoned(steps, batch):  # stage 2's third step produces a NaN loss
        loss, terms = forward(steps, batch)
        if trainer.ctx.stage == 1 and trainer.ctx.step == 2:
            loss = loss * torch.tensor(float("nan"))
        return loss, terms

    monkeypatch.setattr(StepRunner, "forward_loss", poisoned)
    with pytest.raises(DivergenceError) as caught:
        trainer.run()
    stage_end = RunDir(out).checkpoints / "step-00000006"
    assert caught.value.details["step"] == 9 and caught.value.details["stage"] == 1
    assert caught.value.details["what"] == "the training loss"
    assert f"last finite checkpoint: {stage_end}" in str(caught.value)
    assert json.loads((out / "run.json").read_text())["failure"]["checkpoint"] == str(stage_end)


def test_a_nan_evaluation_is_never_written_as_r(fixture_data, tmp_path, monkeypatch):
    import forgetlab.train.trainer as trainer_module

    real = trainer_module.evaluate
    calls = []

    def nan_on_the_last_domain_at_the_end(model, es, batch, autocast):
        calls.append(1)
        res = real(model, es, batch, autocast)
        return {**res, "loss": math.nan} if len(calls) == 4 else res  # R row 1, domain 2

    monkeypatch.setattr(trainer_module, "evaluate", nan_on_the_last_domain_at_the_end)
    out = tmp_path / "run"
    with pytest.raises(DivergenceError, match=r"evaluation loss on 'math' is nan after step 6 "
                       r"\(stage 1 'code', step 6 of the stage\)"):
        Trainer(micro_config(fixture_data, domains=2), out, progress=False).run()
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "failed" and len(record["R"]["loss"]) == 1
    assert all(math.isfinite(v) for row in record["R"]["loss"] for v in row)


def test_non_finite_weights_are_never_checkpointed(fixture_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    trainer = Trainer(micro_config(fixture_data, domains=1, checkpoint_every=4), out,
                      progress=False)
    step = StepRunner.optimizer_step

    def poisoning_the_fourth(steps, stage, t0):  # after its gradient check, as a bad kernel would
        result = step(steps, stage, t0)
        if trainer.ctx.global_step == 3:
            with torch.no_grad():
                next(trainer.model.parameters()).view(-1)[0] = math.inf
        return result

    monkeypatch.setattr(StepRunner, "optimizer_step", poisoning_the_fourth)
    with pytest.raises(DivergenceError, match=r"weight \S+ is not finite after step 4 \(stage 1 "
                       r"'code', step 4 of the stage\); last finite checkpoint: none"):
        trainer.run()
    assert not RunDir(out).checkpoint_dirs()
