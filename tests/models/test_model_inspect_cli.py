"""``inspect_model`` and the ``forgetlab inspect`` / ``convert`` commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from forgetlab.cli.model_commands import register, tokenizer_vocab_size
from forgetlab.config import ModelConfig
from forgetlab.models import GPT, from_pretrained, inspect_model, save_model


def cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_inspect_totals_split_trainable_frozen_and_buffers() -> None:
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50))
    model.blocks[0].attn.c_attn.weight.requires_grad_(False)
    model.blocks[1].register_buffer("mask", torch.ones(7))
    report = inspect_model(model)
    assert report["total"] == model.num_params()
    assert report["frozen"] == 32 * 96
    assert report["trainable"] == model.num_params() - 32 * 96
    assert report["buffers"] == 7
    assert sum(r["trainable"] + r["frozen"] for r in report["modules"]) == report["total"]
    assert {"name": "blocks.1", "trainable": 0, "frozen": 0, "buffers": 7} in report["modules"]


@pytest.mark.parametrize(
    ("name", "size"), [("gpt2", 50257), ("bpe-2k", 2048), ("bpe-6400", 6400), ("bpe-8k", 8192)]
)
def test_tokenizer_name_gives_vocabulary_size(name: str, size: int) -> None:
    assert tokenizer_vocab_size(name) == size


def test_inspect_preset_json_with_override() -> None:
    result = CliRunner().invoke(cli(), ["inspect", "micro", "--json", "--set", "model.n_layer=3"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["config"]["n_layer"] == 3 and out["config"]["vocab_size"] == 2048
    assert out["total"] == out["trainable"] + out["frozen"]
    assert sum(1 for r in out["modules"] if r["name"].endswith("attn.c_attn")) == 3


def test_inspect_table_and_vocab_option() -> None:
    result = CliRunner().invoke(cli(), ["inspect", "micro", "--vocab-size", "100"])
    assert result.exit_code == 0, result.output
    assert "blocks.1.ffn.c_proj" in result.output and "total" in result.output


def test_inspect_a_checkpoint_path(tmp_path: Path) -> None:
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=30))
    path = save_model(model, tmp_path / "m.safetensors")
    result = CliRunner().invoke(cli(), ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["total"] == model.num_params()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["inspect", "no-such-preset"], "neither a preset"),
        (["inspect", "micro", "--set", "model.n_embd=65"], "model.n_embd = 65"),
        (["inspect", "micro", "--set", "model.vocab_size=9", "--vocab-size", "10"], "vocab_size"),
        (["convert", "missing.pt", "out"], "accepted"),
        (["convert", "a", "b", "--to", "onnx"], "allowed"),
    ],
)
def test_errors_print_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli(), args)
    assert result.exit_code == 2
    assert message in result.output
    assert result.output.strip().count("\n") == 0


def test_convert_command_writes_a_forgetlab_checkpoint(tmp_path: Path) -> None:
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=30))
    src = save_model(model, tmp_path / "m.safetensors")
    result = CliRunner().invoke(cli(), ["convert", str(src), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert from_pretrained(tmp_path / "out").config == model.config
