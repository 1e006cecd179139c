"""Convergence, time to target and MFU from curves and counters, against hand-computed values."""

import math

import pytest

from forgetlab.analysis.curves import (
    convergence_by_stage,
    mfu,
    throughput,
    time_to_target,
    train_seconds,
)


def test_convergence_interpolates_the_crossing_of_the_new_domains_curve():
    r_loss = [[4.0, 5.0], [2.0, 4.5], [2.5, 2.0]]
    curves = [
        {"stage": 0, "stage_step": 2, "train_loss": 3.1},  # a training row: not an evaluation
        {"stage": 0, "stage_step": 2, "val_loss": 3.0},
        {"stage": 0, "stage_step": 4, "val_loss": 2.0},
        {"stage": 1, "stage_step": 4, "val_loss": None},
    ]
    # stage 0: points (0, 4) (2, 3) (4, 2); level 2 + 0.05 * 2 = 2.1 is crossed between steps 2
    # and 4 at 2 + 2 * (3 - 2.1) / (3 - 2) = 3.8. Stage 1 has no evaluation: None.
    got = convergence_by_stage(r_loss, curves)
    assert got[0] == pytest.approx(3.8) and got[1] is None


def test_time_to_target_is_the_first_evaluation_at_or_below_the_perplexity():
    curves = [
        {"stage": 0, "stage_step": 4, "val_loss": math.log(20.0), "train_tokens": 1024,
         "train_s": 2.0},
        {"stage": 0, "stage_step": 2, "val_loss": math.log(50.0), "train_tokens": 512,
         "train_s": 1.0},
        {"stage": 0, "stage_step": 3, "train_loss": 0.1},
    ]
    hit = time_to_target(curves, 2, 30.0)
    assert hit[0] == {"steps": 4, "tokens": 1024, "train_s": 2.0, "ppl": pytest.approx(20.0)}
    assert hit[1] is None  # stage 1 was never evaluated
    assert time_to_target(curves, 1, 50.0)[0]["steps"] == 2  # at the target counts
    assert time_to_target(curves, 1, 10.0) == [None]


def test_throughput_and_mfu_are_per_training_second_and_per_device():
    flops = {"train": 600.0, "extra_steps": 200.0, "train_tokens": 40.0}
    timing = {"data": 1.0, "forward": 2.0, "backward": 3.0, "optimizer": 1.0,
              "mechanisms": 1.0, "eval": 100.0}
    assert train_seconds(timing) == 8.0  # evaluation is not training
    got = throughput(flops, timing, 200.0, "table:H200", 2)
    # 40 tokens / 8 s; (600 + 200) FLOPs / 8 s = 100 FLOP/s over 2 devices x 200 FLOP/s peak
    assert got == {"train_tokens_per_s": 5.0, "train_flops_per_s": 100.0, "peak_flops": 200.0,
                   "peak_source": "table:H200", "mfu": 0.25, "devices": 2}
    assert throughput(flops, timing, None, "unknown", 1)["mfu"] is None
    idle = throughput(flops, dict.fromkeys(timing, 0.0), 200.0, "x", 1)
    assert idle["train_tokens_per_s"] is None and idle["mfu"] is None
    assert mfu(30.0, 100.0) == pytest.approx(0.3) and mfu(30.0, 0.0) is None
