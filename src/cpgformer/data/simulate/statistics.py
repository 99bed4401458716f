"""Statistics of simulated (or real) methylation calls, for validating the simulator."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)

DISTANCE_BINS = (1, 11, 26, 51, 101, 201, 401, 801, 1601, 3201, 10001)


def concordance_by_distance(
    positions: np.ndarray, states: np.ndarray, bins: Sequence[int] = DISTANCE_BINS
) -> tuple[np.ndarray, np.ndarray]:
    """P(same state) of consecutive observed CpGs of one cell, by bp distance.

    ``positions`` sorted int [n] and ``states`` 0/1 [n] of one cell on one chromosome. Returns
    ``(pairs, same)`` per bin, where bin ``j`` holds distances in ``[bins[j], bins[j+1])`` and the last bin
    everything from ``bins[-1]`` on.
    """
    positions = np.asarray(positions)
    states = np.asarray(states)
    nb = len(bins)
    if positions.size < 2:
        return np.zeros(nb, np.int64), np.zeros(nb, np.int64)
    dist = np.diff(positions)
    same = states[1:] == states[:-1]
    b = np.searchsorted(np.asarray(bins), dist, side="right") - 1
    ok = b >= 0
    pairs = np.bincount(b[ok], minlength=nb)[:nb]
    hits = np.bincount(b[ok], weights=same[ok], minlength=nb)[:nb]
    return pairs.astype(np.int64), hits.astype(np.int64)
