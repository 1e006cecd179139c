"""Deterministic train/val split by a hash of the document.

The split of a document depends only on its (normalised) text, never on order, machine or seed;
since duplicates share a key and are removed first, a document can never land in both splits.
"""

from __future__ import annotations


def hash_fraction(key: bytes) -> float:
    """Map a sha256 digest to [0, 1) using its first 8 bytes (uniform for a good hash)."""
    return int.from_bytes(key[:8], "big") / 2.0**64


def is_val(key: bytes, val_fraction: float) -> bool:
    """True when the document with dedup key ``key`` belongs to the validation split."""
    return hash_fraction(key) < val_fraction
