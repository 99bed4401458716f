"""Shared fixtures: where ``../shared`` is, small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CPGFORMER_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared() -> Path:
    """The read-only ``shared/`` folder beside the repository (real data, golden outputs)."""
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED} (set CPGFORMER_SHARED)")
    return SHARED


@pytest.fixture
def one_thread():
    """Tiny model shapes: one torch thread is faster and robust on a shared, loaded machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
