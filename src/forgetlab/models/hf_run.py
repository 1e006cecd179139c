"""A run exports itself: ``forgetlab convert RUN_DIR DST --to hf``.

The run directory knows everything an export needs: the final checkpoint
(``checkpoints/latest``), the tokenizer it trained with (``run.json``'s ``tokenizer`` and data
cache) and what it measured. :func:`export_run` writes the Hugging Face directory with the
tokenizer files and a model card (:func:`model_card`) holding the run's config, data and R
summary, so the model can be shared and read without forgetlab.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from forgetlab.config import ModelConfig
from forgetlab.models.checkpoint import load_model
from forgetlab.models.errors import ModelExportError
from forgetlab.models.hf_gpt2 import export_hf

RUN_JSON = "run.json"
LATEST_MODEL = Path("checkpoints") / "latest" / "model.safetensors"
CARD_METRICS = ("ACC", "BWT", "FWT", "average_forgetting", "plasticity")
CARD_KINDS = ("loss", "bpb", "accuracy")


def read_run_record(run_dir: Path) -> dict[str, Any] | None:
    """The run.json of ``run_dir``, or None when it has none (read by the one run-record reader)."""
    from forgetlab.train.rundir import RunDir, RunDirError

    try:
        return RunDir(run_dir).read()
    except RunDirError as e:
        raise ModelExportError(str(e)) from None


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and (path / RUN_JSON).is_file()


def load_export_tokenizer(name: str, cache_dir: str | None, source: str) -> Any:
    """``load_tokenizer`` for an export: a missing tokenizer is a ModelExportError with a hint."""
    from forgetlab.data import DataError, load_tokenizer

    try:
        return load_tokenizer(name, cache_dir)
    except DataError as e:
        raise ModelExportError(
            f"{source}: cannot load the tokenizer {name!r} ({e}); pass the data cache that "
            "holds it with --cache-dir"
        ) from None


def run_tokenizer(
    record: dict[str, Any], cache_dir: str | None, source: str, name: str | None = None
) -> Any:
    """The tokenizer the run trained with (or ``name``), from ``cache_dir`` or the run's cache."""
    name = name or record.get("tokenizer")
    name = name or (record.get("config") or {}).get("data", {}).get("tokenizer")
    if not name:
        raise ModelExportError(f"{source}: run.json names no tokenizer")
    cache = cache_dir or (record.get("config") or {}).get("data", {}).get("cache_dir")
    return load_export_tokenizer(name, cache, source)


def export_run(
    run_dir: str | Path,
    out_dir: str | Path,
    cache_dir: str | None = None,
    tokenizer: str | None = None,
) -> Path:
    """Export a run's final (latest) checkpoint with its tokenizer and a model card.

    ``tokenizer`` overrides the run's own (by name); ``cache_dir`` is the data cache holding it
    when it is not where the run found it (a run trained on another machine)."""
    run_dir = Path(run_dir)
    source = repr(str(run_dir))
    record = read_run_record(run_dir)
    if record is None:
        raise ModelExportError(f"{source} holds no {RUN_JSON}: not a forgetlab run directory")
    if not (run_dir / LATEST_MODEL).is_file():
        raise ModelExportError(f"{source} has no checkpoint ({LATEST_MODEL}) to export")
    model = load_model(run_dir / LATEST_MODEL)
    tok = run_tokenizer(record, cache_dir, source, tokenizer)
    step = (run_dir / LATEST_MODEL).parent.resolve().name
    manifests = domain_manifests(record, cache_dir)
    card = model_card(record, step, model.config, manifests, tok.vocab_size)
    return export_hf(model, out_dir, tokenizer=tok, card=card)


def _num(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def _r_summary(record: dict[str, Any]) -> list[str]:
    """Per domain: loss right after its own stage, final loss / bpb / accuracy, unigram loss."""
    domains, R = record.get("domains") or [], record.get("R") or {}
    if len(R.get("loss", [])) != len(domains) + 1:
        done = max(0, len(R.get("loss", [])) - 1)
        return [f"The run evaluated {done} of {len(domains)} stages; no final R summary."]
    unigram = (record.get("unigram") or {}).get("loss") or [None] * len(domains)
    rows = [
        [
            d,
            _num(R["loss"][j + 1][j]),
            _num(R["loss"][-1][j]),
            _num(R["bpb"][-1][j]) if "bpb" in R else "—",
            _num(R["accuracy"][-1][j]) if "accuracy" in R else "—",
            _num(unigram[j]),
        ]
        for j, d in enumerate(domains)
    ]
    header = ["domain", "loss after its stage", "final loss", "final bpb", "final accuracy",
              "unigram loss"]  # fmt: skip
    lines = [
        "Validation scores on fixed windows of each domain (loss in nats/token; forgetting = the",
        "final loss above the loss right after the domain's own stage):",
        "",
        *_table(header, rows),
    ]
    metrics = record.get("metrics") or {}
    kinds = [k for k in CARD_KINDS if k in metrics]
    if kinds:
        lines += [
            "",
            "Continual-learning metrics (scores higher-is-better, loss negated; "
            "forgetting > 0 = lost):",
            "",
            *_table(
                ["metric", *kinds],
                [[m, *(_num(metrics[k].get(m)) for k in kinds)] for m in CARD_METRICS],
            ),
        ]
    return lines


def domain_manifests(record: dict[str, Any], cache_dir: str | None) -> dict[str, dict | None]:
    """Each domain's shard manifest under the run's tokenizer (what produced its data), or None
    where the cache no longer holds it."""
    from forgetlab.data.paths import data_root, shard_dir
    from forgetlab.data.shards import read_manifest

    cache = cache_dir or (record.get("config") or {}).get("data", {}).get("cache_dir")
    root, tok = data_root(cache), str(record.get("tokenizer"))
    return {d: read_manifest(shard_dir(root, tok, d)) for d in record.get("domains") or []}


def _source_text(domain: str, manifest: dict | None, config_source: dict | None) -> str:
    """One line on where a domain's text came from: the manifest's record, else the config."""
    if manifest is None:
        if config_source:
            origin = config_source.get("files") or config_source.get("hf_dataset")
            return f"`{domain}`: user source {json.dumps(origin)}"
        return f"`{domain}`: forgetlab's built-in recipe (its manifest is not in this cache)"
    src = manifest.get("source") or {}
    if src.get("kind") == "user":
        cfg = src.get("config") or {}
        origin = cfg.get("files") or cfg.get("hf_dataset")
        text = f"`{domain}`: user source {json.dumps(origin)}"
    else:
        pkgs = ", ".join(f"{p.get('name')}=={p.get('version')}" for p in manifest.get("packages") or [])
        text = f"`{domain}`: {src.get('description') or 'built-in recipe'} (pinned: {pkgs})"
    docs, tokens = manifest.get("documents") or {}, manifest.get("tokens") or {}
    return (
        f"{text}; {docs.get('train', 0):,} train / {docs.get('val', 0):,} validation documents, "
        f"{tokens.get('train', 0):,} / {tokens.get('val', 0):,} tokens"
    )


def _data_section(
    record: dict[str, Any], manifests: dict[str, dict | None], tokenizer_vocab: int | None
) -> list[str]:
    cfg = record.get("config") or {}
    data, train = cfg.get("data") or {}, cfg.get("train") or {}
    sources = data.get("sources") or {}
    lines = [
        f"- domains, in training order: {' → '.join(record.get('domains') or [])}",
        f"- tokenizer: `{record.get('tokenizer')}`"
        + (f" ({tokenizer_vocab:,} tokens)" if tokenizer_vocab else ""),
        *(
            f"- {_source_text(d, manifests.get(d), sources.get(d))}"
            for d in record.get("domains") or []
        ),
    ]
    tokens = (record.get("tokens") or {}).get("train_per_stage")
    if tokens:
        lines.append(
            f"- training: {train.get('steps_per_stage')} optimizer steps per stage, "
            f"{', '.join(f'{int(t):,}' for t in tokens)} tokens per stage"
        )
    return lines


def model_card(
    record: dict[str, Any],
    step: str,
    model: ModelConfig,
    manifests: dict[str, dict | None] | None = None,
    tokenizer_vocab: int | None = None,
) -> str:
    """The export's ``README.md``: what the model is, how to load it, the run's data, its R
    summary and metrics, its full config and where it came from."""
    cfg = record.get("config") or {}
    env = record.get("env") or {}
    name = record.get("name") or "forgetlab run"
    status = record.get("status")
    mechanisms = [m.get("name") for m in cfg.get("mechanisms") or []]
    params = (record.get("parameters") or {}).get("total")
    arch = [
        ["layers", "heads", "width", "d_ff", "context", "vocabulary", "parameters"],
        [
            str(model.n_layer), str(model.n_head), str(model.n_embd), str(model.ffn_hidden),
            str(model.block_size), str(model.vocab_size), f"{params:,}" if params else "—",
        ],
    ]  # fmt: skip
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [forgetlab, continual-learning, gpt2]",
        "---",
        "",
        f"# {name}",
        "",
        "A GPT-2-architecture language model trained by [forgetlab](https://pypi.org/project/"
        "forgetlab/) through a stream of text domains, one stage per domain (continual "
        f"learning). Exported from checkpoint `{step}` of a run whose status is `{status}`.",
    ]
    if status != "finished":
        lines.append("**The run had not finished: these weights are not its final model.**")
    if mechanisms:
        lines.append(
            f"Continual-learning mechanisms during training: {', '.join(map(str, mechanisms))}. "
            "The export holds the model's weights only; state a mechanism keeps beside them "
            "(LoRA adapters, PackNet masks) is not part of it."
        )
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        'generate = pipeline("text-generation", model="PATH/TO/THIS/DIRECTORY")',
        'print(generate("def main(", max_new_tokens=40, do_sample=False)[0]["generated_text"])',
        "```",
        "",
        "The tokenizer is byte-level BPE with `<|endoftext|>` as bos, eos and unk (as GPT-2). "
        "forgetlab itself reads that string inside a text as plain text; the Hugging Face "
        "tokenizer maps it to the special token.",
        "",
        "## Model",
        "",
        *_table(arch[0], [arch[1]]),
        "",
        "## Data",
        "",
        *_data_section(record, manifests or {}, tokenizer_vocab),
        "",
        "## Results",
        "",
        *_r_summary(record),
        "",
        "## Training config",
        "",
        "```json",
        json.dumps(cfg, indent=2),
        "```",
        "",
        "## Provenance",
        "",
        f"- config hash `{record.get('config_hash')}`, started {record.get('started')}, "
        f"updated {record.get('updated')}",
        f"- forgetlab {env.get('forgetlab')}, torch {env.get('torch')}, "
        f"git {((env.get('git') or {}).get('commit')) or '—'}",
        f"- precision {record.get('precision')}, device {env.get('device')}",
        "",
    ]
    return "\n".join(lines)
