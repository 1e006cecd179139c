"""The prepare pipeline: packages or user data -> corpora -> tokenizer -> token shards + manifests.

Three stages, each idempotent (a fingerprint of its inputs is compared with the one on disk) and
atomic (temp files renamed into place, the record written last):

1. corpus per domain: fetch, extract, clean, dedup, split (processes, one per domain);
2. tokenizer: ``gpt2`` is loaded; a ``bpe-<N>`` not yet trained is trained on the union of the
   train splits (stream domains + books for built-ins, the call's domains for user data);
3. shards per domain and split: tokenize and write ids (processes, one task per split).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from forgetlab import __version__
from forgetlab.config import STREAM_DOMAINS, DataConfig, SourceConfig
from forgetlab.data.corpus import build_corpus, current_corpus, read_documents
from forgetlab.data.errors import DataError
from forgetlab.data.fileio import atomic_write_json, remove_stale_temps, sha256_bytes
from forgetlab.data.paths import data_root, shard_dir, tokenizer_dir
from forgetlab.data.shards import SHARD_FORMAT, read_manifest, verify_shard, write_shard
from forgetlab.data.sources import DomainSource, resolve_source
from forgetlab.data.tokenizers import (
    Tokenizer,
    load_tokenizer,
    parse_name,
    train_bpe,
    worker_threads_off,
)

log = logging.getLogger(__name__)

DEFAULT_DOMAINS: tuple[str, ...] = (*STREAM_DOMAINS, "books")
"""What ``prepare(None, ...)`` builds: the five stream domains and books (mmlu on request)."""
BPE_BYTES_PER_DOMAIN = 8 << 20
"""A bpe-* tokenizer sees at most this much train text per domain (the first documents in stored
order): every domain weighs about the same and training takes well under a minute on 2 cores."""
SPLITS = ("train", "val")
SMALL_WORK_BYTES = 16 << 20
"""Below this much text a stage runs in the calling process (see ``pool_size``)."""


def prepare(domains: list[str] | None = None, tokenizer: str = "gpt2",
            cache_dir: str | None = None, sources: dict[str, SourceConfig] | None = None,
            workers: int | None = None, progress: bool = True) -> list[dict]:
    """Build whatever is missing or stale for ``domains`` under ``tokenizer``; return manifests.

    A second call with nothing changed reads the manifests and does no work.
    """
    root = data_root(cache_dir)
    names = list(domains) if domains else list(DEFAULT_DOMAINS)
    parse_name(tokenizer)
    wanted = {n: resolve_source(n, sources) for n in names}
    with cache_lock(root):
        training = bpe_training_set(tokenizer, root, wanted, sources)
        corpora = build_corpora({**wanted, **training}, root, workers, progress)
        tok = ensure_tokenizer(tokenizer, root, training, corpora)
        return build_shards(names, corpora, tok, root, workers, progress)


def prepare_run(data: DataConfig, progress: bool = True) -> list[dict]:
    """Build what a run reads: its stream's domains, then its probes (``data.probes``).

    The probes come second so that a bpe-* tokenizer trained by this call learns from the
    stream's train splits only, never from a probe's text (a probe is never trained on)."""
    assert data.tokenizer is not None, "resolve_run_config fills the tokenizer"
    manifests = prepare(data.domains, data.tokenizer, data.cache_dir, sources=data.sources,
                        progress=progress)
    if data.probes:
        manifests += prepare(data.probes, data.tokenizer, data.cache_dir, sources=data.sources,
                             progress=progress)
    return manifests


@contextmanager
def cache_lock(root: Path) -> Iterator[None]:
    """One prepare at a time per cache (a second one waits, then finds the work done)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".prepare.lock", "a") as handle:
        try:
            import fcntl
        except ImportError:  # no POSIX locks (Windows): run unlocked
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_corpora(needed: dict[str, DomainSource], root: Path, workers: int | None,
                  progress: bool) -> dict[str, dict]:
    """Corpus records of ``needed``; only stale ones are built (in worker processes)."""
    corpora = {n: r for n, s in needed.items() if (r := current_corpus(s, root)) is not None}
    stale = [(s, str(root)) for n, s in needed.items() if n not in corpora]
    size = sum(s.input_bytes() for s, _ in stale)
    for record in run_tasks(corpus_task, stale, pool_size(workers, len(stale), size), progress,
                            "corpora"):
        corpora[record["domain"]] = record
    return corpora


def bpe_training_set(tokenizer: str, root: Path, wanted: dict[str, DomainSource],
                     sources: dict[str, SourceConfig] | None) -> dict[str, DomainSource]:
    """Domains whose train splits train a not-yet-trained bpe-* tokenizer (empty otherwise)."""
    trained = (tokenizer_dir(root, tokenizer) / "tokenizer.json").exists()
    if parse_name(tokenizer) is None or trained:
        return {}
    if any(s.user is not None for s in wanted.values()):
        return {n: s for n, s in wanted.items() if not s.eval_only}
    return {n: resolve_source(n, sources) for n in DEFAULT_DOMAINS}


def ensure_tokenizer(name: str, root: Path, training: dict[str, DomainSource],
                     corpora: dict[str, dict]) -> Tokenizer:
    """Load the tokenizer, training it first when ``training`` says it is missing."""
    if not training:
        return load_tokenizer(name, str(root))
    order = sorted(training)
    log.info("training %s on the train splits of %s", name, ", ".join(order))
    record = {"domains": {d: corpora[d]["fingerprint"] for d in order},
              "bytes_per_domain": BPE_BYTES_PER_DOMAIN, "forgetlab_version": __version__}
    return train_bpe(name, bpe_texts(root, order), root, record)


def bpe_texts(root: Path, domains: list[str]) -> Iterator[str]:
    """Train documents of each domain in order, up to the per-domain byte cap."""
    for domain in domains:
        used = 0
        for doc in read_documents(root, domain, "train"):
            yield doc
            used += len(doc)
            if used >= BPE_BYTES_PER_DOMAIN:
                break


def shard_fingerprint(corpus: dict, tok: Tokenizer) -> str:
    """Hash of the corpus, the tokenizer and the shard format."""
    return sha256_bytes(f"{corpus['fingerprint']}:{tok.name}:{tok.sha256}:{SHARD_FORMAT}".encode())


def current_manifest(folder: Path, fingerprint: str, domain: str) -> dict | None:
    """The manifest if the shards on disk are complete, intact and built from the same inputs."""
    manifest = read_manifest(folder)
    if not manifest or manifest.get("fingerprint") != fingerprint:
        return None
    try:
        for split in SPLITS:
            verify_shard(folder, split, manifest, domain)
    except DataError:
        return None
    return manifest


def build_shards(names: list[str], corpora: dict[str, dict], tok: Tokenizer, root: Path,
                 workers: int | None, progress: bool) -> list[dict]:
    """Tokenize every split whose shards are stale, then commit each domain with its manifest."""
    manifests: dict[str, dict] = {}
    tasks = []
    for name in names:
        folder = shard_dir(root, tok.name, name)
        fingerprint = shard_fingerprint(corpora[name], tok)
        manifest = current_manifest(folder, fingerprint, name)
        if manifest is not None:
            log.info("%s/%s is up to date", tok.name, name)
            manifests[name] = manifest
            continue
        remove_stale_temps(folder)
        tasks += [(name, split, str(root), tok.name) for split in SPLITS]
    tasks.sort(key=lambda t: -corpora[t[0]]["splits"][t[1]]["bytes"])
    size = sum(corpora[t[0]]["splits"][t[1]]["bytes"] for t in tasks)
    try:
        results = run_tasks(shard_task, tasks, pool_size(workers, len(tasks), size), progress,
                            f"tokenize ({tok.name})")
    except BaseException:
        for name in {t[0] for t in tasks}:  # finished temp shards of an aborted run
            remove_stale_temps(shard_dir(root, tok.name, name))
        raise
    for name in names:
        if name not in manifests:
            stats = {r["split"]: r for r in results if r["domain"] == name}
            manifests[name] = commit_shards(name, corpora[name], tok, stats, root)
    return [manifests[n] for n in names]


def commit_shards(name: str, corpus: dict, tok: Tokenizer, stats: dict[str, dict],
                  root: Path) -> dict:
    """Move finished temp shards into place and write the manifest last."""
    folder = shard_dir(root, tok.name, name)
    (folder / "manifest.json").unlink(missing_ok=True)
    shards = {}
    for split in SPLITS:
        info = stats[split]
        os.replace(folder / info["file"], folder / f"{split}.bin")
        shards[split] = {**info, "file": f"{split}.bin"}
    manifest = {
        "format": SHARD_FORMAT, "domain": name, "fingerprint": shard_fingerprint(corpus, tok),
        "corpus_fingerprint": corpus["fingerprint"], "forgetlab_version": __version__,
        "source": corpus["source"], "packages": corpus["source"].get("packages", []),
        "eval_only": corpus["source"].get("eval_only", False),
        "tokenizer": {"name": tok.name, "sha256": tok.sha256, "vocab_size": tok.vocab_size,
                      "eot_id": tok.eot_id},
        "documents": {s: corpus["splits"][s]["documents"] for s in SPLITS},
        "bytes": {s: corpus["splits"][s]["bytes"] for s in SPLITS},
        "tokens": {s: shards[s]["tokens"] for s in SPLITS},
        "dtype": shards["train"]["dtype"], "shards": shards,
    }
    atomic_write_json(folder / "manifest.json", manifest)
    log.info("%s/%s: %d train + %d val tokens", tok.name, name, shards["train"]["tokens"],
             shards["val"]["tokens"])
    return manifest


def corpus_task(source: DomainSource, root: str) -> dict:
    """Worker: build one domain's corpus."""
    return build_corpus(source, Path(root))


_TOKENIZERS: dict[tuple[str, str], Tokenizer] = {}


def shard_task(domain: str, split: str, root: str, tokenizer: str) -> dict:
    """Worker: tokenize one split into a complete temp shard (committed by the parent)."""
    key = (tokenizer, root)
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = load_tokenizer(tokenizer, root)
    folder = shard_dir(Path(root), tokenizer, domain)
    stats = write_shard(folder / f".tmp-next-{split}.bin",
                        read_documents(Path(root), domain, split), _TOKENIZERS[key])
    return {**stats, "domain": domain, "split": split}


def pool_size(workers: int | None, n_tasks: int, work_bytes: int) -> int:
    """Processes to use: as asked, else all cores, except for small work (starting a worker
    costs about a second, more than tokenizing a few MB)."""
    if workers is not None:
        return max(1, min(workers, n_tasks))
    if work_bytes < SMALL_WORK_BYTES:
        return 1
    return max(1, min(os.cpu_count() or 1, n_tasks))


def run_tasks(fn: Callable[..., Any], tasks: list[tuple], workers: int, progress: bool,
              desc: str) -> list[Any]:
    """Run ``fn(*task)`` for every task, in worker processes when more than one is useful.

    Results come back in task order. Workers are spawned (not forked) so that no thread pool of
    the parent (torch, tokenizers) is copied into them.
    """
    if not tasks:
        return []
    n = min(len(tasks), workers)
    bar = tqdm(total=len(tasks), desc=desc, unit="task", disable=None if progress else True)  # None: only on a terminal
    try:
        if n <= 1:
            results = []
            for task in tasks:
                results.append(fn(*task))
                bar.update()
            return results
        with ProcessPoolExecutor(n, mp_context=get_context("spawn"),
                                 initializer=worker_threads_off) as pool:
            futures = {pool.submit(fn, *task): i for i, task in enumerate(tasks)}
            out: list[Any] = [None] * len(tasks)
            for future in as_completed(futures):
                out[futures[future]] = future.result()
                bar.update()
            return out
    finally:
        bar.close()


def iter_manifests(root: Path, tokenizer: str | None = None) -> Iterable[dict]:
    """Every committed manifest under the cache (optionally of one tokenizer), sorted by path."""
    base = root / "shards"
    pattern = f"{tokenizer}/*/manifest.json" if tokenizer else "*/*/manifest.json"
    for path in sorted(base.glob(pattern)):
        manifest = read_manifest(path.parent)
        if manifest:
            yield manifest
