"""A Hugging Face export is used as is: ``AutoTokenizer`` gives forgetlab's ids on real text,
``GPT2LMHeadModel`` its logits, and ``pipeline("text-generation")`` its greedy continuation; a run
exports itself (final checkpoint, its tokenizer, a model card with its R summary)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from forgetlab.cli.main import app
from forgetlab.config import ModelConfig
from forgetlab.data import load_tokenizer
from forgetlab.models import GPT, ModelExportError, export_hf, load_model
from micro_run import micro_config

transformers = pytest.importorskip("transformers", reason="transformers is not installed")

FIXTURE_CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "corpus"


def real_texts(n: int = 12) -> list[str]:
    """Documents of every fixture domain (code, math, medical, legal, dialogue)."""
    out = []
    for path in sorted(FIXTURE_CORPUS.glob("*/*.jsonl")):
        lines = path.read_text().splitlines()
        out += [json.loads(line)["text"] for line in lines[: n // 4 or 1]]
    return out


@pytest.fixture(scope="module")
def trained_run(fixture_data, tmp_path_factory) -> Path:
    """A finished micro run over two fixture domains with the fixture's bpe-512 tokenizer."""
    from forgetlab.train import Trainer

    out = tmp_path_factory.mktemp("export-run") / "run"
    Trainer(micro_config(fixture_data, steps=8), out, progress=False).run()
    return out


def check_tokenizer(export: Path, tokenizer) -> None:
    hf = transformers.AutoTokenizer.from_pretrained(export)
    assert hf.eos_token_id == hf.bos_token_id == tokenizer.eot_id
    for text in real_texts():
        ids = tokenizer.encode(text)
        assert len(ids) > 10
        assert hf(text)["input_ids"] == ids
        assert hf.decode(ids) == text


def check_logits(export: Path, ours: GPT) -> None:
    hf = transformers.GPT2LMHeadModel.from_pretrained(export).eval()
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, ours.config.vocab_size, (2, ours.config.block_size), generator=g)
    with torch.no_grad():
        assert (ours.eval()(idx) - hf(idx).logits).abs().max().item() < 1e-5


def lab_greedy(ours: GPT, tokenizer, prompt: str, new: int) -> str:
    ids = tokenizer.encode(prompt)
    out = ours.generate(torch.tensor([ids]), new, temperature=0.0)[0, len(ids) :].tolist()
    if tokenizer.eot_id in out:  # transformers stops at eos; so does the comparison
        out = out[: out.index(tokenizer.eot_id)]
    return prompt + tokenizer.decode(out)


def check_pipeline(export: Path, ours: GPT, tokenizer) -> str:
    generate = transformers.pipeline("text-generation", model=str(export), device="cpu")
    prompt = real_texts()[0][:80]
    got = generate(prompt, max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert got == lab_greedy(ours, tokenizer, prompt, 8)
    return got


def test_a_run_exports_itself_and_transformers_uses_it_as_is(trained_run, tmp_path):
    res = CliRunner().invoke(app, ["convert", str(trained_run), str(tmp_path / "hf"), "--to", "hf"])
    assert res.exit_code == 0, res.output
    export = tmp_path / "hf"
    record = json.loads((trained_run / "run.json").read_text())
    ours = load_model(trained_run / "checkpoints" / "latest" / "model.safetensors")
    tokenizer = load_tokenizer(record["tokenizer"], record["config"]["data"]["cache_dir"])

    config = json.loads((export / "config.json").read_text())
    generation = json.loads((export / "generation_config.json").read_text())
    assert config["eos_token_id"] == config["bos_token_id"] == tokenizer.eot_id
    assert generation["eos_token_id"] == tokenizer.eot_id
    check_tokenizer(export, tokenizer)
    check_logits(export, ours)
    check_pipeline(export, ours, tokenizer)

    card = (export / "README.md").read_text()
    assert "pipeline_tag: text-generation" in card and "status is `finished`" in card
    assert "code → math" in card and "`bpe-512`" in card and "user source" in card
    final_code_loss = f"{record['R']['loss'][-1][0]:.4f}"
    forgetting = f"{record['metrics']['loss']['average_forgetting']:.4f}"
    assert f"| code | {record['R']['loss'][1][0]:.4f} | {final_code_loss} |" in card
    assert f"| average_forgetting | {forgetting} |" in card
    assert json.dumps(record["config"], indent=2) in card


def test_gpt2_tokenizer_export_matches_tiktoken_logits_and_generation(gpt2_root, tmp_path):
    """A micro model with GPT-2's 50,257-token vocabulary, exported with the real GPT-2 BPE."""
    tokenizer = load_tokenizer("gpt2", gpt2_root)
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=50257)
    ours = GPT(cfg).eval()
    with torch.no_grad():  # a random init predicts nearly uniformly: sharpen it a little
        ours.lm_head.weight.mul_(20)
    export_hf(ours, tmp_path / "hf", tokenizer=tokenizer)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["eos_token_id"] == 50256
    check_tokenizer(tmp_path / "hf", tokenizer)
    check_logits(tmp_path / "hf", ours)
    check_pipeline(tmp_path / "hf", ours, tokenizer)


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(fixture_data, tmp_path):
    tokenizer = load_tokenizer(fixture_data.tokenizer, fixture_data.cache_dir)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=100))
    with pytest.raises(ModelExportError, match="bpe-512' has 512 tokens but the model's vocab"):
        export_hf(model, tmp_path / "hf", tokenizer=tokenizer)
    assert not (tmp_path / "hf").exists()


def test_reexport_without_tokenizer_leaves_no_stale_tokenizer_files(fixture_data, tmp_path):
    tokenizer = load_tokenizer(fixture_data.tokenizer, fixture_data.cache_dir)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=512))
    export_hf(model, tmp_path / "hf", tokenizer=tokenizer)
    assert (tmp_path / "hf" / "tokenizer.json").exists()
    export_hf(model, tmp_path / "hf")
    left = {p.name for p in (tmp_path / "hf").iterdir()}
    assert left == {"model.safetensors", "config.json", "generation_config.json"}


def test_a_missing_tokenizer_names_the_cache_option(trained_run, tmp_path):
    from forgetlab.models import convert

    with pytest.raises(ModelExportError, match=r"bpe-4k.*--cache-dir"):
        convert(trained_run, tmp_path / "hf", to="hf", tokenizer="bpe-4k")


def test_a_checkpoint_export_needs_its_tokenizer_or_says_weights_only(fixture_data, tmp_path):
    """Without tokenizer files AutoTokenizer loads an empty GPT-2 tokenizer that encodes every
    text to []: the command refuses that silent state unless asked for weights only."""
    from forgetlab.models import save_model

    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=512))
    ckpt = save_model(model, tmp_path / "model.safetensors")
    runner = CliRunner()
    refused = runner.invoke(app, ["convert", str(ckpt), str(tmp_path / "a"), "--to", "hf"])
    assert refused.exit_code == 2 and "pass --tokenizer gpt2|bpe-N" in refused.output
    assert not (tmp_path / "a").exists()
    args = ["--tokenizer", fixture_data.tokenizer, "--cache-dir", fixture_data.cache_dir]
    ok = runner.invoke(app, ["convert", str(ckpt), str(tmp_path / "b"), "--to", "hf", *args])
    assert ok.exit_code == 0, ok.output
    check_tokenizer(tmp_path / "b", load_tokenizer(fixture_data.tokenizer, fixture_data.cache_dir))
    bare = runner.invoke(app, ["convert", str(ckpt), str(tmp_path / "c"), "--to", "hf", "--weights-only"])
    assert bare.exit_code == 0 and not (tmp_path / "c" / "tokenizer.json").exists()
