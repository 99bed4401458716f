"""Model outputs to probabilities, and their quantisation in the imputed store."""

from __future__ import annotations

import numpy as np

from cpgformer.errors import UsageError

DTYPES = ("float16", "uint8")
_UINT8_SCALE = 255.0


def to_probabilities(raw: np.ndarray, data_mode: str, temperature: float = 1.0) -> np.ndarray:
    """Binary: ``sigmoid(logit / T)``; continuous: the raw beta estimate clipped to [0, 1]."""
    if data_mode == "continuous":
        return np.clip(raw, 0.0, 1.0).astype(np.float32)
    z = np.asarray(raw, dtype=np.float32) / np.float32(temperature)
    return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)  # stable sigmoid


def quantize(p: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float16":
        return p.astype(np.float16)
    if dtype == "uint8":
        return np.rint(np.clip(p, 0.0, 1.0) * _UINT8_SCALE).astype(np.uint8)
    raise UsageError(f"unknown output dtype {dtype!r} (choose from {', '.join(DTYPES)})")


def dequantize(q: np.ndarray) -> np.ndarray:
    if q.dtype == np.uint8:
        return q.astype(np.float32) / np.float32(_UINT8_SCALE)
    return q.astype(np.float32)
