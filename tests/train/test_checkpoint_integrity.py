"""Damaged checkpoints are named and skipped: a resume falls back to the newest intact one."""

import logging
import re
import shutil

import pytest
import torch
from test_trainer import micro_config

from forgetlab.models import load_model
from forgetlab.train import RunDir, RunDirError, Trainer
from forgetlab.train.checkpoint import MANIFEST_FILE

STAGE_END, MID_STAGE = "step-00000006", "step-00000008"


@pytest.fixture(scope="module")
def reference(fixture_data, tmp_path_factory):
    cfg = micro_config(fixture_data, domains=2, checkpoint_every=4)
    out = tmp_path_factory.mktemp("ref") / "run"
    return cfg, out, Trainer(cfg, out, progress=False).run()


def killed(cfg, out, killed_run) -> RunDir:
    killed_run(cfg, out, at=10)  # stage 2, step 4: checkpoints at global steps 6 and 8 remain
    run = RunDir(out)
    assert [p.name for p in run.checkpoint_dirs()] == [MID_STAGE, STAGE_END]
    return run


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def nan_first_weight(path):
    """Set the first float of the first tensor of a safetensors file to NaN (bytes ff ff ff ff)."""
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        f.seek(8 + n)
        f.write(b"\xff\xff\xff\xff")


def assert_same_result(reference, out, record):
    _, ref_out, ref = reference
    assert record["R"] == ref["R"] and record["metrics"] == ref["metrics"]
    a = load_model(RunDir(ref_out).latest / "model.safetensors").state_dict()
    b = load_model(RunDir(out).latest / "model.safetensors").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda d: truncate(d / "model.safetensors"), r"model\.safetensors has \d+ bytes"),
        (lambda d: truncate(d / "trainer.pt"), r"trainer\.pt has \d+ bytes"),
        (lambda d: nan_first_weight(d / "model.safetensors"), r"model\.safetensors does not match"),
        (lambda d: ((d / MANIFEST_FILE).unlink(), truncate(d / "trainer.pt")),
         r"trainer\.pt is unreadable"),  # a checkpoint without manifest: the loaders tell
        (lambda d: ((d / MANIFEST_FILE).unlink(), nan_first_weight(d / "model.safetensors")),
         r"non-finite values in "),
    ],
    ids=["truncated-weights", "truncated-trainer", "flipped-weights", "no-manifest-truncated",
         "no-manifest-nan-weights"],
)
def test_resume_falls_back_to_the_newest_intact_checkpoint(
    fixture_data, tmp_path, killed_run, caplog, reference, damage, reason
):
    cfg = reference[0]
    run = killed(cfg, tmp_path / "run", killed_run)
    damage(run.checkpoints / MID_STAGE)
    with caplog.at_level(logging.WARNING, logger="forgetlab.train"):
        record = Trainer(cfg, run.root, progress=False).run()
    assert record["status"] == "finished"
    skipped = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(skipped) == 1 and MID_STAGE in skipped[0]
    assert re.search(reason, skipped[0]), skipped[0]
    assert any(f"resuming from {run.checkpoints / STAGE_END}" in r.getMessage()
               for r in caplog.records)
    assert_same_result(reference, run.root, record)


def test_no_intact_checkpoint_names_every_one_and_what_to_do(
    fixture_data, tmp_path, killed_run, reference
):
    cfg = reference[0]
    run = killed(cfg, tmp_path / "run", killed_run)
    truncate(run.checkpoints / MID_STAGE / "model.safetensors")
    truncate(run.checkpoints / STAGE_END / "trainer.pt")
    with pytest.raises(RunDirError, match=rf"no intact checkpoint in '{run.checkpoints}' "
                       rf"\({MID_STAGE}: model\.safetensors has .*; {STAGE_END}: trainer\.pt has "
                       rf".*\); delete '{run.root}' to run it again from the start"):
        Trainer(cfg, run.root, progress=False).run()


def test_identical_runs_write_byte_identical_checkpoints(fixture_data, tmp_path, reference):
    cfg, ref_out, _ = reference
    Trainer(cfg, tmp_path / "again", progress=False).run()
    for step in (MID_STAGE, "step-00000012"):
        for name in ("model.safetensors", "trainer.pt"):
            a = (RunDir(ref_out).checkpoints / step / name).read_bytes()
            b = (RunDir(tmp_path / "again").checkpoints / step / name).read_bytes()
            assert a == b, f"{step}/{name}"


def test_a_checkpoint_copied_elsewhere_still_resumes(fixture_data, tmp_path, killed_run, reference):
    """The manifest holds names, sizes and hashes only: a moved run directory stays intact."""
    cfg = reference[0]
    killed(cfg, tmp_path / "run", killed_run)
    shutil.copytree(tmp_path / "run", tmp_path / "moved", symlinks=True)
    assert_same_result(reference, tmp_path / "moved",
                       Trainer(cfg, tmp_path / "moved", progress=False).run())
