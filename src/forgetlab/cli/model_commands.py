"""``forgetlab inspect``, ``forgetlab diagnose`` and ``forgetlab convert``: the model layer's commands.

:func:`register` adds them to the main Typer app. Every error prints one line and exits with 2.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import typer
from rich.console import Console
from rich.table import Table

from forgetlab.analysis.tables import Column, rich_table
from forgetlab.cli.errors import user_errors
from forgetlab.config import PRESETS, STREAM_DOMAINS, ConfigError, RunConfig, resolve_run_config
from forgetlab.models import (
    GPT,
    ModelLoadError,
    build_model,
    convert,
    from_pretrained,
    inspect_model,
    model_flops_per_token,
)
from forgetlab.models.diagnose import diagnose

_GPT2_VOCAB = 50257
_BPE_NAME = re.compile(r"^bpe-(\d+)(k?)$")


def tokenizer_vocab_size(tokenizer: str) -> int:
    """Vocabulary implied by a tokenizer name: gpt2 -> 50257, bpe-2k -> 2048, bpe-6400 -> 6400."""
    if tokenizer == "gpt2":
        return _GPT2_VOCAB
    match = _BPE_NAME.match(tokenizer)
    if match is None:
        raise ConfigError(
            f"data.tokenizer = {tokenizer!r}: cannot infer its vocabulary size "
            "(known: 'gpt2', 'bpe-<N>', 'bpe-<N>k'); pass --vocab-size"
        )
    return int(match.group(1)) * (1024 if match.group(2) else 1)


def run_for_target(target: str, overrides: list[str]) -> RunConfig | None:
    """The run config of a preset target (with ``--set`` overrides); None for a path."""
    if target not in PRESETS:
        return None
    return resolve_run_config({"model": {"preset": target}}, overrides)


def model_for_target(target: str, vocab_size: int | None, overrides: list[str]) -> GPT:
    """A preset name builds a fresh model (with ``--set`` overrides); anything else is a path."""
    run = run_for_target(target, overrides)
    if run is not None:
        if vocab_size is None and run.model.vocab_size is None:
            vocab_size = tokenizer_vocab_size(run.data.tokenizer or PRESETS[target].tokenizer)
        return build_model(run.model, vocab_size)
    if overrides or vocab_size is not None:
        raise ConfigError("--set and --vocab-size apply to presets only, not to checkpoints")
    if not Path(target).exists():
        raise ModelLoadError(
            f"{target!r} is neither a preset (allowed: {sorted(PRESETS)}) nor an existing path"
        )
    return from_pretrained(target)


COUNTS = ("trainable", "frozen", "buffers")
MODULE_COLUMNS: list[Column[dict[str, Any]]] = [
    Column("module", lambda row: row["name"]),
    *[Column(c, lambda row, c=c: f"{row[c]:,}", justify="right") for c in COUNTS],
]
PARAMETER_COLUMNS: list[Column[dict[str, Any]]] = [
    Column("name", lambda p: p["name"]),
    Column("shape", lambda p: tuple(p["shape"])),
    Column("requires_grad", lambda p: p["requires_grad"]),
]
BUFFER_COLUMNS: list[Column[dict[str, Any]]] = [
    Column("name", lambda b: b["name"]),
    Column("shape", lambda b: tuple(b["shape"])),
    Column("dtype", lambda b: b["dtype"]),
]


def parameter_table(report: dict[str, Any], title: str) -> Table:
    """Trainable / frozen / buffer counts per module, and their totals."""
    table = rich_table(MODULE_COLUMNS, report["modules"], title=title)
    table.add_section()
    totals = (f"{report[c]:,}" for c in ("trainable", "frozen", "buffers"))
    table.add_row(f"total {report['total']:,}", *totals, style="bold")
    return table


def inspect_command(
    target: Annotated[str, typer.Argument(metavar="PRESET_OR_CKPT", help="preset or path")],
    vocab_size: Annotated[int | None, typer.Option("--vocab-size", help="preset vocab")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="config override, e.g. model.n_layer=3")
    ] = None,
) -> None:
    """Parameter table of a preset or checkpoint: per module trainable / frozen / buffers."""
    with user_errors():
        model = model_for_target(target, vocab_size, overrides or [])
        report = inspect_model(model)
        flops = model_flops_per_token(model.config)
    if as_json:
        out = {**report, "flops_per_token": flops, "config": model.config.model_dump()}
        typer.echo(json.dumps(out, indent=2))
        return
    console = Console()
    console.print(parameter_table(report, f"{target}: {model.config.n_layer} layers"))
    console.print(f"train FLOPs/token at context {model.config.block_size}: {flops['train']:,}")


def convert_command(
    src: Annotated[str, typer.Argument(help="forgetlab checkpoint/run dir, nanoGPT ckpt, HF dir")],
    dst: Annotated[str, typer.Argument(help="output .safetensors file or directory")],
    to: Annotated[str, typer.Option("--to", help="forgetlab | hf")] = "forgetlab",
    tokenizer: Annotated[
        str | None,
        typer.Option(help="--to hf: tokenizer files to add (gpt2, bpe-N); a run dir has its own"),
    ] = None,
    cache_dir: Annotated[
        str | None, typer.Option(help="--to hf: the data cache holding the tokenizer")
    ] = None,
    weights_only: Annotated[
        bool, typer.Option(help="--to hf from a checkpoint: no tokenizer files (on purpose)")
    ] = False,
) -> None:
    """Convert a model between forgetlab, nanoGPT (import only) and Hugging Face GPT-2.

    `convert RUN_DIR DST --to hf` exports a run as a directory transformers uses as is: its final
    checkpoint, the tokenizer it trained with, generation_config.json and a model card. Any other
    source needs --tokenizer (or --weights-only): without tokenizer files, AutoTokenizer would
    load an empty GPT-2 tokenizer that encodes every text to []."""
    from forgetlab.models.hf_run import is_run_dir

    with user_errors():
        if to not in ("forgetlab", "hf"):
            raise ConfigError(f"--to = {to!r}; allowed: ['forgetlab', 'hf']")
        target: Literal["forgetlab", "hf"] = "hf" if to == "hf" else "forgetlab"
        known = tokenizer is not None or weights_only or is_run_dir(Path(src))
        if target == "hf" and not known and Path(src).exists():
            raise ConfigError(
                f"{src!r} is not a run directory, so its tokenizer is unknown: pass --tokenizer "
                "gpt2|bpe-N (the one it was trained with) so that AutoTokenizer and pipeline "
                "work, or --weights-only for the model without one"
            )
        written = convert(src, dst, to=target, tokenizer=tokenizer, cache_dir=cache_dir)
    typer.echo(f"wrote {written}")


def diagnosis_batch(
    model: GPT, tokenizer: str | None, cache_dir: str | None, batch_size: int = 4
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(x, y, where from): windows of the first prepared domain for ``tokenizer``, else random
    token ids, saying which command would prepare real data."""
    import numpy as np

    from forgetlab.data import DataError, open_stream, sample_windows
    from forgetlab.data.stream import prepare_command

    block, vocab = model.config.block_size, model.config.vocab_size
    domain = STREAM_DOMAINS[0]
    if tokenizer is not None:
        try:
            stream = open_stream([domain], tokenizer, cache_dir)
            if stream.tokenizer.vocab_size <= vocab:
                rng = np.random.default_rng(0)
                x, y = sample_windows(stream[domain].train, rng, batch_size, block)
                return x, y, f"real data: {domain} / {tokenizer}"
        except (DataError, OSError):
            pass
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch_size, block + 1), generator=gen)
    hint = prepare_command(domain, tokenizer) if tokenizer else "pass --tokenizer"
    return ids[:, :-1], ids[:, 1:], f"random token ids: no prepared data found (run `{hint}`)"


def diagnose_command(
    target: Annotated[str, typer.Argument(metavar="PRESET_OR_CKPT", help="preset or path")],
    vocab_size: Annotated[int | None, typer.Option("--vocab-size", help="preset vocab")] = None,
    tokenizer: Annotated[
        str | None, typer.Option("--tokenizer", help="data for the step; default: preset's")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="config override, e.g. model.freeze_qk=false")
    ] = None,
) -> None:
    """Prove frozen tensors stay frozen: tensors, totals, one optimizer step, checkpoint round trip.

    Exits 1 when any check fails, naming the tensor at fault.
    """
    from forgetlab.train.optim import build_optimizer

    with user_errors():
        model = model_for_target(target, vocab_size, overrides or [])
        run = run_for_target(target, overrides or []) or RunConfig(model=model.config)
        tok = tokenizer or run.data.tokenizer
        x, y, source = diagnosis_batch(model, tok, run.data.cache_dir)
        report = diagnose(model, x, y, lambda m: build_optimizer(m, run))
    report["data"] = source
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print_diagnosis(report, target)
    if not report["ok"]:
        raise typer.Exit(1)


def _print_diagnosis(report: dict[str, Any], target: str) -> None:
    console = Console()
    params = rich_table(PARAMETER_COLUMNS, report["parameters"], title=f"{target}: parameters")
    buffers = rich_table(BUFFER_COLUMNS, report["buffers"], title="buffers")
    console.print(params, buffers)
    console.print(
        f"total {report['total']:,}  trainable {report['trainable']:,}  "
        f"frozen {report['frozen']:,}  ({report['data']})"
    )
    for v in report["violations"]:
        console.print(f"[red]VIOLATION[/red] {v['tensor']}: {v['problem']}")
    console.print("[green]ok[/green]" if report["ok"] else f"{len(report['violations'])} violations")


COMMANDS: dict[str, Callable[..., None]] = {
    "inspect": inspect_command,
    "diagnose": diagnose_command,
    "convert": convert_command,
}


def register(app: typer.Typer) -> None:
    """Add ``inspect``, ``diagnose`` and ``convert`` to the main ``forgetlab`` app."""
    for name, command in COMMANDS.items():
        app.command(name)(command)
