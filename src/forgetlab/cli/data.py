"""``forgetlab data``: prepare domain corpora and token shards, list them, read samples."""

from __future__ import annotations

import json
import logging
import time
from typing import Annotated

import numpy as np
import typer
from pydantic import ValidationError
from rich.table import Table

from forgetlab.analysis.tables import Column, rich_table
from forgetlab.cli.console import make_console
from forgetlab.cli.errors import user_errors
from forgetlab.config import ConfigError, SourceConfig, format_validation_error
from forgetlab.data import BUILTIN_DOMAINS, DataError, data_root, open_stream, prepare
from forgetlab.data.paths import prepared_tokenizers
from forgetlab.data.pipeline import iter_manifests

app = typer.Typer(help="Domain corpora and token shards, built offline from pinned packages.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
console = make_console()

CacheOpt = Annotated[str | None, typer.Option("--cache-dir", help="default: $FORGETLAB_DATA "
                                              "or ~/.cache/forgetlab")]


def split_names(values: list[str] | None) -> list[str] | None:
    """``--domains a,b --domains c`` -> [a, b, c]."""
    if not values:
        return None
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


def parse_sources(files: list[str] | None, datasets: list[str] | None,
                  val_fraction: float | None = None) -> dict[str, SourceConfig]:
    """``NAME=GLOB`` and ``NAME=DATASET`` options as SourceConfigs."""
    sources: dict[str, SourceConfig] = {}
    for spec, key in [(s, "files") for s in files or []] + [(s, "hf") for s in datasets or []]:
        name, sep, value = spec.partition("=")
        if not sep or not name or not value:
            raise DataError(f"'{spec}' is not NAME=VALUE (e.g. --files notes=~/notes/*.txt)")
        try:
            if key == "files":
                sources.setdefault(name, SourceConfig(files=[], val_fraction=val_fraction))
                sources[name].files = [*(sources[name].files or []), value]
            else:
                sources[name] = SourceConfig(hf_dataset=value, val_fraction=val_fraction)
        except ValidationError as e:
            raise ConfigError(format_validation_error(e, SourceConfig, f"source {name!r}")) from None
    return sources


@app.command("prepare")
@user_errors()
def prepare_cmd(
    domains: Annotated[list[str] | None, typer.Option(
        "--domains", "-d", help="comma-separated; default: code,math,medical,legal,dialogue,books"
    )] = None,
    tokenizer: Annotated[str, typer.Option(help="gpt2 or bpe-<N> (bpe-2k, bpe-6400)")] = "gpt2",
    files: Annotated[list[str] | None, typer.Option(
        "--files", help="user domain from local files: NAME=GLOB (.txt / .jsonl)")] = None,
    dataset: Annotated[list[str] | None, typer.Option(
        "--dataset", help="user domain from a datasets name or saved dir: NAME=DATASET")] = None,
    val_fraction: Annotated[float | None, typer.Option(
        help="validation share of --files/--dataset domains (default 0.05)")] = None,
    workers: Annotated[int | None, typer.Option(help="processes; default: all cores")] = None,
    cache_dir: CacheOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """Fetch, clean, split and tokenize domains (idempotent: unchanged domains are skipped)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("forgetlab.data").setLevel(logging.WARNING if quiet else logging.INFO)
    start = time.perf_counter()
    sources = parse_sources(files, dataset, val_fraction)
    names = split_names(domains) or (list(sources) if sources else None)
    manifests = prepare(names, tokenizer, cache_dir, sources=sources, workers=workers,
                        progress=not quiet)
    console.print(info_table(manifests))
    console.print(f"prepared {len(manifests)} domain(s) in {time.perf_counter() - start:.1f} s "
                  f"under {data_root(cache_dir)}")


def info_rows(manifests: list[dict]) -> list[dict]:
    """One summary per prepared domain and tokenizer (what ``info --json`` prints)."""
    rows = []
    for m in manifests:
        source = m["source"]
        if source.get("kind") == "builtin":
            names = [f"{p['name']}=={p['version']}" for p in source.get("packages", [])]
        else:
            names = [f"user:{i.get('path', i.get('dataset'))}" for i in source.get("inputs", [])]
        rows.append({
            "domain": m["domain"], "tokenizer": m["tokenizer"]["name"],
            "sources": names, "documents": m["documents"]["train"] + m["documents"]["val"],
            "mb": round((m["bytes"]["train"] + m["bytes"]["val"]) / 1e6, 2),
            "train_tokens": m["tokens"]["train"], "val_tokens": m["tokens"]["val"],
            "eval_only": m.get("eval_only", False),
        })
    return rows


INFO_COLUMNS: list[Column[dict]] = [
    Column("domain", lambda r: r["domain"] + (" (eval)" if r["eval_only"] else "")),
    Column("tokenizer", lambda r: r["tokenizer"]),
    Column("sources", lambda r: ", ".join(r["sources"][:3]) + (" ..." if len(r["sources"]) > 3
                                                              else "")),
    Column("documents", lambda r: f"{r['documents']:,}"),
    Column("MB", lambda r: f"{r['mb']:.1f}"),
    Column("train tokens", lambda r: f"{r['train_tokens']:,}"),
    Column("val tokens", lambda r: f"{r['val_tokens']:,}"),
]


def info_table(manifests: list[dict]) -> Table:
    """The rich table of ``info_rows``."""
    return rich_table(INFO_COLUMNS, info_rows(manifests))


@app.command("info")
@user_errors()
def info_cmd(
    tokenizer: Annotated[str | None, typer.Option(help="only this tokenizer")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON list")] = False,
    cache_dir: CacheOpt = None,
) -> None:
    """What is prepared: domain, sources, documents, MB, train/val tokens."""
    order = {name: i for i, name in enumerate(BUILTIN_DOMAINS)}
    manifests = sorted(iter_manifests(data_root(cache_dir), tokenizer), key=lambda m: (
        m["tokenizer"]["name"], order.get(m["domain"], len(order)), m["domain"]))
    if as_json:
        typer.echo(json.dumps(info_rows(manifests), indent=2))
    elif not manifests:
        console.print(f"nothing prepared under {data_root(cache_dir)}; run `forgetlab data "
                      f"prepare`.")
    else:
        console.print(info_table(manifests))


@app.command("sample")
@user_errors()
def sample_cmd(
    domain: Annotated[str, typer.Argument(help="a prepared domain")],
    tokenizer: Annotated[
        str | None, typer.Option(help="tokenizer of the shards; default: the one it is prepared with")
    ] = None,
    n: Annotated[int, typer.Option("-n", help="how many snippets")] = 3,
    chars: Annotated[int, typer.Option(help="characters per snippet")] = 400,
    split: Annotated[str, typer.Option(help="train or val")] = "train",
    seed: Annotated[int, typer.Option(help="which documents")] = 0,
    cache_dir: CacheOpt = None,
) -> None:
    """Decode a few documents from a shard, to see exactly what the model will read."""
    stream = open_stream([domain], tokenizer or sample_tokenizer(domain, cache_dir), cache_dir)
    tokens = getattr(stream[domain], split)
    if len(tokens) == 0 and split == "train":  # an evaluation-only domain has only val
        split, tokens = "val", stream[domain].val
    for i, text in enumerate(sample_documents(tokens, stream.tokenizer, n, chars, seed)):
        console.rule(f"{domain} / {split} / sample {i + 1}")
        console.print(text, markup=False, highlight=False)


def sample_tokenizer(domain: str, cache_dir: str | None) -> str:
    """The tokenizer ``domain`` is prepared with: gpt2 if it is among them (or none is), else the
    first prepared one, so ``data sample DOMAIN`` works after ``make data`` (bpe-2k only)."""
    prepared = prepared_tokenizers(data_root(cache_dir), domain)
    return "gpt2" if not prepared or "gpt2" in prepared else prepared[0]


def sample_documents(tokens: np.ndarray, tokenizer, n: int, chars: int, seed: int) -> list[str]:
    """The starts of ``n`` documents chosen by ``seed`` (documents end at the end-of-text id)."""
    ends = np.flatnonzero(np.asarray(tokens) == tokenizer.eot_id)
    starts = np.concatenate([[0], ends[:-1] + 1]) if len(ends) else np.array([0])
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(len(starts), size=min(n, len(starts)), replace=False))
    out = []
    for p in picks:
        stop = ends[p] if p < len(ends) else len(tokens)
        ids = np.asarray(tokens[starts[p]:min(stop, starts[p] + 4 * chars)]).tolist()
        text = tokenizer.decode(ids)
        out.append(text[:chars] + (" ..." if len(text) > chars else ""))
    return out
