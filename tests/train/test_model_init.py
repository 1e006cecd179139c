"""``model.init``: a run starts from a forgetlab run, a Hugging Face GPT-2 directory or a nanoGPT
``ckpt.pt``; row 0 of R scores the loaded model; shape and tokenizer are the checkpoint's."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from forgetlab.config import ConfigError, resolve_run_config
from forgetlab.data import fixed_windows, open_stream
from forgetlab.models import GPT, build_model, convert, from_pretrained, load_model
from forgetlab.models.gpt2_names import forgetlab_to_gpt2_key
from forgetlab.models.init import InitSource
from forgetlab.models.nanogpt import nanogpt_config
from forgetlab.train import RunDir, Trainer
from forgetlab.train.device import autocast_factory
from forgetlab.train.evaluate import evaluate, make_eval_set
from forgetlab.train.rundir import config_hash
from micro_run import micro_config

transformers = pytest.importorskip("transformers", reason="transformers is not installed")

VAL_BATCHES, BATCH, EVAL_BATCH = 2, 4, 8
SHAPE = dict(n_layer=2, n_head=2, n_embd=32, block_size=64)  # not the micro preset: no preset


def run_config(fixture_data, model: dict, domains: int = 2, steps: int = 3, **train) -> object:
    return micro_config(fixture_data, (), domains, model=model, steps=steps,
                        val_batches=VAL_BATCHES, **{"log_every": 1, **train})  # fmt: skip


@pytest.fixture(scope="module")
def vocab(fixture_data) -> int:
    """The fixture tokenizer's vocabulary: what every init source here is built for."""
    stream = open_stream(fixture_data.domains[:1], fixture_data.tokenizer, fixture_data.cache_dir)
    return stream.tokenizer.vocab_size


@pytest.fixture(scope="module")
def base_run(fixture_data, tmp_path_factory) -> Path:
    """A finished micro run on the first domain: the forgetlab-format init."""
    out = tmp_path_factory.mktemp("base") / "base"
    cfg = run_config(fixture_data, {"preset": "micro"}, domains=1, steps=4)
    Trainer(cfg, out, progress=False).run()
    return out


def perturbed_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Noise on every parameter, so unit LayerNorms and zero biases cannot hide a mistake."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def write_hf(directory: Path, vocab: int, seed: int = 1) -> torch.nn.Module:
    cfg = transformers.GPT2Config(
        vocab_size=vocab, n_positions=SHAPE["block_size"], n_embd=SHAPE["n_embd"],
        n_layer=SHAPE["n_layer"], n_head=SHAPE["n_head"], resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=None, eos_token_id=None,
    )  # fmt: skip
    torch.manual_seed(seed)
    hf = perturbed_(transformers.GPT2LMHeadModel(cfg), seed)
    hf.save_pretrained(directory)
    return hf


def write_nanogpt(path: Path, vocab: int) -> None:
    """A ``ckpt.pt`` as nanoGPT's train.py writes it: model_args, and the state dict of a
    torch.compile'd model under nanoGPT's (GPT-2) names, nn.Linear layout."""
    args = dict(**SHAPE, bias=True, vocab_size=vocab, dropout=0.0)
    model = perturbed_(build_model(nanogpt_config(args)), seed=2)
    state = {"_orig_mod." + forgetlab_to_gpt2_key(k): v for k, v in model.state_dict().items()}
    torch.save({"model_args": args, "model": state, "iter_num": 7, "config": {}}, path)


@pytest.fixture(scope="module")
def sources(base_run, vocab, tmp_path_factory) -> dict[str, tuple[str, torch.nn.Module]]:
    """Each format's init path and its source model, loaded independently of model.init."""
    root = tmp_path_factory.mktemp("sources")
    hf = write_hf(root / "hf", vocab)
    write_nanogpt(root / "ckpt.pt", vocab)
    forgetlab = load_model(base_run / "checkpoints" / "latest" / "model.safetensors")
    return {
        "forgetlab": (str(base_run), forgetlab),
        "hf": (str(root / "hf"), hf),
        "nanogpt": (str(root / "ckpt.pt"), from_pretrained(root / "ckpt.pt")),
    }


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model.eval()(x)
    return getattr(out, "logits", out)


def init_model(fmt: str) -> dict:
    return {} if fmt != "forgetlab" else {"preset": "micro"}


@pytest.mark.parametrize("fmt", ["forgetlab", "hf", "nanogpt"])
def test_init_gives_the_source_models_logits_and_row_0_of_r(fixture_data, sources, tmp_path, fmt):
    path, source = sources[fmt]
    cfg = run_config(fixture_data, {**init_model(fmt), "init": path})
    assert cfg.model.init.format == fmt and cfg.model.n_embd == source.config.n_embd

    trainer = Trainer(cfg, tmp_path / "setup-only", progress=False)
    trainer._setup()  # builds (and loads) the model; creates no run directory
    assert not (tmp_path / "setup-only").exists()
    x = trainer.eval_sets[0].x[:4].cpu()
    assert (logits(trainer.model, x) - logits(source, x)).abs().max().item() < 1e-5

    record = Trainer(cfg, tmp_path / "run", progress=False).run()
    stream = open_stream(cfg.data.domains, cfg.data.tokenizer, cfg.data.cache_dir)
    token_bytes = stream.tokenizer.token_byte_lengths()
    autocast = autocast_factory(torch.device("cpu"), "fp32")
    for j, name in enumerate(cfg.data.domains):
        wx, wy = fixed_windows(stream[name].val, VAL_BATCHES * BATCH, SHAPE["block_size"])
        es = make_eval_set(wx, wy, token_bytes, torch.device("cpu"))
        if fmt == "hf":  # transformers' model returns an output object: score ours built from it
            ref = evaluate(_Logits(source), es, EVAL_BATCH, autocast)
        else:
            ref = evaluate(source, es, EVAL_BATCH, autocast)
        for kind in ("loss", "bpb", "accuracy"):
            assert record["R"][kind][0][j] == pytest.approx(ref[kind], rel=1e-5, abs=1e-6)
    # training moved the loaded model: row 1 differs on the trained domain
    assert record["R"]["loss"][1][0] != record["R"]["loss"][0][0]


class _Logits(torch.nn.Module):
    """A transformers causal LM seen as a function from ids to logits."""

    def __init__(self, hf: torch.nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hf(x).logits


def test_run_json_records_the_init_and_the_tokenizer_hash(fixture_data, base_run, tmp_path):
    base = json.loads((base_run / "run.json").read_text())
    assert len(base["tokenizer_sha256"]) == 64
    cfg = run_config(fixture_data, {"preset": "micro", "init": str(base_run)}, domains=1, steps=1)
    Trainer(cfg, tmp_path / "run", progress=False).run()
    init = json.loads((tmp_path / "run" / "run.json").read_text())["config"]["model"]["init"]
    assert init["path"] == str(base_run) and init["format"] == "forgetlab"
    step_file = (base_run / "checkpoints" / "latest").resolve() / "model.safetensors"
    assert init["sha256"] == hashlib.sha256(step_file.read_bytes()).hexdigest()


def test_a_contradicting_shape_key_is_refused_with_both_values(fixture_data, base_run, sources):
    with pytest.raises(ConfigError, match=r"model\.n_layer = 3 contradicts .* n_layer = 2"):
        run_config(fixture_data, {"preset": "micro", "n_layer": 3, "init": str(base_run)})
    with pytest.raises(ConfigError, match=r"model\.n_layer = 4 \(from preset 'tiny'\)"):
        run_config(fixture_data, {"preset": "tiny", "init": str(base_run)})
    hf_path = sources["hf"][0]
    with pytest.raises(ConfigError, match=r"model\.activation = 'gelu' contradicts .*'gelu_tanh'"):
        run_config(fixture_data, {"activation": "gelu", "init": hf_path})
    # keys the checkpoint does not decide stay the spec's
    cfg = run_config(fixture_data, {"dropout": 0.2, "n_layer": 2, "init": hf_path})
    assert cfg.model.dropout == 0.2 and cfg.model.activation == "gelu_tanh"


def test_a_tokenizer_mismatch_is_refused_by_name(fixture_data, base_run, vocab, tmp_path):
    with pytest.raises(ConfigError, match=r"data\.tokenizer = 'bpe-2k'.*trained with 'bpe-512'"):
        resolve_run_config(
            {"model": {"preset": "micro", "init": str(base_run)}, "data": {"tokenizer": "bpe-2k"}}
        )
    # the recorded tokenizer is the default when the spec names none
    cfg = resolve_run_config(
        {"model": {"init": str(base_run)}, "data": {"cache_dir": fixture_data.cache_dir}}
    )
    assert cfg.data.tokenizer == fixture_data.tokenizer

    # same name, other merges: the recorded sha256 differs from the cache's tokenizer
    other = tmp_path / "other-base"
    shutil.copytree(base_run, other, symlinks=True)
    record = json.loads((other / "run.json").read_text())
    record["tokenizer_sha256"] = "0" * 64
    (other / "run.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=r"sha256 [0-9a-f]{64} .* sha256 0{64}"):
        run_config(fixture_data, {"preset": "micro", "init": str(other)})

    # a forgetlab Hugging Face export records its tokenizer in tokenizer_config.json
    hf_dir = tmp_path / "hf-export"
    write_hf(hf_dir, vocab)
    with pytest.raises(ConfigError, match=r"records no tokenizer: set data\.tokenizer"):
        resolve_run_config({"model": {"init": str(hf_dir)}})
    recorded = {"forgetlab_tokenizer": {"name": "bpe-2k", "sha256": "1" * 64}}
    (hf_dir / "tokenizer_config.json").write_text(json.dumps(recorded))
    with pytest.raises(ConfigError, match=r"'bpe-512' is not the tokenizer .* with 'bpe-2k'"):
        run_config(fixture_data, {"init": str(hf_dir)})

    # a vocabulary the checkpoint's embedding does not have
    write_hf(tmp_path / "hf-600", 600)
    with pytest.raises(ConfigError, match=r"'bpe-512'.* has 512 tokens .* vocabulary of 600"):
        run_config(fixture_data, {"init": str(tmp_path / "hf-600")})


def test_the_run_id_changes_with_the_init_content_and_not_without_init(
    fixture_data, vocab, tmp_path
):
    # the id a micro config had before model.init existed
    assert config_hash(resolve_run_config({"model": {"preset": "micro"}})) == "28a622c75e28"
    write_hf(tmp_path / "a", vocab, seed=1)
    write_hf(tmp_path / "b", vocab, seed=1)
    a = run_config(fixture_data, {"init": str(tmp_path / "a")})
    b = run_config(fixture_data, {"init": str(tmp_path / "b")})
    assert a.model.init.sha256 == b.model.init.sha256  # same content
    write_hf(tmp_path / "a", vocab, seed=5)  # other weights at the same path
    a2 = run_config(fixture_data, {"init": str(tmp_path / "a")})
    assert a2.model.init.sha256 != a.model.init.sha256
    assert config_hash(a2) != config_hash(a)
    # a pinned sha256 refuses the new content
    with pytest.raises(ConfigError, match="pins other weights"):
        run_config(fixture_data, {"init": {"path": str(tmp_path / "a"), "sha256": a.model.init.sha256}})


def test_weights_changed_after_resolution_are_refused_before_the_run_starts(
    fixture_data, vocab, tmp_path
):
    write_hf(tmp_path / "hf", vocab, seed=1)
    cfg = run_config(fixture_data, {"init": str(tmp_path / "hf")})
    write_hf(tmp_path / "hf", vocab, seed=9)
    with pytest.raises(ConfigError, match="changed after the config was resolved"):
        Trainer(cfg, tmp_path / "run", progress=False).run()
    assert not (tmp_path / "run").exists()


def test_an_unfinished_run_is_refused_but_its_checkpoint_files_are_accepted(
    fixture_data, base_run, tmp_path
):
    running = tmp_path / "running"
    shutil.copytree(base_run, running, symlinks=True)
    record = json.loads((running / "run.json").read_text())
    (running / "run.json").write_text(json.dumps({**record, "status": "running"}))
    with pytest.raises(ConfigError, match=r"has not finished \(status 'running'\)"):
        run_config(fixture_data, {"init": str(running)})
    step = next((running / "checkpoints").glob("step-*")) / "model.safetensors"
    cfg = run_config(fixture_data, {"init": str(step)})
    assert cfg.model.init.format == "forgetlab" and cfg.data.tokenizer == fixture_data.tokenizer


def test_resume_of_an_init_run_loads_its_checkpoint_not_the_init(
    fixture_data, sources, tmp_path, killed_run, monkeypatch
):
    path, _ = sources["hf"]
    cfg = run_config(fixture_data, {"init": path}, steps=4, checkpoint_every=2)
    ref = Trainer(cfg, tmp_path / "ref", progress=False).run()
    killed_run(cfg, tmp_path / "resumed", at=7)  # stage 2, after the checkpoint at step 6

    def no_init(self: InitSource) -> GPT:
        raise AssertionError("a resumed run loaded model.init")

    monkeypatch.setattr(InitSource, "load", no_init)
    resumed = Trainer(cfg, tmp_path / "resumed", progress=False).run()
    assert resumed["R"] == ref["R"]
    assert RunDir(tmp_path / "resumed").status() == "finished"


def test_a_runs_hf_export_is_an_init_with_the_runs_tokenizer(fixture_data, base_run, tmp_path):
    convert(base_run, tmp_path / "hf", to="hf")  # the run exports itself with its tokenizer
    cfg = resolve_run_config(
        {"model": {"init": str(tmp_path / "hf")}, "data": {"cache_dir": fixture_data.cache_dir}}
    )
    assert cfg.model.init.format == "hf" and cfg.data.tokenizer == fixture_data.tokenizer
    trainer = Trainer(cfg, tmp_path / "setup-only", progress=False)
    trainer._setup()
    source = load_model(base_run / "checkpoints" / "latest" / "model.safetensors")
    x = trainer.eval_sets[0].x[:4].cpu()
    assert (logits(trainer.model, x) - logits(source, x)).abs().max().item() < 1e-5


def test_a_large_inits_hash_is_computed_once_per_file_version(tmp_path, monkeypatch):
    from forgetlab.models import init as init_module

    monkeypatch.setenv("FORGETLAB_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(init_module, "DISK_CACHE_BYTES", 1)  # every file counts as large
    digests: list[Path] = []
    real = init_module._digest
    monkeypatch.setattr(init_module, "_digest", lambda p: digests.append(p) or real(p))
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"a" * 1000)
    first = init_module.file_sha256(weights)
    assert first == hashlib.sha256(b"a" * 1000).hexdigest()
    init_module._HASHES.clear()  # a new process: the machine-wide cache answers
    assert init_module.file_sha256(weights) == first and len(digests) == 1
    weights.write_bytes(b"b" * 1001)  # another version of the file: hashed again
    init_module._HASHES.clear()
    assert init_module.file_sha256(weights) == hashlib.sha256(b"b" * 1001).hexdigest()
    assert len(digests) == 2
    (tmp_path / "cache" / "init-sha256.json").write_text("{torn")  # a crash mid-write
    init_module._HASHES.clear()
    assert init_module.file_sha256(weights) == hashlib.sha256(b"b" * 1001).hexdigest()
