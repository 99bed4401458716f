"""Running an imputation: options, the resumable chunk loop, and the output directory.

The DNA embedding of each site is computed once per chunk (in sub-chunks of ``embed_chunk`` windows)
and shared by all tiles that contain the site. Memory is bounded by the chunk size, not the chromosome.

"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cpgformer import __version__
from cpgformer.errors import UsageError
from cpgformer.impute.distributed import share_chunks
from cpgformer.impute.dna import chunk_embedding
from cpgformer.impute.imputed import FORMAT, FORMAT_VERSION, ImputedStore, open_imputed, partial_dir
from cpgformer.impute.probabilities import DTYPES, quantize, to_probabilities
from cpgformer.impute.sites import ChromSource, all_cpg_positions, observed_to_model_input
from cpgformer.impute.tiles import MAX_TILE_TOKENS, predict_block
from cpgformer.integrity import file_digests
from cpgformer.io.store import as_dataset, fasta_for
from cpgformer.io.store import reference as find_reference
from cpgformer.model import IGNORE_FINGERPRINT_HELP, Model, Predictor, as_model
from cpgformer.nn.config import DNA_PRECISIONS
from cpgformer.options import option
from cpgformer.utils.atomic import PARTIAL_PREFIX, atomic_file, replace_dir
from cpgformer.utils.locks import output_lock
from cpgformer.utils.outputs import check_output
from cpgformer.utils.progress import bar

log = logging.getLogger(__name__)

SITE_MODES = ("store", "all")


@dataclass
class ImputeOptions:
    """Everything that determines an imputation's output (batch size and threads do not); the
    ``impute`` command's flags are made from these."""

    chroms: Sequence[str] | None = option(
        None, "impute only these chromosomes", metavar="CHROMS", nargs="+", shown="all"
    )
    keep_observed: bool = option(
        False,
        "copy observed calls into the output (default: model predictions for every entry, i.e. "
        "observed entries are denoised)",
    )
    dtype: str = option("float16", "stored probabilities", choices=DTYPES)
    sites: str = option(
        "store",
        "store: the store's sites; all: every CpG of the FASTA (sites no cell observed become "
        "all-missing rows of the site window)",
        choices=SITE_MODES,
    )
    tile_sites: int = option(1024, "sites per tile (> 2 x receptive field)")
    max_tile_tokens: int = option(
        MAX_TILE_TOKENS,
        "most (site, cell) entries per forward pass (memory bound, ~1.2 KB each): tiles shrink, "
        "then cells are imputed in groups",
    )
    chunk_sites: int | None = option(
        None, "sites per stored chunk (unit of resuming)", shown="~4 M entries per chunk"
    )
    batch_size: int = option(8, "tiles per forward pass")
    embed_chunk: int = 1024
    shared_dna: bool = True  # share DNA convolutions between overlapping windows
    fasta: str | None = option(
        None, "reference FASTA", shown="the one the store records", metavar="FASTA"
    )
    temperature: float | None = option(
        None,
        "calibration temperature (see cpgformer calibrate)",
        shown="the checkpoint's",
        metavar="TEMPERATURE",
    )
    dna_precision: str = option(
        "fp32",
        "precision of the DNA network (models with DNA): bf16 is faster on CPUs with bf16 units "
        "(AVX512-BF16, AMX) and changes probabilities by up to a few 1e-4",
        choices=DNA_PRECISIONS,
    )
    ignore_fingerprint: bool = option(False, IGNORE_FINGERPRINT_HELP)
    overwrite: bool = option(False, "replace an existing output")


IMPUTE_ONLY_OPTIONS = ("embed_chunk", "shared_dna")
"""Fields of :class:`ImputeOptions` for Python callers, not flags."""

REGIONS_GROUP = (
    "regions (write a cells x regions AnnData .h5ad instead of the per-CpG imputed store)"
)
LAUNCH_GROUP = "several processes, GPUs or nodes writing one output (as for train; torchrun and SLURM srun too)"


@dataclass
class ImputeLaunch:
    """Where and how an imputation runs, and whether it sums over regions (the ``impute``
    command's remaining flags): none of it changes a per-CpG output."""

    device: str = option("cpu", "where the model runs: cpu, cuda, cuda:1, mps")
    threads: int | None = option(None, "torch CPU threads", shown="torch's choice")
    regions: str | None = option(
        None,
        "sum the imputation over these regions (BED; a CpG counts when its start lies in "
        "[start, end)); -o is then the .h5ad file to write",
        metavar="BED",
        group=REGIONS_GROUP,
    )
    bin_size: int | None = option(
        None, "sum over fixed bins of N bp (instead of --regions)", metavar="N", group=REGIONS_GROUP
    )
    region_values: str = option(
        "imputed",
        "imputed: observed calls kept in the region means; denoised: model probabilities "
        "everywhere",
        choices=("imputed", "denoised"),
        group=REGIONS_GROUP,
    )
    accelerator: str | None = option(
        None,
        "cpu, gpu, mps or auto (with --devices/--num-nodes; replaces --device)",
        group=LAUNCH_GROUP,
    )
    devices: str | None = option(
        None, "processes per node: a count, a list like 0,1, or auto", group=LAUNCH_GROUP
    )
    num_nodes: int | None = option(None, "nodes taking part", shown="1", group=LAUNCH_GROUP)

    @property
    def distributed(self) -> bool:
        """Launched over several processes (any of --accelerator/--devices/--num-nodes given)."""
        return bool(self.accelerator or self.devices or self.num_nodes)


def default_chunk_sites(n_cells: int) -> int:
    """Rows per chunk: ~4 M (site, cell) entries, between 1,024 and 65,536 rows, a multiple of 256."""
    rows = (1 << 22) // max(1, n_cells)
    return int(min(65536, max(1024, rows // 256 * 256)))


def _clean_partials(work: Path) -> None:
    """Remove temporary files that killed earlier runs left inside a resumed output."""
    for path in work.rglob(PARTIAL_PREFIX + "*"):
        if path.is_file():
            path.unlink()


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_file(path) as fh:
        np.save(fh, np.asarray(arr))


def _save_json(path: Path, data: dict) -> None:
    with atomic_file(path, "w") as fh:
        json.dump(data, fh, indent=1, default=_json_default)
        fh.write("\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def impute(
    store: Any,
    model: Model | str | os.PathLike[str],
    out: str | os.PathLike[str],
    options: ImputeOptions | None = None,
    *,
    device: str | torch.device | None = None,
) -> ImputedStore:
    """Impute every (site, cell) of ``store`` with ``model`` into the imputed store ``out``.

    ``store``: a path or an open :class:`cpgformer.io.store.Dataset`; ``model``: a checkpoint path or a
    :class:`cpgformer.model.Model`; ``device``: where the model runs (default CPU; the output does
    not depend on it beyond floating-point rounding, so a run may resume on another device).
    Resumes an interrupted run with the same settings; see :mod:`cpgformer.impute`.
    """
    opts = options or ImputeOptions()
    out = Path(out)
    inputs = [getattr(store, "path", store), _model_path(model), opts.fasta]
    check_output(out, "imputed", overwrite=opts.overwrite, inputs=inputs)
    with output_lock(out):  # one writer per output; the partial run below is ours to resume
        return _impute(store, model, out, opts, device)


def _model_path(model: Model | str | os.PathLike[str]) -> Any:
    return model.path if isinstance(model, Model) else model


def _impute(
    store: Any,
    model: Model | str | os.PathLike[str],
    out: Path,
    opts: ImputeOptions,
    device: Any = None,
    *,
    ranks: Any = None,
    regions: Any = None,
) -> Any:
    """:func:`impute` while holding the output's lock.

    ``ranks`` (a :class:`cpgformer.impute.distributed.Ranks`): one of several processes sharing the
    chunks; the main rank holds the lock, prepares the output and finishes it, the others wait for
    it and return None. ``regions`` (a :class:`cpgformer.impute.regions.RegionOutput`): write
    cells x regions sums instead of the per-CpG matrix.
    """
    main = ranks is None or ranks.is_main
    if not main:
        ranks.wait_ready()  # the main rank checks everything first; a failure there ends us quietly
    ds = as_dataset(store)
    source = as_model(model)
    if source.network is not None:
        source.network.set_dna_precision(opts.dna_precision)
    predictor = source.predictor(device)
    out = Path(out)
    _check_options(opts)
    cell_ids = source.check(ds, opts.ignore_fingerprint)
    temperature = float(opts.temperature if opts.temperature else source.temperature)
    if temperature <= 0:
        raise UsageError(f"temperature must be > 0, got {temperature}")
    chroms = _chromosomes(ds, opts.chroms)
    need = "the model uses DNA windows" if predictor.dna_window else None
    if need is None and opts.sites == "all":
        need = "--sites all"
    reference = find_reference(opts.fasta, ds, need) if need else None
    sources = []
    for c in chroms:
        positions = all_cpg_positions(reference, c) if opts.sites == "all" else None
        sources.append(ChromSource(ds, c, positions))
    chunk_sites = int(opts.chunk_sites or default_chunk_sites(ds.n_cells))
    if chunk_sites < 1:
        raise UsageError(f"chunk size must be >= 1 site, got {chunk_sites}")
    fasta = fasta_for(opts.fasta, ds)
    plan = _plan(ds, source, predictor, opts, temperature, fasta, chunk_sites, sources)
    if regions is not None:
        if regions.values == "denoised" and opts.keep_observed:
            raise UsageError(
                "--region-values denoised uses the model everywhere: drop --keep-observed"
            )
        regions.prepare(ds, sources, chroms, predictor.data_mode, chunk_sites)
        plan.update(regions.plan_entries())
    work = partial_dir(out)
    if main:
        inputs = [ds.path, _model_path(model), fasta]
        kind = "imputed" if regions is None else "h5ad"
        check_output(out, kind, overwrite=opts.overwrite, inputs=inputs)
        work = _work_dir(out, plan, opts.overwrite)
        ds.cell_table.to_csv(work / "cells.tsv.tmp", sep="\t", index=False, na_rep="NA")
        os.replace(work / "cells.tsv.tmp", work / "cells.tsv")
    chunks = _ChunkWriter(
        work, plan, sources, predictor, reference, cell_ids, temperature, opts, regions
    )
    if ranks is not None:  # every rank computes its share of the chunks not yet written
        share_chunks(ranks, chunks)
        if not main:
            return None
    _run_chunks(chunks, log_skipped=ranks is None)
    if regions is not None:
        return regions.finish(work, out, plan, ds, source.config_dict)
    manifest = dict(plan)
    manifest.update(
        {
            "complete": True,
            "package_version": __version__,
            "model_config": source.config_dict,
            "tile_sites": opts.tile_sites,
            "margin_sites": predictor.margin,
            "n_cells": ds.n_cells,
            "n_sites": int(sum(s.n_sites for s in sources)),
        }
    )
    _finish(work, out, manifest)
    log.info(
        "imputed %d sites x %d cells on %d chromosome(s) into %s",
        manifest["n_sites"],
        ds.n_cells,
        len(sources),
        out,
    )
    return open_imputed(out)


def _check_options(opts: ImputeOptions) -> None:
    if opts.dtype not in DTYPES:
        raise UsageError(f"unknown output dtype {opts.dtype!r} (choose from {', '.join(DTYPES)})")
    if opts.sites not in SITE_MODES:
        raise UsageError(f"--sites must be one of {', '.join(SITE_MODES)}, got {opts.sites!r}")


def _chromosomes(ds: Any, wanted: Sequence[str] | None) -> list[str]:
    """``wanted`` (default: all of the store's), each checked to be in the store."""
    chroms = list(wanted) if wanted else list(ds.chromosomes)
    for c in chroms:
        if c not in ds.chromosomes:
            raise UsageError(
                f"{ds.path}: chromosome {c!r} is not in the store (has {', '.join(ds.chromosomes[:10])})"
            )
    return chroms


def _plan(
    ds: Any,
    source: Model,
    predictor: Predictor,
    opts: ImputeOptions,
    temperature: float,
    fasta: str | None,
    chunk_sites: int,
    sources: Sequence[ChromSource],
) -> dict:
    """Everything that determines the output: a resumed run must have the same plan."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "store": str(Path(ds.path).resolve()),
        "store_fingerprint": ds.fingerprint,
        "checkpoint_id": source.checkpoint_id,
        "temperature": temperature,
        "data_mode": predictor.data_mode,
        # only when it changes the output (plans of earlier fp32 runs stay valid for resuming)
        **(
            {"dna_precision": "bf16"}
            if predictor.dna_window and opts.dna_precision == "bf16"
            else {}
        ),
        "keep_observed": bool(opts.keep_observed),
        "dtype": opts.dtype,
        "sites": opts.sites,
        "fasta": str(fasta) if fasta else None,
        "chunk_sites": chunk_sites,
        "cells": list(ds.cells),
        "chromosomes": [
            {
                "name": s.chrom,
                "dir": str(k),
                "n_sites": s.n_sites,
                "n_chunks": math.ceil(s.n_sites / chunk_sites),
            }
            for k, s in enumerate(sources)
        ],
    }


def _work_dir(out: Path, plan: dict, overwrite: bool) -> Path:
    """The partial output directory: fresh, or an unfinished run with the same plan to resume."""
    work = partial_dir(out)
    plan_path = work / "plan.json"
    if work.exists():
        try:
            with open(plan_path) as fh:
                old = json.load(fh)
        except (OSError, ValueError):
            old = None
        if old is None:  # a run stopped before its plan was written: nothing to adopt
            log.info("removing %s (an earlier run stopped before it started)", work)
            shutil.rmtree(work)
        elif old != json.loads(json.dumps(plan, default=_json_default)):
            if not overwrite:
                raise UsageError(
                    f"{work}: an unfinished imputation with other settings (store, checkpoint or "
                    "options) is there; rerun it with its settings to resume, or pass --overwrite"
                )
            shutil.rmtree(work)
        else:
            log.info("resuming the unfinished imputation in %s", work)
    if not work.exists():
        work.mkdir(parents=True)
        _save_json(plan_path, plan)
    return work


class _ChunkWriter:
    """Computes and writes chunk ``i`` of chromosome ``k`` of a prepared output directory (the unit
    of resuming and of sharing work between ranks): probabilities ``p-<i>.npy``, or with
    ``regions`` that chunk's region sums."""

    def __init__(
        self,
        work: Path,
        plan: dict,
        sources: list[ChromSource],
        predictor: Predictor,
        reference: Any,
        cell_ids: np.ndarray,
        temperature: float,
        opts: ImputeOptions,
        regions: Any = None,
    ) -> None:
        self.work, self.plan, self.sources, self.predictor = work, plan, sources, predictor
        self.reference, self.cell_ids, self.temperature, self.opts = (
            reference,
            cell_ids,
            temperature,
            opts,
        )
        self.regions = regions
        self.chunk_sites = int(plan["chunk_sites"])
        self._windows: dict[int, Callable[[int, int], np.ndarray] | None] = {}

    def items(self) -> list[tuple[int, int]]:
        """Every (chromosome, chunk) in output order."""
        return [
            (k, i) for k, c in enumerate(self.plan["chromosomes"]) for i in range(c["n_chunks"])
        ]

    def path(self, k: int, i: int) -> Path:
        cdir = self.work / "chroms" / str(k)
        return cdir / (f"p-{i:06d}.npy" if self.regions is None else self.regions.chunk_name(i))

    def done(self, k: int, i: int) -> bool:
        return self.path(k, i).exists()

    def static(self, k: int) -> None:
        """Positions and observed calls of chromosome ``k`` (not needed for region sums)."""
        cdir = self.work / "chroms" / str(k)
        cdir.mkdir(parents=True, exist_ok=True)
        if self.regions is None:
            _write_static(cdir, self.sources[k])

    def compute(self, k: int, i: int) -> None:
        src = self.sources[k]
        if k not in self._windows:
            self._windows[k] = (
                windows_fn_for(self.reference, src, self.predictor.dna_window)
                if self.predictor.dna_window
                else None
            )
        a, b = i * self.chunk_sites, min(src.n_sites, (i + 1) * self.chunk_sites)
        probs = _impute_chunk(
            self.predictor,
            src,
            a,
            b,
            self.cell_ids,
            self._windows[k],
            self.temperature,
            self.opts,
        )
        stored = quantize(probs, self.opts.dtype)
        path = self.path(k, i)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.regions is None:
            _save_npy(path, stored)
        else:
            self.regions.write_chunk(path, k, src, a, b, stored)


def _run_chunks(chunks: _ChunkWriter, log_skipped: bool = True) -> None:
    """Write every chunk not written yet (an earlier run's chunks are kept)."""
    total = len(chunks.items())
    done_before = 0
    with bar(total, desc="imputing", unit="chunk") as progress_bar:
        for k in range(len(chunks.sources)):
            chunks.static(k)
            for i in range(chunks.plan["chromosomes"][k]["n_chunks"]):
                if chunks.done(k, i):
                    done_before += 1
                else:
                    chunks.compute(k, i)
                progress_bar.update(1)
    if done_before and log_skipped:
        log.info("skipped %d of %d chunks finished by an earlier run", done_before, total)


def _finish(work: Path, out: Path, manifest: dict) -> None:
    """Manifest (with file digests) last, then the partial directory becomes ``out``."""
    _clean_partials(work)
    manifest["files"] = file_digests(work)  # sizes and SHA-256 (cpgformer check)
    _save_json(work / "manifest.json", manifest)
    (work / "plan.json").unlink()
    replace_dir(work, out)


def _write_static(cdir: Path, src: ChromSource) -> None:
    """Positions and observed calls of one chromosome (skipped when an earlier run wrote them)."""
    if not (cdir / "positions.npy").exists():
        _save_npy(cdir / "positions.npy", np.asarray(src.positions, dtype=np.int64))
    if (cdir / "indptr.npy").exists():
        return
    arrays = src.csr_arrays()
    for name, arr in arrays.items():
        if name != "indptr":
            _save_npy(cdir / f"{name}.npy", arr)
    _save_npy(cdir / "indptr.npy", arrays["indptr"])  # written last: marks the set complete


def windows_fn_for(
    reference: Any, src: ChromSource, width: int
) -> Callable[[int, int], np.ndarray]:
    def windows(a: int, b: int) -> np.ndarray:
        return reference.windows(src.chrom, np.asarray(src.positions[a:b]), width)

    windows.reference = reference  # type: ignore[attr-defined]
    return windows


def _impute_chunk(
    predictor: Predictor,
    src: ChromSource,
    a: int,
    b: int,
    cell_ids: np.ndarray,
    windows_fn: Callable[[int, int], np.ndarray] | None,
    temperature: float,
    opts: ImputeOptions,
) -> np.ndarray:
    """Probabilities ``[b - a, C]`` of rows ``[a, b)`` (reads m rows of context on each side)."""
    m = predictor.margin
    lo, hi = max(0, a - m), min(src.n_sites, b + m)
    continuous = predictor.data_mode == "continuous"
    observed = src.betas(lo, hi) if continuous else src.states(lo, hi)
    model_input = observed_to_model_input(observed, continuous)
    embedding = None
    if windows_fn is not None:
        embedding = chunk_embedding(predictor, src, lo, hi, windows_fn, opts)
    raw = predict_block(
        predictor,
        model_input,
        np.asarray(src.positions[lo:hi], dtype=np.int64),
        a - lo,
        b - lo,
        cell_ids=cell_ids,
        dna_embedding=embedding,
        tile_sites=opts.tile_sites,
        batch_size=opts.batch_size,
        max_tokens=opts.max_tile_tokens,
    )
    probs = to_probabilities(raw, predictor.data_mode, temperature)
    if opts.keep_observed:
        obs = observed[a - lo : b - lo]
        seen = obs >= 0
        probs[seen] = obs[seen].astype(np.float32)
    return probs
