"""``forgetlab data`` commands on the fixture stream."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from forgetlab.cli.data import app

runner = CliRunner()


def test_info_json_lists_every_prepared_domain(fixture_data):
    result = runner.invoke(app, ["info", "--json", "--cache-dir", fixture_data.cache_dir])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert sorted(r["domain"] for r in rows) == sorted(fixture_data.domains)
    for r in rows:
        assert r["tokenizer"] == "bpe-512" and r["train_tokens"] > 20_000
        assert r["val_tokens"] > 4_000 and r["documents"] > 0
        assert r["sources"][0].startswith("user:")


def test_info_table_and_sample_show_real_text(fixture_data):
    table = runner.invoke(app, ["info", "--cache-dir", fixture_data.cache_dir])
    assert table.exit_code == 0 and "dialogue" in table.output
    sample = runner.invoke(app, ["sample", "dialogue", "--tokenizer", "bpe-512", "-n", "2",
                                 "--cache-dir", fixture_data.cache_dir])
    assert sample.exit_code == 0 and "A: " in sample.output


def test_sample_without_a_tokenizer_reads_the_one_the_domain_is_prepared_with(fixture_data):
    """The fixture cache holds only bpe-512 shards: asking for gpt2 (the old default) would fail."""
    sample = runner.invoke(app, ["sample", "dialogue", "-n", "1",
                                 "--cache-dir", fixture_data.cache_dir])
    assert sample.exit_code == 0, sample.output
    assert "A: " in sample.output


def test_errors_are_one_line_with_exit_code_2(fixture_data, tmp_path):
    result = runner.invoke(app, ["sample", "legal", "--tokenizer", "gpt2", "--cache-dir",
                                 str(tmp_path)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    bad = runner.invoke(app, ["prepare", "--tokenizer", "wordpiece", "--cache-dir",
                              str(tmp_path)])
    assert bad.exit_code == 2 and "unknown tokenizer 'wordpiece'" in bad.output
