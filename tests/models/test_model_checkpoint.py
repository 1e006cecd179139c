"""forgetlab safetensors checkpoints and :func:`from_pretrained`'s path forms."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from forgetlab.config import ModelConfig
from forgetlab.models import GPT, ModelLoadError, convert, from_pretrained, load_model, save_model


def micro_model(**overrides: object) -> GPT:
    torch.manual_seed(0)
    base = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=61, dropout=0.1)
    return GPT(ModelConfig.model_validate({**base, **overrides}))


def assert_same_weights(a: GPT, b: GPT) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip_is_bit_exact_and_keeps_the_config(tmp_path: Path) -> None:
    model = micro_model()
    path = save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(path)
    assert_same_weights(model, loaded)
    assert loaded.config == model.config
    assert loaded.lm_head.weight is loaded.wte.weight
    assert not loaded.training
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left


def test_tied_head_is_stored_once(tmp_path: Path) -> None:
    path = save_model(micro_model(), tmp_path / "m.safetensors")
    with safe_open(str(path), "pt") as f:
        assert set(f.keys()) >= {"wte.weight"} and "lm_head.weight" not in set(f.keys())
    untied = micro_model(tie_embeddings=False)
    assert_same_weights(untied, load_model(save_model(untied, tmp_path / "u.safetensors")))


@pytest.mark.parametrize(
    "rel", ["m.safetensors", "checkpoints/latest/model.safetensors", "model.safetensors"]
)
def test_from_pretrained_reads_a_checkpoint_or_a_run_directory(tmp_path: Path, rel: str) -> None:
    model = micro_model()
    save_model(model, tmp_path / rel)
    target = tmp_path / rel if rel == "m.safetensors" else tmp_path
    assert_same_weights(model, from_pretrained(target))


def test_unrecognised_paths_raise_model_load_error_naming_path_and_forms(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ModelLoadError, match=r"nope.*accepted: .*nanoGPT ckpt\.pt"):
        from_pretrained(missing)
    with pytest.raises(ModelLoadError, match="accepted"):
        from_pretrained(tmp_path)  # an empty directory
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(ModelLoadError, match=r"junk\.pt"):
        from_pretrained(junk)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ModelLoadError, match="model_args"):
        from_pretrained(tmp_path / "other.pt")


def test_load_refuses_weights_that_do_not_fit_the_config(tmp_path: Path) -> None:
    path = save_model(micro_model(), tmp_path / "m.safetensors")
    assert_same_weights(micro_model(), load_model(path))
    state = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    del state["ln_f.weight"]
    save_file(state, str(path), metadata=metadata)
    with pytest.raises(ModelLoadError, match=r"ln_f\.weight"):
        load_model(path)


def test_convert_to_forgetlab_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    model = micro_model()
    src = save_model(model, tmp_path / "a.safetensors")
    out = convert(src, tmp_path / "out", to="forgetlab")
    assert out == tmp_path / "out" / "model.safetensors"
    assert_same_weights(model, from_pretrained(tmp_path / "out"))
