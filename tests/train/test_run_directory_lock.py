"""One writer per run directory: a second trainer is refused while a live process holds the
directory, the lock a killed process left is taken over, and the temp files a killed writer left
are removed when the run resumes."""

import json
import logging
import os
import socket

import pytest

from forgetlab.atomic import is_temp
from forgetlab.config import ConfigError
from forgetlab.locks import LOCK_FILE, DirectoryInUse, DirectoryLock, holder
from forgetlab.train import RunDir, Trainer
from micro_run import micro_config


def temps(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if is_temp(p.name))


def test_a_second_writer_is_refused_naming_the_directory_pid_and_host(
    fixture_data, tmp_path, lock_holder
):
    out = tmp_path / "run"
    first = lock_holder(out)
    with pytest.raises(DirectoryInUse) as refused:
        Trainer(micro_config(fixture_data), out, progress=False)
    message = str(refused.value)
    assert repr(str(out)) in message
    assert f"process {first.pid} on this host" in message
    assert holder(out)["host"] == socket.gethostname()
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # the refused one wrote nothing


def test_a_refusal_after_waiting_says_how_long_it_waited(tmp_path, lock_holder):
    first = lock_holder(tmp_path / "run")
    with pytest.raises(DirectoryInUse, match=rf"process {first.pid} .*\(waited 0.3s\)"):
        DirectoryLock(tmp_path / "run", "run directory", wait=0.3).acquire()


def test_a_killed_writers_lock_is_taken_over_and_its_temp_files_removed(
    fixture_data, tmp_path, lock_holder, killed_run, caplog
):
    cfg = micro_config(fixture_data, checkpoint_every=2)
    out = tmp_path / "run"
    killed_run(cfg, out, at=6)  # stage 2 after its first checkpoint
    # what a kill -9 mid-write leaves: a checkpoint's temp folder, an atomic write's temp file,
    # a half-swapped `latest` link, and the lock file of a process that no longer exists
    tmp_ckpt = out / "checkpoints" / ".tmp-step-00000006-4242"
    tmp_ckpt.mkdir()
    (tmp_ckpt / "model.safetensors").write_bytes(b"\0" * 4096)
    (out / ".run.json.k1ll3d.tmp").write_text('{"status": "runn')
    os.symlink("step-00000004", out / "checkpoints" / ".latest.tmp")
    dead = lock_holder(out)
    dead.kill()
    dead.wait()
    assert holder(out)["pid"] == dead.pid  # its record stays, its flock went with it
    assert len(temps(out)) == 3

    with caplog.at_level(logging.INFO):
        record = Trainer(cfg, out, progress=False).run()

    assert record["status"] == "finished"
    assert f"took over the stale lock of process {dead.pid}" in caplog.text
    assert "removed 3 temp file(s) a killed run left" in caplog.text
    assert temps(out) == []
    assert not (out / LOCK_FILE).exists()  # released when the run ended


def test_a_run_killed_before_its_first_record_starts_afresh(fixture_data, tmp_path):
    """Killed while writing its first run.json, a run directory holds only that write's temp file:
    it is not mistaken for a foreign directory."""
    out = tmp_path / "run"
    out.mkdir()
    (out / ".run.json.x7y8z9.tmp").write_text("")
    record = Trainer(micro_config(fixture_data, domains=1), out, progress=False).run()
    assert record["status"] == "finished" and temps(out) == []


def test_a_lock_recorded_by_another_host_is_taken_over_with_a_warning(tmp_path, caplog):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 77, "host": "node-b"}) + "\n")
    with caplog.at_level(logging.WARNING), DirectoryLock(tmp_path, "run directory"):
        assert holder(tmp_path)["pid"] == os.getpid()
    assert "process 77 on host 'node-b'" in caplog.text
    assert "does not share locks between hosts" in caplog.text


def test_a_new_directory_left_empty_by_its_writer_is_removed_with_the_lock(tmp_path):
    out = tmp_path / "new"
    with RunDir(out).lock():
        assert out.is_dir()
    assert not out.exists()
    with RunDir(tmp_path).lock():
        pass
    assert tmp_path.is_dir()  # a directory that existed before stays


def test_a_file_in_place_of_the_directory_is_named(tmp_path):
    (tmp_path / "out").write_text("not a directory")
    with pytest.raises(ConfigError, match=rf"run directory '{tmp_path / 'out'}' is a file"):
        RunDir(tmp_path / "out").lock().acquire()
