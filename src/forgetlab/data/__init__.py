"""Domain corpora, tokenizers and token shards, built offline from pinned registry packages.

Entry points: :func:`prepare` builds, :func:`open_stream` reads, :func:`load_tokenizer` encodes,
:class:`DomainMixture` draws training windows from several domains at once.
See ``paths.py`` for the cache layout and ``recipes/`` for what each built-in domain contains.
"""

from forgetlab.data.errors import DataError
from forgetlab.data.mixture import (
    WEIGHTINGS,
    DomainMixture,
    Weighting,
    mixture_weights,
    stage_sources,
)
from forgetlab.data.paths import data_root
from forgetlab.data.pipeline import DEFAULT_DOMAINS, prepare, prepare_run
from forgetlab.data.recipes import BUILTIN_DOMAINS
from forgetlab.data.stream import DomainData, Stream, fixed_windows, open_stream, sample_windows
from forgetlab.data.tokenizers import Tokenizer, load_tokenizer

__all__ = [
    "BUILTIN_DOMAINS",
    "DEFAULT_DOMAINS",
    "WEIGHTINGS",
    "DataError",
    "DomainData",
    "DomainMixture",
    "Stream",
    "Tokenizer",
    "Weighting",
    "data_root",
    "fixed_windows",
    "load_tokenizer",
    "mixture_weights",
    "open_stream",
    "prepare",
    "prepare_run",
    "sample_windows",
    "stage_sources",
]
