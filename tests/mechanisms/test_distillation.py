"""Distillation: the iCaRL worked example, T^2 scaling, masks, LwF's loss mix, Trainer runs."""

import contextlib
import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from forgetlab.config import ConfigError, MechanismConfig, ModelConfig
from forgetlab.mechanisms import Batch, StepOutput, build_mechanisms
from forgetlab.mechanisms.distillation import LwF, distillation_loss
from forgetlab.models import model_flops_per_token
from micro_run import run


def bernoulli_logits(*probs):
    """Each class's sigmoid output as a 2-way distribution (p, 1 - p), one position per class."""
    return torch.log(torch.tensor([[p, 1 - p] for p in probs]))


def test_single_sample_distillation_of_the_worked_example():
    # the worked example, stage 2: old model q_A = 0.9, q_B = 0.1; new model p_A = 0.8, p_B = 0.15
    # L = -[0.9 log 0.8 + 0.1 log 0.2] - [0.1 log 0.15 + 0.9 log 0.85]
    #   = 0.36177299 + 0.33597904 = 0.69775202 (by hand)
    student = bernoulli_logits(0.8, 0.15, 0.05)
    teacher = bernoulli_logits(0.9, 0.1, 0.5)  # class C: no old target, masked out
    mask = torch.tensor([1, 1, 0])
    mean = distillation_loss(student, teacher, temperature=1.0, mask=mask, form="ce")
    assert math.isclose(2 * float(mean), 0.69775202, rel_tol=1e-6)
    # the KL form differs by the teacher's entropy, 2 * H(0.9, 0.1) = 0.65016595
    kl = distillation_loss(student, teacher, temperature=1.0, mask=mask, form="kl")
    assert math.isclose(2 * float(kl), 0.69775202 - 0.65016595, rel_tol=1e-5)


def test_t_squared_scaling_matches_logit_matching_at_high_temperature():
    # Hinton 2015 sec. 2.1: for large T, T^2 KL -> 1/2 * variance of the logit difference
    zs = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    zt = torch.tensor([0.0, 1.0, -1.0, 2.0], dtype=torch.float64)
    d = zs - zt
    limit = 0.5 * float((d - d.mean()).square().mean())
    assert math.isclose(float(distillation_loss(zs, zt, temperature=1000.0)), limit, rel_tol=1e-3)


def test_identical_outputs_give_zero_kl():
    z = torch.randn(2, 5, 11)
    assert float(distillation_loss(z, z.clone(), temperature=2.0)) == 0.0


def test_lwf_loss_is_alpha_distill_plus_one_minus_alpha_supervised():
    torch.manual_seed(0)
    model = nn.Embedding(8, 8)  # token -> next-token logits: the smallest language model
    ctx = SimpleNamespace(model=model, stage=1, autocast=contextlib.nullcontext)
    mech = LwF(LwF.Knobs(alpha=0.3, temperature=2.0))
    mech.on_stage_start(ctx)
    teacher_logits = model(torch.arange(8)).detach()
    with torch.no_grad():
        model.weight.add_(torch.randn(8, 8))
    x, y = torch.randint(0, 8, (2, 5)), torch.randint(0, 8, (2, 5))
    w = torch.tensor([[1.0, 0.0, 2.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.5, 1.0]])
    logits = model(x)
    token_loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(y)
    supervised = (token_loss * w).sum() / w.sum()  # what the trainer adds
    total = supervised + sum(
        mech.loss(ctx, Batch(x, y, w), StepOutput(logits, token_loss)).values()
    )

    valid = w > 0
    distill = 4.0 * F.kl_div(
        F.log_softmax(logits[valid] / 2, -1),
        F.log_softmax(teacher_logits[x][valid] / 2, -1),
        reduction="batchmean",
        log_target=True,
    )
    torch.testing.assert_close(total, 0.3 * distill + 0.7 * supervised)


@pytest.mark.parametrize(("name", "term"), [("lwf", "lwf/distill"), ("kl_to_old", "kl_to_old/kl")])
def test_distillation_starts_from_the_stage_start_model(fixture_data, tmp_path, name, term):
    record = run(fixture_data, tmp_path / "r", [{"name": name}], log_every=1)
    curves = pd.read_parquet(tmp_path / "r" / "curves.parquet")
    assert curves[curves["stage"] == 0][term].isna().all()  # no teacher on the first domain
    second = curves[curves["stage"] == 1][term].to_list()
    assert second[0] == 0.0 and all(v > 0 for v in second[1:])  # teacher = student at step 0
    forward = model_flops_per_token(ModelConfig(**record["model"]))["forward"]
    assert record["flops"]["total"]["mechanisms"] == forward * 4 * 4 * 64  # stage 2's tokens


def test_lwf_knobs_are_validated():
    with pytest.raises(ConfigError, match=r"alpha = 1\.5"):
        build_mechanisms([MechanismConfig(name="lwf", alpha=1.5)])
    with pytest.raises(ConfigError, match="cannot be combined"):
        build_mechanisms([MechanismConfig(name="lwf"), MechanismConfig(name="kl_to_old")])
