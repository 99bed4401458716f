"""Tiny synthetic data for the benchmark and baseline tests."""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from cpgformer.benchmark.holdout import ChromData
from cpgformer.io.store import ChromArrays, write_store
from cpgformer.nn import CpGTransformer, ModelConfig


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Tiny torch ops are far faster single-threaded on a loaded 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def synthetic_states(
    n_sites: int, n_cells: int, seed: int, fill: float = 0.35
) -> tuple[np.ndarray, np.ndarray]:
    """(positions int64 [L], states int8 [L, C]): 2-kb regions methylated per cell group, noisy,
    observed in short read-like runs."""
    rng = np.random.default_rng(seed)
    positions = np.cumsum(rng.integers(8, 120, size=n_sites)).astype(np.int64)
    group = np.arange(n_cells) % 3
    region = positions // 2000
    level = rng.random((int(region.max()) + 1, 3)) > 0.5
    truth = level[region][:, group]
    noise = rng.random((n_sites, n_cells)) < 0.08
    calls = (truth ^ noise).astype(np.int8)
    observed = rng.random((n_sites, n_cells)) < fill
    return positions, np.where(observed, calls, -1).astype(np.int8)


def chrom_data(name: str, n_sites: int, n_cells: int, seed: int, **kw) -> ChromData:
    positions, states = synthetic_states(n_sites, n_cells, seed, **kw)
    return ChromData(name, positions, states)


def dense_to_chrom_arrays(name: str, positions: np.ndarray, states: np.ndarray) -> ChromArrays:
    rows, cols = np.nonzero(states != -1)
    indptr = np.zeros(states.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=states.shape[0]), out=indptr[1:])
    label = states[rows, cols].astype(np.int8)
    mc = label.astype(np.int32)
    cov = np.ones_like(mc)
    return ChromArrays(name, positions, indptr, cols.astype(np.int32), mc, cov, label)


def write_dense_store(
    path: Path, chroms: dict[str, tuple[np.ndarray, np.ndarray]], cells: list[str]
) -> Path:
    write_store(path, [dense_to_chrom_arrays(n, p, s) for n, (p, s) in chroms.items()], cells)
    return path


def tiny_store(path: Path, n_cells: int = 6, sizes: dict[str, int] | None = None) -> Path:
    sizes = sizes or {"1": 500, "2": 400, "3": 300}
    chroms = {n: synthetic_states(s, n_cells, seed=k) for k, (n, s) in enumerate(sizes.items())}
    return write_dense_store(path, chroms, [f"cell{i}" for i in range(n_cells)])


def tiny_model(n_cells: int, seed: int = 0, dna_window: int = 0) -> CpGTransformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        n_cells=n_cells,
        dna_window=dna_window,
        hidden=16,
        n_heads=2,
        head_dim=8,
        n_layers=2,
        site_window=5,
        state_embed=8,
        cell_embed=8,
        dna_embed=8,
        attention_dropout=0.0,
    )
    return CpGTransformer(cfg).eval()


def benchmark_script(name: str) -> ModuleType:
    """The script ``benchmarks/NAME.py`` loaded as a module (the folder is not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
