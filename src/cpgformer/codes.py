"""Every integer code used in the package, defined once.

Nucleotides follow the original CpG Transformer alphabet (note the A, T, C, G order).
Call states are stored as -1 missing / 0 unmethylated / 1 methylated; the model input adds one
(0 unknown-or-masked, 1 unmethylated, 2 methylated), see :func:`to_model_input`.
"""

from __future__ import annotations

import numpy as np

NUCLEOTIDE_LETTERS = "ATCGNMRWSYKVHDBX"
"""code -> letter: 0 A, 1 T, 2 C, 3 G, 4 N, 5 M, 6 R, 7 W, 8 S, 9 Y, 10 K, 11 V, 12 H, 13 D, 14 B, 15 X."""
N_NUCLEOTIDE_CODES = len(NUCLEOTIDE_LETTERS)
CODE_A, CODE_T, CODE_C, CODE_G, CODE_N = 0, 1, 2, 3, 4

MISSING = -1
UNMETHYLATED = 0
METHYLATED = 1

INPUT_UNKNOWN = 0
"""Model input code for unknown or masked entries (the original has no separate mask token)."""

_LUT = np.full(256, CODE_N, dtype=np.int8)
for _code, _letter in enumerate(NUCLEOTIDE_LETTERS):
    _LUT[ord(_letter)] = _code
    _LUT[ord(_letter.lower())] = _code
_LUT[ord("U")] = CODE_T
_LUT[ord("u")] = CODE_T


def encode_sequence(seq: str | bytes) -> np.ndarray:
    """Encode a DNA string into int8 nucleotide codes (case-insensitive; unknown letters -> N)."""
    raw = seq.encode("ascii", errors="replace") if isinstance(seq, str) else seq
    return _LUT[np.frombuffer(raw, dtype=np.uint8)]


def decode_sequence(codes: np.ndarray) -> str:
    """Inverse of :func:`encode_sequence` (upper case)."""
    letters = np.frombuffer(NUCLEOTIDE_LETTERS.encode(), dtype=np.uint8)
    return letters[np.asarray(codes, dtype=np.int64)].tobytes().decode()


def to_model_input(states: np.ndarray) -> np.ndarray:
    """Stored states (-1/0/1, or -1/beta) -> model input coding (0 unknown, else value + 1).

    This is the one place where the ``+1`` shift of the original lives.
    """
    return states + 1
