"""Learning-rate schedule, token weighting, evaluation and the unigram baseline, by hand."""

import math

import numpy as np
import pytest
import torch

from forgetlab.config import TrainConfig
from forgetlab.train.evaluate import EvalSet, evaluate, make_eval_set, unigram_baseline
from forgetlab.train.flops import FlopsAccount
from forgetlab.train.optim import weighted_token_mean
from forgetlab.train.schedule import checkpoint_due, eval_due, log_due, lr_at


def test_warmup_is_linear_and_cosine_ends_at_min_lr():
    cfg = TrainConfig(steps_per_stage=100, warmup_steps=9, lr=1e-3, min_lr=1e-4)
    assert lr_at(cfg, 0, 0, 3) == pytest.approx(1e-4)  # (0 + 1) / 10 of the peak
    assert lr_at(cfg, 0, 9, 3) == pytest.approx(1e-3)  # first step after warmup: cosine at 0
    assert lr_at(cfg, 0, 100, 3) == pytest.approx(1e-4)
    mid = 9 + (100 - 9) / 2  # half way through the decay: midpoint of lr and min_lr
    assert lr_at(cfg, 0, int(mid), 3) == pytest.approx(5.5e-4, rel=2e-2)


def test_rewarm_restarts_each_stage_and_single_schedule_does_not():
    cfg = TrainConfig(steps_per_stage=50, warmup_steps=5, rewarm=True)
    assert lr_at(cfg, 2, 0, 3) == lr_at(cfg, 0, 0, 3)
    single = TrainConfig(steps_per_stage=50, warmup_steps=5, rewarm=False)
    assert lr_at(single, 2, 0, 3) < lr_at(single, 1, 0, 3) < single.lr


def test_in_stage_points_leave_the_stage_end_to_the_stage_end():
    cfg = TrainConfig(steps_per_stage=6, log_every=4, eval_every=3, checkpoint_every=2)
    assert [d for d in range(1, 7) if log_due(cfg, d)] == [4, 6]  # the last step is always logged
    assert [d for d in range(1, 7) if eval_due(cfg, d)] == [3]  # 6 is the stage end's evaluation
    # checkpoint_every counts global steps: in stage 2 (global step = 6 + done) at 2 and 4 of 6
    assert [d for d in range(1, 7) if checkpoint_due(cfg, 6 + d, d)] == [2, 4]
    off = TrainConfig(steps_per_stage=6)
    assert not any(eval_due(off, d) or checkpoint_due(off, d, d) for d in range(1, 7))


def test_weighted_mean_ignores_gated_out_tokens():
    loss = torch.tensor([[1.0, 2.0, 3.0, 10.0]])
    w = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert weighted_token_mean(loss, w).item() == pytest.approx(2.0)
    assert weighted_token_mean(loss, None).item() == pytest.approx(4.0)


class FixedLogits(torch.nn.Module):
    """Predicts the same distribution everywhere: p = softmax([2, 0, 0, 0])."""

    def forward(self, idx):
        logits = torch.tensor([2.0, 0.0, 0.0, 0.0])
        return logits.expand(*idx.shape, 4).clone()


def test_evaluate_matches_hand_computed_loss_bpb_and_accuracy():
    y = torch.tensor([[0, 1, 0, 2]])
    token_bytes = np.array([1, 2, 3, 4])
    data = make_eval_set(torch.zeros_like(y), y, token_bytes, torch.device("cpu"))
    assert data.n_bytes == 1 + 2 + 1 + 3
    res = evaluate(
        FixedLogits(), data, batch_size=1, autocast=lambda: torch.autocast("cpu", enabled=False)
    )
    z = math.log(math.exp(2) + 3)
    nll = [z - 2, z, z - 2, z]
    assert res["loss"] == pytest.approx(sum(nll) / 4)
    assert res["bpb"] == pytest.approx(sum(nll) / math.log(2) / 7)
    assert res["accuracy"] == pytest.approx(0.5)


def test_unigram_baseline_is_add_one_smoothed_frequency_model():
    counts = np.array([3, 1, 0, 0])
    y = torch.tensor([[0, 1, 2]])
    data = EvalSet(x=y, y=y, n_bytes=3)
    res = unigram_baseline(counts, data, vocab_size=4)
    p = np.array([4, 2, 1, 1]) / 8  # (c + 1) / (N + V)
    assert res["loss"] == pytest.approx(-(np.log(p[0]) + np.log(p[1]) + np.log(p[2])) / 3)
    assert res["accuracy"] == pytest.approx(1 / 3)


def test_flops_account_sums_stages_and_buckets():
    acc = FlopsAccount(train_per_token=6.0, eval_per_token=2.0)
    acc.add_train(0, 10)
    acc.add_train(1, 5)
    acc.add_eval(1, 100)
    acc.add_extra(1, 2)
    acc.set_mechanisms(0, 7.0)
    tot = acc.totals()
    assert tot["train"] == 90 and tot["eval"] == 200 and tot["extra_steps"] == 12
    assert tot["training_total"] == 90 + 12 + 7 and tot["train_tokens"] == 15
