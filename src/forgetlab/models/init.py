"""``model.init``: a run that starts from existing weights instead of a random model.

Accepted sources (the loaders ``forgetlab convert`` uses):

- a forgetlab **run directory**: its final checkpoint (``checkpoints/latest``, resolved to the
  immutable ``step-N`` directory); the run must have finished, since an unfinished run's latest
  checkpoint still moves. A base model trained by forgetlab is such a directory;
- a forgetlab **checkpoint** file (``model.safetensors`` with forgetlab metadata, e.g. a run's
  ``checkpoints/step-N/model.safetensors``), or a directory holding one;
- a Hugging Face **GPT-2 directory** (``config.json`` + ``model.safetensors``, a sharded index or
  ``pytorch_model.bin``);
- a nanoGPT **``ckpt.pt``** (or the ``out_dir`` holding it).

Config resolution (:func:`resolve_init`) makes the checkpoint part of the config: every model key
that decides the weights or the forward pass (shape, parts, vocabulary, activation, norm eps...)
comes from the checkpoint, and a spec key (or a preset's) that says otherwise is refused with both
values. The keys that only steer training (:data:`TRAINING_KEYS`: dropout, whether orthogonal Q/K
stay frozen, MoE routing noise, capacity and loss coefficients) stay the spec's. The tokenizer must
be the checkpoint's: its vocabulary always, and its name and sha256 where the source records them
(a forgetlab run's ``run.json``; ``tokenizer_config.json``'s ``forgetlab_tokenizer`` in a forgetlab
Hugging Face export). The content hash of the weights (:func:`content_sha256`) is written into the
config as ``model.init.sha256``, so it joins the run id; a config without ``model.init`` is
unchanged and keeps its id.

The trainer calls :func:`build_run_model`: it checks that the files still hash to the config's
sha256, and loads the weights into the freshly built model, so that row 0 of R scores the loaded
model. On resume it loads nothing from the init: the run's own checkpoint is the state.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from forgetlab.atomic import atomic_write_json
from forgetlab.config import ConfigError, InitConfig, ModelConfig, format_validation_error
from forgetlab.models.checkpoint import (
    is_forgetlab_checkpoint,
    load_model,
    load_state_into,
    read_model_config,
)
from forgetlab.models.errors import ModelLoadError
from forgetlab.models.gpt import GPT, build_model
from forgetlab.models.hf_gpt2 import (
    FORGETLAB_TOKENIZER_KEY,
    hf_config_to_model_config,
    is_hf_gpt2_dir,
    load_hf_gpt2,
)
from forgetlab.models.hf_run import LATEST_MODEL, RUN_JSON
from forgetlab.models.nanogpt import (
    is_nanogpt_checkpoint,
    load_nanogpt,
    nanogpt_config,
    read_torch_file,
)

if TYPE_CHECKING:
    from forgetlab.data import Tokenizer

TRAINING_KEYS = frozenset(
    {
        "dropout",
        "freeze_qk",
        "moe.capacity_factor",
        "moe.overflow",
        "moe.noisy",
        "moe.balance_loss",
        "moe.balance_coef",
        "moe.z_loss_coef",
    }
)
"""Model keys the checkpoint does not decide: they steer training, not the weights' meaning."""
NOT_MODEL_KEYS = frozenset({"preset", "init"})
"""Keys of ``[model]`` that are no part of the checkpoint's shape."""
VOCAB_PADDING = 64
"""A checkpoint's vocabulary may exceed the tokenizer's by fewer unused ids than this (nanoGPT
pads GPT-2's 50257 to 50304 for speed); any other difference is another tokenizer."""
HF_TOKENIZER_CONFIG = "tokenizer_config.json"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class InitSource:
    """What a ``model.init`` path holds, read once: enough to resolve a config and to load."""

    path: str
    format: str
    files: tuple[Path, ...]
    model: ModelConfig
    sha256: str
    tokenizer: str | None = None
    tokenizer_sha256: str | None = None

    @property
    def where(self) -> str:
        return f"model.init = {self.path!r}"

    def load(self) -> GPT:
        """The source model with its weights (eval mode, CPU), by the loader of its format."""
        if self.format == "forgetlab":
            return load_model(self.files[0])
        if self.format == "hf":
            return load_hf_gpt2(self.files[0].parent)
        return load_nanogpt(self.files[0])


# ---------------------------------------------------------------------------- content hashes
DISK_CACHE_BYTES = 64 << 20
"""Files at least this large keep their sha256 in ``<data cache>/init-sha256.json`` across
processes (every run of a study checks its init's hash; a GPT-2 file takes seconds to hash)."""
DISK_CACHE_FILE = "init-sha256.json"
_HASHES: dict[tuple[str, int, int], str] = {}


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _disk_cache() -> Path:
    from forgetlab.data.paths import data_root

    return data_root() / DISK_CACHE_FILE


def _read_disk_cache(cache: Path) -> dict[str, Any]:
    try:
        data = json.loads(cache.read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # absent or torn by a crash: a cache, rebuilt as needed
    return data if isinstance(data, dict) else {}


def file_sha256(path: Path) -> str:
    """sha256 of one file, computed once per file version (path, size, mtime): per process, and
    for files of :data:`DISK_CACHE_BYTES` or more, once per machine."""
    st = path.stat()
    resolved = str(path.resolve())
    key = (resolved, st.st_size, st.st_mtime_ns)
    if key in _HASHES:
        return _HASHES[key]
    version = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    cache = _disk_cache() if st.st_size >= DISK_CACHE_BYTES else None
    entry = _read_disk_cache(cache).get(resolved) if cache else None
    if isinstance(entry, dict) and {k: entry.get(k) for k in version} == version:
        _HASHES[key] = str(entry["sha256"])
        return _HASHES[key]
    _HASHES[key] = _digest(path)
    if cache is not None:
        entries = _read_disk_cache(cache)
        entries[resolved] = {**version, "sha256": _HASHES[key]}
        with contextlib.suppress(OSError):  # a read-only cache costs the next process a re-hash
            atomic_write_json(cache, entries)
    return _HASHES[key]


def content_sha256(files: tuple[Path, ...]) -> str:
    """The content hash of an init: the file's sha256 for one file; for several (a HF directory:
    config.json and its weight shards) the sha256 of their ``name sha256`` lines, sorted."""
    if len(files) == 1:
        return file_sha256(files[0])
    lines = sorted(f"{f.name} {file_sha256(f)}\n" for f in files)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


# ------------------------------------------------------------------------------- locating
def _read_json(path: Path, where: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{where}: {str(path)!r} is not readable JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {str(path)!r} is not a JSON object")
    return data


def _run_tokenizer(record: dict[str, Any]) -> tuple[str | None, str | None]:
    """The tokenizer name and sha256 a forgetlab run.json records."""
    name = record.get("tokenizer") or (record.get("config") or {}).get("data", {}).get("tokenizer")
    return name, record.get("tokenizer_sha256")


def _enclosing_run(checkpoint: Path) -> Path | None:
    """The run directory around ``RUN/checkpoints/step-N/model.safetensors`` or
    ``RUN/model.safetensors``, when there is one."""
    parent = checkpoint.parent
    if parent.parent.name == LATEST_MODEL.parts[0]:
        parent = parent.parent.parent
    return parent if (parent / RUN_JSON).is_file() else None


def _forgetlab_source(path: str, checkpoint: Path, record: dict[str, Any] | None) -> InitSource:
    checkpoint = checkpoint.resolve()  # checkpoints/latest -> the immutable step-N directory
    if record is None:
        run = _enclosing_run(checkpoint)
        record = _read_json(run / RUN_JSON, f"model.init = {path!r}") if run else None
    name, sha = _run_tokenizer(record) if record else (None, None)
    return InitSource(
        path, "forgetlab", (checkpoint,), read_model_config(checkpoint),
        content_sha256((checkpoint,)), name, sha,
    )  # fmt: skip


def _run_dir_source(path: str, root: Path) -> InitSource:
    where = f"model.init = {path!r}"
    record = _read_json(root / RUN_JSON, where)
    status = record.get("status")
    if status != "finished":
        raise ConfigError(
            f"{where} is a forgetlab run that has not finished (status {status!r}): its latest "
            "checkpoint still changes; finish it, or name one checkpoint file "
            "(RUN/checkpoints/step-N/model.safetensors)"
        )
    checkpoint = root / LATEST_MODEL
    if not is_forgetlab_checkpoint(checkpoint):
        raise ConfigError(f"{where}: the finished run has no {str(LATEST_MODEL)!r}")
    return _forgetlab_source(path, checkpoint, record)


def _hf_weight_files(directory: Path) -> list[Path]:
    """The weight files ``read_hf_weights`` reads, in its order of preference."""
    if (directory / "model.safetensors").is_file():
        return [directory / "model.safetensors"]
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(_read_json(index, str(directory))["weight_map"].values()))
        return [index, *(directory / s for s in shards)]
    if (directory / "pytorch_model.bin").is_file():
        return [directory / "pytorch_model.bin"]
    raise ModelLoadError(f"{str(directory)!r} has config.json but no weights")


def _hf_source(path: str, directory: Path) -> InitSource:
    where = f"model.init = {path!r}"
    config = directory / "config.json"
    model = hf_config_to_model_config(_read_json(config, where), repr(str(directory)))
    files = (config, *_hf_weight_files(directory))
    name = sha = None
    tok_config = directory / HF_TOKENIZER_CONFIG
    if tok_config.is_file():
        recorded = _read_json(tok_config, where).get(FORGETLAB_TOKENIZER_KEY) or {}
        name, sha = recorded.get("name"), recorded.get("sha256")
    return InitSource(path, "hf", files, model, content_sha256(files), name, sha)


_NANOGPT_CONFIGS: dict[str, ModelConfig] = {}


def _nanogpt_source(path: str, file: Path) -> InitSource:
    sha = content_sha256((file,))
    if sha not in _NANOGPT_CONFIGS:  # reading model_args means reading the whole pickle
        obj = read_torch_file(file)
        if not is_nanogpt_checkpoint(obj):
            raise ModelLoadError(f"{str(file)!r} is a torch file without nanoGPT's model_args")
        _NANOGPT_CONFIGS[sha] = nanogpt_config(obj["model_args"])
    return InitSource(path, "nanogpt", (file,), _NANOGPT_CONFIGS[sha], sha)


def _locate(path: str) -> InitSource:
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / RUN_JSON).is_file():
            return _run_dir_source(path, p)
        if is_forgetlab_checkpoint(p / "model.safetensors"):
            return _forgetlab_source(path, p / "model.safetensors", None)
        if is_hf_gpt2_dir(p):
            return _hf_source(path, p)
        if (p / "ckpt.pt").is_file():
            return _nanogpt_source(path, p / "ckpt.pt")
        raise ConfigError(
            f"model.init = {path!r} is a directory holding no forgetlab run (run.json), "
            "checkpoint (model.safetensors), Hugging Face GPT-2 (config.json) or nanoGPT ckpt.pt"
        )
    if p.is_file():
        if p.suffix == ".safetensors" and is_forgetlab_checkpoint(p):
            return _forgetlab_source(path, p, None)
        if p.name in ("model.safetensors", "pytorch_model.bin") and is_hf_gpt2_dir(p.parent):
            return _hf_source(path, p.parent)
        return _nanogpt_source(path, p)
    raise ConfigError(f"model.init = {path!r}: no such file or directory")


def read_init(path: str) -> InitSource:
    """Read what ``path`` holds; every failure is a one-line ConfigError naming ``model.init``."""
    try:
        return _locate(path)
    except ModelLoadError as e:
        raise ConfigError(f"model.init = {path!r}: {e}") from None


# ------------------------------------------------------------------------------ resolution
def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def determined_keys(model: ModelConfig) -> dict[str, Any]:
    """The flattened model keys a checkpoint decides, with its values."""
    flat = _flatten(model.model_dump(mode="json"))
    return {
        k: v
        for k, v in flat.items()
        if k not in TRAINING_KEYS and k.split(".")[0] not in NOT_MODEL_KEYS
    }


def check_shape(
    source: InitSource, given: dict[str, Any], origins: dict[str, str] | None = None
) -> None:
    """Refuse the first model key in ``given`` (flattened) that contradicts the checkpoint."""
    determined = determined_keys(source.model)
    for key, value in given.items():
        if key in determined and value != determined[key]:
            origin = (origins or {}).get(f"model.{key}")
            raise ConfigError(
                f"model.{key} = {value!r}{f' (from {origin})' if origin else ''} contradicts "
                f"{source.where}, whose checkpoint has {key} = {determined[key]!r}; the "
                "checkpoint sets the model's shape: drop the key"
            )


def check_tokenizer(
    source: InitSource,
    name: str,
    vocab_size: int,
    sha256: str | None,
    origin: str | None = None,
) -> None:
    """Refuse a tokenizer that is not the checkpoint's: another recorded name or sha256, or a
    vocabulary the checkpoint's embedding does not match (equal, or padded by < 64 ids)."""
    named = f"data.tokenizer = {name!r}{f' (from {origin})' if origin else ''}"
    if source.tokenizer is not None and name != source.tokenizer:
        raise ConfigError(
            f"{named} is not the tokenizer of {source.where}, which was trained with "
            f"{source.tokenizer!r}; set data.tokenizer = {source.tokenizer!r}"
        )
    ckpt_vocab = source.model.vocab_size
    if ckpt_vocab is None or not vocab_size <= ckpt_vocab < vocab_size + VOCAB_PADDING:
        raise ConfigError(
            f"{named} has {vocab_size} tokens but {source.where} has a vocabulary of "
            f"{ckpt_vocab}: they do not belong together (allowed: equal, or the checkpoint "
            f"padded by fewer than {VOCAB_PADDING} ids)"
        )
    if sha256 is not None and source.tokenizer_sha256 not in (None, sha256):
        raise ConfigError(
            f"{named} has sha256 {sha256} but {source.where} was trained with a tokenizer of "
            f"sha256 {source.tokenizer_sha256}: the same name, other merges; use the data cache "
            "that holds the checkpoint's tokenizer (data.cache_dir)"
        )


def _known_tokenizer(name: str, cache_dir: str | None) -> tuple[int, str | None]:
    """Vocabulary size and sha256 of tokenizer ``name`` as far as known without downloading or
    training: a trained bpe-* from the cache; else the size its name gives (sha256 unknown)."""
    from forgetlab.data import DataError
    from forgetlab.data.paths import data_root, tokenizer_dir
    from forgetlab.data.tokenizers import ByteBpeTokenizer, parse_name

    try:
        size = parse_name(name)
        if size is None:
            return 50257, None  # gpt2; its sha256 is checked when the run loads it
        path = tokenizer_dir(data_root(cache_dir), name) / "tokenizer.json"
        if path.is_file():
            tok = ByteBpeTokenizer(name, path)
            return tok.vocab_size, tok.sha256
        return size, None
    except DataError as e:
        raise ConfigError(f"data.tokenizer = {name!r}: {e}") from None


def resolve_init(
    model: dict[str, Any], data: dict[str, Any], origins: dict[str, str] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``[model]`` and ``[data]`` tables of a spec with ``model.init`` made concrete.

    ``model`` and ``data`` are the spec's tables after presets and overrides; ``origins`` names
    where a key came from when not from the spec itself (``{"model.n_layer": "preset 'tiny'"}``).
    Returns new tables: the checkpoint's shape keys, the spec's training keys, ``init`` with its
    format and sha256, and ``data.tokenizer`` defaulting to the checkpoint's recorded one.
    """
    try:
        init = InitConfig.model_validate(model["init"])
    except ValidationError as e:
        raise ConfigError(
            format_validation_error(e, InitConfig, "invalid model.init", at=("model", "init"))
        ) from None
    source = read_init(init.path)
    if init.format is not None and init.format != source.format:
        raise ConfigError(
            f"model.init.format = {init.format!r} but {init.path!r} holds a {source.format!r} "
            "checkpoint"
        )
    if init.sha256 is not None and init.sha256 != source.sha256:
        raise ConfigError(
            f"model.init.sha256 = {init.sha256!r} pins other weights: {source.where} now hashes "
            f"to {source.sha256!r}"
        )
    given = _flatten({k: v for k, v in model.items() if k not in NOT_MODEL_KEYS})
    check_shape(source, given, origins)
    resolved = _nest({**determined_keys(source.model), **given})
    if model.get("preset") is not None:
        resolved["preset"] = model["preset"]
    resolved["init"] = {"path": init.path, "format": source.format, "sha256": source.sha256}

    data = dict(data)
    name = data.get("tokenizer") or source.tokenizer
    if name is None:
        raise ConfigError(
            f"{source.where} records no tokenizer: set data.tokenizer to the one it was trained "
            f"with (its vocabulary has {source.model.vocab_size} ids)"
        )
    data["tokenizer"] = name
    vocab, sha = _known_tokenizer(name, data.get("cache_dir"))
    check_tokenizer(source, name, vocab, sha, (origins or {}).get("data.tokenizer"))
    return resolved, data


# -------------------------------------------------------------------------------- the run
def run_vocab_size(configured: int | None, tokenizer: Tokenizer) -> int | None:
    """The vocabulary a run's model is built with: the tokenizer's, unless ``model.vocab_size``
    (``configured``) pads it (e.g. 50304 for GPU efficiency), then None (the config's own)."""
    if configured is None:
        return tokenizer.vocab_size
    if configured < tokenizer.vocab_size:
        raise ConfigError(
            f"model.vocab_size = {configured} is smaller than the {tokenizer.name} "
            f"tokenizer's {tokenizer.vocab_size} tokens"
        )
    return None


def build_run_model(
    cfg: ModelConfig, vocab_size: int | None, tokenizer: Tokenizer, load_init: bool = True
) -> GPT:
    """The model a run starts with: :func:`build_model`, then, with ``model.init`` and unless
    resuming (``load_init=False``), the init's weights, after checking they are still the ones
    the config names (sha256), fit the config's shape and go with ``tokenizer``."""
    model = build_model(cfg, vocab_size)
    if cfg.init is None or not load_init:
        return model
    if cfg.init.sha256 is None:
        raise ConfigError(
            f"model.init = {cfg.init.path!r} has no sha256: build the config with "
            "resolve_run_config, which reads the checkpoint"
        )
    source = read_init(cfg.init.path)
    if source.sha256 != cfg.init.sha256:
        raise ConfigError(
            f"{source.where} changed after the config was resolved: its weights hash to "
            f"{source.sha256}, the run's config names {cfg.init.sha256}; resolve the spec again "
            "(a new run id)"
        )
    check_shape(source, _flatten(cfg.model_dump(mode="json")))
    check_tokenizer(source, tokenizer.name, tokenizer.vocab_size, tokenizer.sha256)
    try:
        return load_state_into(model, source.load().state_dict(), source.where)
    except ModelLoadError as e:
        raise ConfigError(str(e)) from None
