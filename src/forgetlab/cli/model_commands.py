"""``forgetlab inspect`` and ``forgetlab convert``: the model layer's commands.

:func:`register` adds them to the main Typer app. Every error prints one line and exits with 2.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.table import Table

from forgetlab.config import PRESETS, ConfigError, resolve_run_config
from forgetlab.models import (
    GPT,
    ModelExportError,
    ModelLoadError,
    build_model,
    convert,
    from_pretrained,
    inspect_model,
    model_flops_per_token,
)

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


def model_for_target(target: str, vocab_size: int | None, overrides: list[str]) -> GPT:
    """A preset name builds a fresh model (with ``--set`` overrides); anything else is a path."""
    if target in PRESETS:
        run = resolve_run_config({"model": {"preset": target}}, overrides)
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


def parameter_table(report: dict[str, Any], title: str) -> Table:
    table = Table(title=title)
    table.add_column("module")
    for col in ("trainable", "frozen", "buffers"):
        table.add_column(col, justify="right")
    for row in report["modules"]:
        table.add_row(row["name"], *(f"{row[c]:,}" for c in ("trainable", "frozen", "buffers")))
    table.add_section()
    totals = (f"{report[c]:,}" for c in ("trainable", "frozen", "buffers"))
    table.add_row(f"total {report['total']:,}", *totals, style="bold")
    return table


@contextmanager
def _one_line_errors() -> Iterator[None]:
    try:
        yield
    except (ConfigError, ModelLoadError, ModelExportError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def inspect_command(
    target: Annotated[str, typer.Argument(metavar="PRESET_OR_CKPT", help="preset or path")],
    vocab_size: Annotated[int | None, typer.Option("--vocab-size", help="preset vocab")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="config override, e.g. model.n_layer=3")
    ] = None,
) -> None:
    """Parameter table of a preset or checkpoint: per module trainable / frozen / buffers."""
    with _one_line_errors():
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
) -> None:
    """Convert a model between forgetlab, nanoGPT (import only) and Hugging Face GPT-2."""
    with _one_line_errors():
        if to not in ("forgetlab", "hf"):
            raise ConfigError(f"--to = {to!r}; allowed: ['forgetlab', 'hf']")
        target: Literal["forgetlab", "hf"] = "hf" if to == "hf" else "forgetlab"
        written = convert(src, dst, to=target)
    typer.echo(f"wrote {written}")


COMMANDS: dict[str, Callable[..., None]] = {"inspect": inspect_command, "convert": convert_command}


def register(app: typer.Typer) -> None:
    """Add ``inspect`` and ``convert`` to the main ``forgetlab`` app."""
    for name, command in COMMANDS.items():
        app.command(name)(command)
