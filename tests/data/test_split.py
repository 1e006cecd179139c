"""The train/val split: a pure function of the document text."""

from __future__ import annotations

import json
from pathlib import Path

from forgetlab.data.clean import dedup_key
from forgetlab.data.split import hash_fraction, is_val


def test_split_is_a_function_of_the_text_only():
    texts = [f"document number {i} with some words" for i in range(2000)]
    first = [is_val(dedup_key(t), 0.1) for t in texts]
    again = [is_val(dedup_key(t), 0.1) for t in reversed(texts)][::-1]
    assert first == again


def test_split_fraction_is_close_to_the_requested_one():
    keys = [dedup_key(f"line {i}") for i in range(20000)]
    share = sum(is_val(k, 0.05) for k in keys) / len(keys)
    assert 0.045 < share < 0.055
    assert all(0.0 <= hash_fraction(k) < 1.0 for k in keys)


def test_whitespace_variants_land_in_the_same_split():
    assert is_val(dedup_key("a b  c"), 0.5) == is_val(dedup_key("a\nb c"), 0.5)


def test_prepared_fixture_has_no_document_in_both_splits(fixture_data):
    for domain in fixture_data.domains:
        folder = Path(fixture_data.cache_dir) / "corpus" / domain
        train = {dedup_key(json.loads(x)) for x in (folder / "train.jsonl").open(encoding="utf-8")}
        val = {dedup_key(json.loads(x)) for x in (folder / "val.jsonl").open(encoding="utf-8")}
        assert train and val and not train & val
