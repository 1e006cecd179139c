"""``[base_model]``: a base pretrained once, stored content-addressed, shared and resumable.

A run (or every run of a study) that declares ``[base_model]`` starts from a model pretrained on
the declared domains; the base is trained once and reused by every run, study and worker that
declares the same base on the same data. Layout under the data cache (``data.cache_dir``, else
``$FORGETLAB_DATA``, else ``~/.cache/forgetlab``)::

    ROOT/bases/<key>/base.json   what the key hashes (declaration, tokenizer, data fingerprints)
    ROOT/bases/<key>/run/        a forgetlab run directory written by the Trainer

``key`` hashes everything that decides the base's weights and nothing else: the run's model
shape, the tokenizer's sha256, the base's domains, steps, batch, optimiser and schedule, its seed,
precision, and the sha256 of every train and val shard it reads. Where the run trains (device,
threads), where the cache lives, how often it checkpoints and the stream's own ``[train]`` do not
count, so a study that varies the stream's learning rate, seeds or order shares one base, and a
cache whose shards were rebuilt from other text never reuses a base trained on the old ones.

The base is trained like any run (the same Trainer, checkpoints every tenth of its steps), so a
killed base resumes from its last checkpoint. The run directory's writer lock makes one process
train it: a second claimant waits for the lock and then finds it finished
(:func:`train_base`). A finished base is reused only after its final weights hash to the sha256
its checkpoint manifest recorded (:func:`verified_init`): a damaged file is named, never loaded.

The stream runs load the base through ``model.init`` (:func:`start_model`): the run's id holds the
base's declaration (its ``[base_model]`` table), and its ``run.json`` the base's key, path and the
sha256 of the weights it started from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgetlab.atomic import atomic_write_json
from forgetlab.config import (
    ConfigError,
    DataConfig,
    InitConfig,
    ModelConfig,
    RunConfig,
    SourceConfig,
    TrainConfig,
)
from forgetlab.train.rundir import MODEL_FILE, RunDir

log = logging.getLogger("forgetlab.train")

BASES = "bases"
BASE_JSON = "base.json"
BASE_RUN = "run"
KEY_FORMAT = 1
"""Bump when the key's ingredients change meaning: every base is then trained anew."""
CHECKPOINTS = 10
"""A base checkpoints this many times over its steps (and at its end), so a kill loses little."""
WAIT_FOREVER = math.inf
"""How long a second claimant waits for the process that trains the base."""
NOT_WEIGHTS = {
    "name": None,
    "device": None,
    "data": {"cache_dir": None},
    "train": {"threads": None, "checkpoint_every": None, "log_every": None},
}
"""Fields of the base's run config that do not decide its weights (left out of the key)."""


class BaseModelError(ConfigError):
    """A declared base cannot be used (not trained, damaged): names it and what to do."""


def base_run_config(cfg: RunConfig) -> RunConfig:
    """The run config that trains ``cfg``'s base: the run's model shape and tokenizer, the
    ``[base_model]`` table's data, steps, optimiser and schedule, no mechanisms. One domain is
    one stage; several are joint training's mixture, one stage per domain under one schedule."""
    b = cfg.base_model
    if b is None:
        raise ValueError("base_run_config: the config declares no [base_model]")
    from forgetlab.data import data_root

    n = len(b.domains)
    return RunConfig(
        name="base_model",
        seed=b.seed,
        device=cfg.device,
        model=cfg.model.model_copy(update={"preset": None, "init": None}),
        data=DataConfig(
            domains=list(b.domains),  # prepared by ensure_base (with base_sources) beforehand
            tokenizer=cfg.data.tokenizer,
            # one spelling per cache, so every claimant of the base has the same config hash
            cache_dir=str(data_root(cfg.data.cache_dir).resolve()),
        ),
        train=TrainConfig(
            steps_per_stage=b.steps // n,
            joint=b.mixture if n > 1 else None,
            rewarm=n == 1,
            batch_size=b.batch_size,
            grad_accum=b.grad_accum,
            lr=b.lr,
            min_lr=b.min_lr,
            warmup_steps=b.warmup_steps,
            weight_decay=b.weight_decay,
            grad_clip=b.grad_clip,
            precision=cfg.train.precision,
            compile=cfg.train.compile,
            checkpoint_every=max(1, math.ceil(b.steps / CHECKPOINTS)),
        ),
    )


def base_sources(cfg: RunConfig) -> dict[str, SourceConfig]:
    """The run's ``[data.sources]`` of the base's domains: how to prepare them. Not part of the
    base's config: its shards' sha256 (in the key) say what it read, however they were made."""
    domains = cfg.base_model.domains if cfg.base_model else []
    return {d: s for d, s in cfg.data.sources.items() if d in domains}


def data_label(base: RunConfig) -> str:
    """What a base reads, for people: ``books``, or ``books, code (uniform mix)``."""
    joint = base.train.joint
    return ", ".join(base.data.domains) + (f" ({joint} mix)" if joint else "")


def _weights_part(dump: dict[str, Any], drop: dict[str, Any]) -> dict[str, Any]:
    return {
        k: _weights_part(v, drop[k]) if isinstance(drop.get(k), dict) else v
        for k, v in dump.items()
        if k not in drop or isinstance(drop[k], dict)
    }


def declaration(base: RunConfig) -> dict[str, Any]:
    """The part of the base's run config that decides its weights (see :data:`NOT_WEIGHTS`).
    Fields at their default are left out, as in run ids: a forgetlab version that adds a config
    field keeps every base's key."""
    return _weights_part(base.model_dump(mode="json", exclude_defaults=True), NOT_WEIGHTS)


def _digest(doc: dict[str, Any]) -> str:
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def declaration_hash(cfg: RunConfig) -> str:
    """A hash of ``cfg``'s base declaration, known without data: the same for every run that
    declares the same base (what ``plan`` counts a base's cost once by)."""
    return _digest(declaration(base_run_config(cfg)))


def data_fingerprints(base: RunConfig) -> tuple[str, dict[str, dict[str, str]]]:
    """The tokenizer's sha256 and each base domain's train/val shard sha256, from the shard
    manifests (DataError when a domain is not prepared)."""
    from forgetlab.data import DataError, data_root
    from forgetlab.data.paths import shard_dir
    from forgetlab.data.shards import read_manifest
    from forgetlab.data.stream import prepare_command

    tok = base.data.tokenizer
    assert tok is not None, "resolve_run_config fills the tokenizer"
    root = data_root(base.data.cache_dir)
    tokenizers, shards = set(), {}
    for d in base.data.domains:
        manifest = read_manifest(shard_dir(root, tok, d))
        if manifest is None:
            raise DataError(
                f"base_model.domains: '{d}' is not prepared for tokenizer '{tok}' in {root}; run "
                f"`{prepare_command(d, tok)}`"
            )
        tokenizers.add(manifest["tokenizer"]["sha256"])
        shards[d] = {split: info["sha256"] for split, info in sorted(manifest["shards"].items())}
    if len(tokenizers) != 1:
        raise DataError(
            f"base_model.domains {base.data.domains} were tokenized by different '{tok}' "
            f"tokenizers in {root}: prepare them again"
        )
    return tokenizers.pop(), shards


@dataclass(frozen=True)
class BaseModel:
    """One declared base on this machine's cache: its key, where it lives, how it is trained."""

    key: str
    root: Path
    config: RunConfig
    ingredients: dict[str, Any]

    @property
    def run_dir(self) -> RunDir:
        return RunDir(self.root / BASE_RUN)

    @property
    def domains(self) -> list[str]:
        return list(self.config.data.domains)

    def status(self) -> str | None:
        return self.run_dir.status()

    def write_description(self) -> None:
        """``base.json``: what the key hashes, for a reader of the cache (idempotent)."""
        path = self.root / BASE_JSON
        doc = {"key": self.key, **self.ingredients}
        try:
            if json.loads(path.read_text()) == doc:
                return
        except (OSError, ValueError):
            pass
        atomic_write_json(path, doc)

    def record(self, sha256: str | None = None) -> dict[str, Any]:
        """What a run's ``run.json`` and a study's ``experiment.json`` say of the base."""
        train = self.config.train
        steps = train.steps_per_stage * len(self.domains)
        return {
            "key": self.key,
            "path": str(self.run_dir.root),
            "domains": self.domains,
            "mixture": train.joint,
            "data": data_label(self.config),
            "steps": steps,
            "batch_size": train.batch_size,
            "train_tokens": steps * train.batch_size * train.grad_accum
            * self.config.model.block_size,
            "seed": self.config.seed,
            "sha256": sha256 if sha256 is not None else self.recorded_sha256(),
        }

    def final_checkpoint(self) -> Path:
        return self.run_dir.latest.resolve()

    def recorded_sha256(self) -> str | None:
        """The sha256 the final checkpoint's manifest records for the weights (None before the
        base has a checkpoint)."""
        from forgetlab.train.checkpoint import MANIFEST_FILE

        try:
            manifest = json.loads((self.final_checkpoint() / MANIFEST_FILE).read_text())
            return str(manifest["files"][MODEL_FILE]["sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            return None


def locate(cfg: RunConfig) -> BaseModel:
    """``cfg``'s base in this cache (trained or not); its domains' data must be prepared."""
    base = base_run_config(cfg)
    tokenizer_sha, shards = data_fingerprints(base)
    ingredients = {
        "format": KEY_FORMAT,
        "config": declaration(base),
        "tokenizer_sha256": tokenizer_sha,
        "shards": shards,
    }
    key = _digest(ingredients)
    from forgetlab.data import data_root

    return BaseModel(key, data_root(cfg.data.cache_dir) / BASES / key, base, ingredients)


def verified_init(base: BaseModel) -> InitConfig:
    """The ``model.init`` that loads a finished base, after checking its weights still hash to
    the sha256 its checkpoint manifest recorded; :class:`BaseModelError` otherwise."""
    from forgetlab.models.init import content_sha256

    status = base.status()
    if status != "finished":
        raise BaseModelError(
            f"base model {base.key} ({str(base.run_dir.root)!r}) is not trained (status "
            f"{status!r}): run the spec or study that declares it, which trains the base first"
        )
    weights = base.final_checkpoint() / MODEL_FILE
    recorded = base.recorded_sha256()
    if recorded is None:
        raise BaseModelError(
            f"base model {base.key}: its final checkpoint {str(weights.parent)!r} has no readable "
            f"manifest (checkpoint.json) to check the weights against; remove "
            f"{str(base.root)!r} to train the base again"
        )
    actual = content_sha256((weights,)) if weights.is_file() else "missing"
    if actual != recorded:
        raise BaseModelError(
            f"base model {base.key}: {str(weights)!r} does not match the sha256 its checkpoint "
            f"manifest recorded ({actual[:12]} != {recorded[:12]}: corrupt); remove "
            f"{str(base.root)!r} to train the base again"
        )
    return InitConfig(path=str(base.run_dir.root), format="forgetlab", sha256=actual)


def train_base(base: BaseModel, progress: bool = True, lock_wait: float = WAIT_FOREVER) -> bool:
    """Train (or resume) the base in this process unless it is finished; returns whether this
    call trained it. A process that trains it already holds its run directory: this one waits
    ``lock_wait`` seconds for it, then finds the base finished (or resumes what it left)."""
    from forgetlab.train.launch import train_once

    base.root.mkdir(parents=True, exist_ok=True)
    base.write_description()
    holder = base.run_dir.root / ".lock"
    if holder.exists():
        log.info("base model %s: waiting for the process that trains it (%s)", base.key, holder)
    return train_once(base.config, base.run_dir.root, progress, lock_wait)


def ensure_base(cfg: RunConfig, progress: bool = True) -> BaseModel | None:
    """Make ``cfg``'s base ready to start from (prepare its data unless prepared, train it
    unless cached, check its weights); None when ``cfg`` declares no base."""
    if cfg.base_model is None:
        return None
    from forgetlab.data import DataError, prepare

    try:
        base = locate(cfg)
    except DataError:
        base_cfg = base_run_config(cfg)
        assert base_cfg.data.tokenizer is not None
        prepare(
            base_cfg.data.domains,
            base_cfg.data.tokenizer,
            base_cfg.data.cache_dir,
            sources=base_sources(cfg),
            progress=progress,
        )
        base = locate(cfg)
    if train_base(base, progress):
        log.info("base model %s trained into %s", base.key, base.run_dir.root)
    else:
        log.info("base model %s: reusing %s", base.key, base.run_dir.root)
    verified_init(base)
    return base


def start_model(cfg: RunConfig, resume: bool) -> tuple[ModelConfig, dict[str, Any] | None]:
    """The model config a run builds its model from, and its base's record for run.json.

    With ``[base_model]`` the config's ``model.init`` names the verified, finished base (so the
    run loads it through ``model.init``'s checks of shape, tokenizer and sha256); on resume the
    run's own checkpoint is the state and the base is only named.
    """
    if cfg.base_model is None:
        return cfg.model, None
    base = locate(cfg)
    if resume:
        return cfg.model, base.record()
    init = verified_init(base)
    from forgetlab.models.checkpoint import read_model_config

    # the base was built with the tokenizer's vocabulary where the run leaves vocab_size unset
    vocab = read_model_config(base.final_checkpoint() / MODEL_FILE).vocab_size
    start = cfg.model.model_copy(update={"init": init, "vocab_size": vocab})
    return start, base.record(init.sha256)
