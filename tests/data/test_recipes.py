"""Built-in recipe extractors on verbatim excerpts of their pinned files."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from forgetlab.data.recipes import BUILTIN_DOMAINS, RECIPES
from forgetlab.data.recipes.books import split_scenes
from forgetlab.data.recipes.code import is_source
from forgetlab.data.recipes.dialogue import chat_document
from forgetlab.data.recipes.legal import strip_front_matter
from forgetlab.data.recipes.medical import icd_lines, obo_terms, term_document

HERE = Path(__file__).parents[1] / "fixtures" / "recipes"


def test_every_built_in_recipe_pins_exact_files_with_sha256():
    assert BUILTIN_DOMAINS == ("code", "math", "medical", "legal", "dialogue", "books", "mmlu")
    for recipe in RECIPES.values():
        assert recipe.packages and recipe.files
        for p in recipe.packages:
            assert len(p.sha256) == 64 and p.version in p.filename
    assert RECIPES["mmlu"].eval_only and not RECIPES["code"].eval_only


def test_hpo_terms_become_definition_entries_and_obsolete_terms_are_dropped():
    terms = list(obo_terms((HERE / "hp_excerpt.obo").read_text()))
    docs = [term_document(t) for t in terms]
    assert docs[0].startswith("Multicystic kidney dysplasia: Multicystic dysplasia of the kidney")
    assert "Also called: Multicystic dysplastic kidney; Multicystic kidneys;" in docs[0]
    assert '"' not in docs[0].splitlines()[-1]
    assert docs[-1] == "", "the obsolete term gives no document"


def test_icd_category_lists_codes_and_notes_indented():
    lines = list(icd_lines(ET.fromstring((HERE / "icd_A00.xml").read_text())))
    assert lines == [
        "A00 Cholera",
        "  A00.0 Cholera due to Vibrio cholerae 01, biovar cholerae",
        "    Inclusion terms: Classical cholera",
        "  A00.1 Cholera due to Vibrio cholerae 01, biovar eltor",
        "    Inclusion terms: Cholera eltor",
        "  A00.9 Cholera, unspecified",
    ]


def test_chat_becomes_alternating_speaker_lines():
    (chat,) = json.loads((HERE / "chitchat_excerpt.json").read_text()).values()
    lines = chat_document(chat).splitlines()
    assert len(lines) == len(chat["messages"])
    assert lines[0].startswith("A: ") and lines[1].startswith("B: ")
    assert {line[:3] for line in lines} == {"A: ", "B: "}


def test_licence_front_matter_is_stripped():
    text = strip_front_matter((HERE / "mit.LICENSE").read_text())
    assert text.lstrip().startswith("Permission is hereby granted, free of charge")
    assert "spdx_license_key" not in text


def test_plays_are_cut_at_act_and_scene_headings():
    scenes = split_scenes((HERE / "macbeth_excerpt.txt").read_text())
    assert scenes[0].startswith("MACBETH")
    assert [s.splitlines()[0] for s in scenes[1:4]] == [
        "ACT I.", "SCENE I. An open Place. Thunder and Lightning.", "SCENE II. A Camp near Forres."]


def test_code_recipe_skips_tests_and_metadata():
    assert is_source("django/db/models/query.py")
    assert not is_source("networkx/algorithms/tests/test_cycles.py")
    assert not is_source("pkg/conftest.py")
    assert not is_source("django-5.2.1.dist-info/RECORD")
