"""Cleaning and exact deduplication."""

from __future__ import annotations

from forgetlab.data.clean import clean_documents, dedup_key, normalize


def test_normalize_unifies_line_ends_and_strips_trailing_space_and_blank_runs():
    raw = "Title  \r\n\r\n\r\n\r\nBody line\t \rnext\n\n\n"
    assert normalize(raw) == "Title\n\nBody line\nnext"


def test_normalize_keeps_code_indentation():
    code = "def f(x):\n    if x:\n        return 1\n\n\n\n    return 2\n"
    assert normalize(code) == "def f(x):\n    if x:\n        return 1\n\n    return 2"


def test_normalize_removes_control_characters_bom_and_end_of_text_marker():
    assert normalize("\ufeffa\x00b\x07c<|endoftext|>d") == "abcd"


def test_whitespace_variants_share_a_dedup_key():
    assert dedup_key("a  b\n\nc") == dedup_key(" a b c ")
    assert dedup_key("a b c") != dedup_key("a b d")


def test_clean_documents_keeps_first_occurrence_in_order_and_drops_short_ones():
    docs = ["First doc.", "Second   doc.", "First  doc.", "x", "Second doc.\n", "Third doc."]
    out = [text for _, text in clean_documents(docs, min_chars=3)]
    assert out == ["First doc.", "Second   doc.", "Third doc."]
