"""Small builders for the reliability tests: call files, a store, a tiny checkpoint, the CLI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cpgformer.cli import main

ROWS = {
    "c1": [("chr1", 2, 1, 0), ("chr1", 6, 0, 1), ("chr1", 10, 2, 1), ("chr2", 3, 1, 1)],
    "c2": [("chr1", 2, 0, 2), ("chr1", 14, 1, 0), ("chr2", 3, 0, 1), ("chr2", 8, 3, 0)],
}


def cov_text(rows) -> str:  # noqa: ANN001
    return "".join(f"{c}\t{p}\t{p}\t{100.0 * m / (m + u):.1f}\t{m}\t{u}\n" for c, p, m, u in rows)


def write_cells(folder: Path, rows: dict | None = None) -> list[Path]:
    """One Bismark ``.cov`` file per cell in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, cell_rows in (rows or ROWS).items():
        p = folder / f"{name}.cov"
        p.write_text(cov_text(cell_rows))
        paths.append(p)
    return paths


_LOG_LINE = re.compile(r"^(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d )?(WARNING|INFO|DEBUG) ")


def cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    """Run the CLI (not ``-q``: the warnings are part of what these tests check; log lines' batch
    timestamps removed); a failure must be one error line on stderr (exit code 2); warnings
    logged before it are allowed."""
    capsys.readouterr()
    code = main([*map(str, args)])
    raw = capsys.readouterr().err
    err = "".join(_LOG_LINE.sub(r"\1 ", line) for line in raw.splitlines(True))
    if code != 0:
        lines = [x for x in err.strip().splitlines() if not _LOG_LINE.match(x)]
        assert code == 2, err
        assert len(lines) == 1, err
        assert lines[0].startswith(f"cpgformer {args[0]}: error: "), err
        assert "Traceback" not in err
        return code, lines[0]
    return code, err


def make_store(tmp_path: Path, name: str = "store") -> Path:
    cells = write_cells(tmp_path / "cells")
    out = tmp_path / name
    assert main(["-q", "prepare", *map(str, cells), "-o", str(out)]) == 0
    return out


def tiny_checkpoint(store: Path, path: Path, seed: int = 0) -> Path:
    """A checkpoint of a tiny untrained model for ``store``."""
    import torch

    from cpgformer.checkpoint import save_checkpoint
    from cpgformer.io.store import open_dataset
    from cpgformer.nn import CpGTransformer, ModelConfig

    ds = open_dataset(store)
    torch.manual_seed(seed)
    cfg = ModelConfig(
        n_cells=ds.n_cells, dna_window=0, hidden=8, n_heads=2, head_dim=4, n_layers=1,
        site_window=3, state_embed=4, cell_embed=4,
    )  # fmt: skip
    save_checkpoint(
        path, CpGTransformer(cfg).eval(), cells=ds.cells, store_fingerprint=ds.fingerprint
    )
    return path


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative name -> content), to show nothing changed."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }
