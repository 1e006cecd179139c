"""A full disk ends a run as failed with one message (path, free space), leaves no temp files and
resumes once space is freed."""

import errno
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from test_trainer import micro_config

import forgetlab.train.checkpoint as checkpoint_module
import forgetlab.train.trainer as trainer_module
from forgetlab.atomic import DiskFullError
from forgetlab.train import RunDir, Trainer


@pytest.fixture(scope="module")
def reference(fixture_data, tmp_path_factory):
    cfg = micro_config(fixture_data, domains=2)
    return cfg, Trainer(cfg, tmp_path_factory.mktemp("ref") / "run", progress=False).run()


def leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if ".tmp" in p.name]


def assert_failed_then_resumes(root: Path, cfg, ref, caught: DiskFullError) -> None:
    message = str(caught)
    assert message.startswith("no space left on the device writing ")
    assert "MiB free of" in message and "run the same command again" in message
    assert "\n" not in message and caught.__cause__ is None and caught.__suppress_context__
    assert leftovers(root) == []
    record = json.loads((root / "run.json").read_text())
    assert record["status"] == "failed" and record["failure"]["kind"] == "disk_full"
    assert record["error"] == message
    resumed = Trainer(cfg, root, progress=False).run()
    assert resumed["R"] == ref["R"] and resumed["metrics"] == ref["metrics"]


def test_an_injected_enospc_in_a_checkpoint_write_fails_the_run_cleanly(
    tmp_path, monkeypatch, reference
):
    cfg, ref = reference
    real, calls = checkpoint_module._torch_save, []

    def full_on_the_second_checkpoint(obj, path):
        calls.append(path)
        if len(calls) == 3:  # trainer.pt of the stage-2 checkpoint, half written
            path.write_bytes(b"\0" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(obj, path)

    monkeypatch.setattr(checkpoint_module, "_torch_save", full_on_the_second_checkpoint)
    root = tmp_path / "run"
    with pytest.raises(DiskFullError) as caught:
        Trainer(cfg, root, progress=False).run()
    assert f"writing {RunDir(root).checkpoints / 'step-00000012'} (" in str(caught.value)
    monkeypatch.undo()
    assert_failed_then_resumes(root, cfg, ref, caught.value)


def test_a_run_json_that_cannot_be_marked_failed_says_so(tmp_path, monkeypatch, reference):
    cfg, _ = reference

    def always_full(path, write):
        raise DiskFullError(path)

    monkeypatch.setattr(trainer_module.RunDir, "write_curves", lambda self, rows: always_full(
        self.curves, None))
    real_write = trainer_module.RunDir.write_run_json
    writes = []

    def full_after_the_first(self, data):
        writes.append(data["status"])
        if len(writes) > 1:
            always_full(self.run_json, None)
        real_write(self, data)

    monkeypatch.setattr(trainer_module.RunDir, "write_run_json", full_after_the_first)
    root = tmp_path / "run"
    with pytest.raises(DiskFullError, match=r"writing .*curves\.parquet .*run\.json could not be "
                       r"marked failed either"):
        Trainer(cfg, root, progress=False).run()
    assert json.loads((root / "run.json").read_text())["status"] == "running"
    assert writes == ["running", "failed"]


@pytest.fixture
def small_filesystem(tmp_path):
    """A 32 MiB tmpfs (needs root and mount rights; skipped where it cannot be mounted)."""
    mount = tmp_path / f"fs-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_really_full_filesystem_fails_the_run_and_resumes_after_space_is_freed(
    small_filesystem, monkeypatch, reference
):
    cfg, ref = reference
    ballast = small_filesystem / "ballast"
    real, calls = trainer_module.save_checkpoint, []

    def fill_before_the_second_checkpoint(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # another program fills the disk up to 1 MiB, less than a checkpoint
            left = shutil.disk_usage(small_filesystem).free - 2**20
            with open(ballast, "wb") as f:
                for _ in range(left // 65536):
                    f.write(b"\0" * 65536)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "save_checkpoint", fill_before_the_second_checkpoint)
    root = small_filesystem / "run"
    with pytest.raises(DiskFullError) as caught:
        Trainer(cfg, root, progress=False).run()
    monkeypatch.undo()
    ballast.unlink()
    assert_failed_then_resumes(root, cfg, ref, caught.value)
