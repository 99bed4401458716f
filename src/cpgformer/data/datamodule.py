"""Lightning DataModule: streams perturbed segments from a dataset store.

A segment is read as one slice of the memory-mapped CSR arrays and densified as an L x C matrix only
when it is served; a chromosome is never materialised. DNA windows are gathered from the store's
FASTA when the model uses DNA. Batches hold segments of equal length (a chromosome shorter than the
segment length gives a shorter segment that is batched with equal-length ones only).

Distribution across processes is done here (not by Lightning's sampler replacement): batches are
formed globally from a seeded shuffle, then batch ``k`` goes to rank ``k % world_size``. Training pads
the batch list so every rank runs the same number of steps; validation and test never pad, so every
validation entry is scored exactly once across ranks.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from torch.utils.data import Dataset as TorchDataset

from cpgformer.data.batch import Batch, SegmentItem, collate, dna_sequence, rest_totals
from cpgformer.data.config import DataConfig
from cpgformer.data.masking import (
    EmpiricalSampler,
    MaskingConfig,
    perturb,
    segment_rng,
)
from cpgformer.data.segments import SPLITS, Segment, resolve_split
from cpgformer.errors import UsageError

log = logging.getLogger(__name__)


class _EpochHolder:
    """What Lightning sees as ``batch_sampler.sampler``: it calls ``set_epoch`` on it every epoch."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)


class SegmentBatchSampler(Sampler[list[tuple[int, int, int]]]):
    """Yields batches of ``(segment index, epoch, batch number)`` keys for one rank.

    Segments are shuffled with (seed, epoch) when ``shuffle``; batches hold equal-length segments;
    batch ``k`` of the global list goes to rank ``k % world_size``. With ``pad`` the global list is
    extended by repeating its first batches so all ranks get the same count (needed for DDP training).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = False,
    ) -> None:
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.pad = pad
        self.sampler = _EpochHolder()
        self._resume: tuple[int, int] | None = None

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Continue a run that had taken ``batches_done`` batches of epoch ``epoch``: the next
        iteration starts with the batch after them (a finished epoch continues with the next one)."""
        if batches_done >= len(self):
            epoch, batches_done = epoch + 1, 0
        self.set_epoch(epoch)
        self._resume = (epoch, batches_done)

    def global_batches(self) -> list[list[int]]:
        n = self.lengths.size
        if self.shuffle:
            rng = np.random.default_rng(
                np.random.SeedSequence([self.seed & 0xFFFFFFFF, 7, self.epoch])
            )
            order = rng.permutation(n)
        else:
            order = np.arange(n)
        batches: list[list[int]] = []
        buckets: dict[int, list[int]] = {}
        for i in order.tolist():
            bucket = buckets.setdefault(int(self.lengths[i]), [])
            bucket.append(i)
            if len(bucket) == self.batch_size:
                batches.append(bucket)
                buckets[int(self.lengths[i])] = []
        batches.extend(b for b in buckets.values() if b)
        if self.pad and batches and len(batches) % self.world_size:
            extra = self.world_size - len(batches) % self.world_size
            batches.extend(batches[k % len(batches)] for k in range(extra))
        return batches

    def rank_batches(self) -> list[tuple[int, list[int]]]:
        """(global batch number, segment indices) of this rank's batches."""
        return list(enumerate(self.global_batches()))[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        skip = 0
        if self._resume is not None:
            if self._resume[0] == self.epoch:
                skip = self._resume[1]
            self._resume = None
        for number, batch in self.rank_batches()[skip:]:
            yield [(i, self.epoch, number) for i in batch]

    def __len__(self) -> int:
        n_batches = len(self.global_batches())
        if self.pad:
            return math.ceil(n_batches / self.world_size)
        return len(range(self.rank, n_batches, self.world_size))


class SegmentDataset(TorchDataset):
    """Serves perturbed segments of one split. Items are keyed ``(segment index, epoch, batch number)``.

    Validation/test (``train=False``) ignore the epoch: their masks are keyed by (seed, chromosome,
    segment index) only. The store (and FASTA) are opened lazily in each worker process.
    """

    def __init__(
        self,
        store_path: str | os.PathLike[str],
        segments: Sequence[Segment],
        *,
        train: bool,
        data_mode: str,
        masking: MaskingConfig,
        sampler: EmpiricalSampler | None,
        seed: int,
        dna_window: int = 0,
        fasta_path: str | None = None,
        resample_cells: int | None = None,
    ) -> None:
        self.store_path = str(store_path)
        self.segments = list(segments)
        self.train = train
        self.data_mode = data_mode
        self.masking = masking
        self.sampler = sampler
        self.seed = seed
        self.dna_window = dna_window or 0
        self.fasta_path = fasta_path
        self.resample_cells = resample_cells
        self._ds: Any = None
        self._reference: Any = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_ds"] = None
        state["_reference"] = None
        return state

    @property
    def dataset(self) -> Any:
        if self._ds is None:
            from cpgformer.io.store import open_dataset

            self._ds = open_dataset(self.store_path)
        return self._ds

    @property
    def reference(self) -> Any:
        if self._reference is None:
            from cpgformer.io.fasta import Reference

            self._reference = Reference(self.fasta_path)
        return self._reference

    def __len__(self) -> int:
        return len(self.segments)

    def cell_columns(
        self, epoch: int, batch_number: int, segment: Segment | None = None
    ) -> np.ndarray | None:
        """The cell columns used under ``resample_cells`` (None = all cells): in training a new
        random subset per batch and epoch; in validation/test a subset per segment, the same at
        every validation (so every validation scores the same entries)."""
        n_cells = self.dataset.n_cells
        if self.resample_cells is None or self.resample_cells >= n_cells:
            return None
        if self.train or segment is None:
            rng = segment_rng(self.seed, "cells", batch_number, epoch, purpose="cells")
        else:
            rng = segment_rng(
                self.seed, f"eval-cells:{segment.chrom}", segment.index, None, "cells"
            )
        return np.sort(rng.choice(n_cells, size=self.resample_cells, replace=False))

    def __getitem__(self, key: int | tuple[int, int, int]) -> SegmentItem:
        if isinstance(key, tuple):
            index, epoch, batch_number = key
        else:
            index, epoch, batch_number = int(key), 0, int(key)
        seg = self.segments[index]
        ds = self.dataset
        if self.data_mode == "binary":
            values = ds.states(seg.chrom, seg.start, seg.stop)
        else:
            values = ds.betas(seg.chrom, seg.start, seg.stop)
        columns = self.cell_columns(epoch, batch_number, seg)
        cell_ids = np.arange(ds.n_cells, dtype=np.int64)
        rest = None
        if columns is not None:
            # the input summaries of the kept cells still count every cell of the segment
            rest = rest_totals(values, columns, self.data_mode)
            values = values[:, columns]
            cell_ids = cell_ids[columns]
        rng = segment_rng(self.seed, seg.chrom, seg.index, epoch if self.train else None)
        assert self.sampler is not None
        positions = np.asarray(ds.positions(seg.chrom)[seg.start : seg.stop], dtype=np.int64)
        perturbed, loss_mask = perturb(values, self.masking, self.sampler, rng, positions)
        dna_seq = dna_starts = None
        if self.dna_window:  # the covered sequence: the model shares convolutions between windows
            dna_seq, dna_starts = dna_sequence(
                self.reference, seg.chrom, positions, self.dna_window
            )
        return SegmentItem(
            values=perturbed,
            targets=values.astype(np.float32),
            loss_mask=loss_mask,
            positions=positions,
            cell_ids=cell_ids,
            chrom_id=seg.chrom_index,
            segment_id=seg.index,
            start=seg.start,
            dna_sequence=dna_seq,
            dna_starts=dna_starts,
            rest=rest,
        )


class _Collate:
    """Picklable collate function (for worker processes)."""

    def __init__(self, data_mode: str) -> None:
        self.data_mode = data_mode

    def __call__(self, items: Sequence[SegmentItem]) -> Batch:
        return collate(items, self.data_mode)


class _ResumableLoader(DataLoader):
    """The training loader: its position in the epoch is saved in checkpoints (Lightning calls
    ``state_dict``/``load_state_dict`` on loaders that have them), so a resumed run continues with
    the batch after the last one taken -- same order, same masks -- instead of restarting the epoch.
    """

    def __init__(self, *args: Any, position: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._position = position

    def state_dict(self) -> dict[str, int]:
        sampler = self.batch_sampler
        assert isinstance(sampler, SegmentBatchSampler)
        epoch, done = self._position() if self._position is not None else (sampler.epoch, 0)
        return {"epoch": int(epoch), "batches_done": int(done)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler = self.batch_sampler
        assert isinstance(sampler, SegmentBatchSampler)
        sampler.resume_at(int(state["epoch"]), int(state["batches_done"]))


class SegmentDataModule(pl.LightningDataModule):
    """Train/validation/test segments of a store for a model with ``data_mode`` and ``dna_window``.

    The split is :func:`cpgformer.data.segments.resolve_split` of the config; region hold-out gaps
    default to ``receptive_field`` sites (the model's).

    ``rank``/``world_size`` default to the attached trainer's (set in :meth:`setup`); pass them to use
    the module without a trainer.
    """

    def __init__(
        self,
        store: str | os.PathLike[str],
        config: DataConfig | None = None,
        *,
        data_mode: str = "binary",
        dna_window: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        receptive_field: int = 0,
    ) -> None:
        super().__init__()
        from cpgformer.io.store import open_dataset

        self.store_path = str(store)
        self.config = config or DataConfig()
        self.data_mode = data_mode
        self.dna_window = dna_window or 0
        self.rank = rank
        self.world_size = world_size
        self.store = open_dataset(store)
        if self.dna_window and not self.store.fasta_path:
            raise UsageError(
                f"{store}: the model uses DNA (dna window {self.dna_window}) but the store was prepared "
                "without a reference FASTA; use --dna-window 0 or re-run prepare with --fasta"
            )
        cfg = self.config
        self.receptive_field = int(receptive_field)
        positions = {c: self.store.positions(c) for c in self.store.chromosomes}
        self.plan = resolve_split(
            positions,
            segment_length=cfg.segment_length,
            split=cfg.split,
            val_chromosomes=cfg.val_chromosomes,
            test_chromosomes=cfg.test_chromosomes,
            val_fraction=cfg.val_fraction,
            test_fraction=cfg.test_fraction,
            region_block_sites=cfg.region_block_sites,
            region_gap_sites=cfg.region_gap_sites,
            receptive_field=self.receptive_field,
            seed=cfg.seed,
        )
        if self.plan.note and (rank or 0) == 0:
            log.warning("%s", self.plan.note)
        log.info("split: %s", self.plan.describe())
        self.val_chromosomes: list[str] = list(self.plan.val_chromosomes)
        self.test_chromosomes: list[str] = list(self.plan.test_chromosomes)
        self.splits = self.plan.segments
        self.segments = sorted(
            (s for part in self.splits.values() for s in part),
            key=lambda s: (s.chrom_index, s.start),
        )
        for split in ("train", "val"):
            if not self.splits[split]:
                raise UsageError(
                    f"{store}: the {split} split has no segments; choose other validation/test "
                    "chromosomes or fractions"
                )
        log.info(
            "segments of %d sites: %s",
            cfg.segment_length,
            ", ".join(f"{s} {len(self.splits[s])}" for s in SPLITS),
        )
        self.samplers: dict[str, EmpiricalSampler] = {}
        self.datasets: dict[str, SegmentDataset] = {}

    @property
    def n_cells(self) -> int:
        return self.store.n_cells

    @property
    def cells(self) -> list[str]:
        return list(self.store.cells)

    @property
    def fingerprint(self) -> str:
        return self.store.fingerprint

    def split_chromosomes(self, split: str) -> list[str]:
        seen: dict[str, None] = {}
        for seg in self.splits[split]:
            seen.setdefault(seg.chrom, None)
        return list(seen)

    def label_sampler(self, split: str) -> EmpiricalSampler:
        if split not in self.samplers:
            chroms = self.split_chromosomes(split) or self.split_chromosomes("train")
            self.samplers[split] = EmpiricalSampler.from_store(
                self.store,
                chroms,
                self.data_mode,
                n=self.config.label_sample_size,
                seed=self.config.seed + SPLITS.index(split),
            )
        return self.samplers[split]

    def dataset(self, split: str) -> SegmentDataset:
        if split not in self.datasets:
            cfg = self.config
            self.datasets[split] = SegmentDataset(
                self.store_path,
                self.splits[split],
                train=split == "train",
                data_mode=self.data_mode,
                masking=cfg.masking,
                sampler=self.label_sampler(split),
                seed=cfg.seed,
                dna_window=self.dna_window,
                fasta_path=self.store.fasta_path,
                resample_cells=cfg.resample_cells,
            )
        return self.datasets[split]

    def setup(self, stage: str | None = None) -> None:
        trainer = getattr(self, "trainer", None)
        if self.rank is None:
            self.rank = trainer.global_rank if trainer is not None else 0
        if self.world_size is None:
            self.world_size = trainer.world_size if trainer is not None else 1
        n_val = len(self.splits["val"])
        if n_val < self.world_size:
            raise UsageError(
                f"{n_val} validation segment(s) for {self.world_size} processes: every process "
                "needs at least one (use more validation chromosomes or fewer devices)"
            )

    def batch_sampler(self, split: str) -> SegmentBatchSampler:
        segs = self.splits[split]
        return SegmentBatchSampler(
            [s.length for s in segs],
            self.config.batch_size,
            shuffle=split == "train",
            seed=self.config.seed,
            rank=self.rank or 0,
            world_size=self.world_size or 1,
            pad=split == "train",
        )

    def n_batches(self, split: str, world_size: int = 1) -> int:
        """Batches per epoch of one process among ``world_size`` (training pads to equal counts)."""
        segs = self.splits[split]
        sampler = SegmentBatchSampler(
            [s.length for s in segs],
            self.config.batch_size,
            shuffle=False,
            rank=0,
            world_size=world_size,
            pad=split == "train",
        )
        return len(sampler)

    def _loader(self, split: str) -> DataLoader:
        if self.rank is None or self.world_size is None:
            self.setup()
        workers = self.config.num_workers
        # a loader of its own generator: creating its iterator must not draw from the global
        # torch RNG (dropout), or a resumed run would see other random numbers than an
        # uninterrupted one
        kwargs: dict[str, Any] = dict(
            batch_sampler=self.batch_sampler(split),
            collate_fn=_Collate(self.data_mode),
            num_workers=workers,
            persistent_workers=False,
            pin_memory=False,
            generator=torch.Generator().manual_seed(self.config.seed),
        )
        if split == "train":
            return _ResumableLoader(self.dataset(split), position=self._train_position, **kwargs)
        return DataLoader(self.dataset(split), **kwargs)

    def _train_position(self) -> tuple[int, int]:
        """(epoch, training batches completed in it) of the attached trainer."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 0
        return trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.completed

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        if not self.splits["test"]:
            raise UsageError("the test split has no segments")
        return self._loader("test")

    def params(self) -> dict[str, Any]:
        """Data parameters for the checkpoint (config plus the resolved split)."""
        d = self.config.to_dict()
        d["val_chromosomes_resolved"] = list(self.val_chromosomes)
        d["test_chromosomes_resolved"] = list(self.test_chromosomes)
        d["n_segments"] = {s: len(self.splits[s]) for s in SPLITS}
        positions = {c: self.store.positions(c) for c in self.store.chromosomes}
        d.update(self.plan.record(positions))
        d["data_mode"] = self.data_mode
        d["dna_window"] = self.dna_window
        return d
