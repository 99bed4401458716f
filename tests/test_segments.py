from __future__ import annotations

import numpy as np
import pytest

from cpgformer.data.segments import (
    Segment,
    build_segments,
    match_chromosomes,
    segment_starts,
    split_segments,
)
from cpgformer.errors import UsageError


def test_segment_starts_by_hand() -> None:
    assert segment_starts(10, 4).tolist() == [0, 4, 6]
    assert segment_starts(8, 4).tolist() == [0, 4]
    assert segment_starts(4, 4).tolist() == [0]
    assert segment_starts(3, 4).tolist() == [0]
    assert segment_starts(0, 4).tolist() == []
    assert segment_starts(2049, 1024).tolist() == [0, 1024, 1025]


@pytest.mark.parametrize("n", [1, 5, 16, 17, 31, 32, 33, 100])
def test_segments_cover_every_row_once_except_final_overlap(n: int) -> None:
    segs = build_segments({"c": n}, 16)
    covered = np.zeros(n, dtype=int)
    for s in segs:
        covered[s.start : s.stop] += 1
        assert s.length == min(16, n)
    assert covered.min() == 1
    # only the final, end-aligned window overlaps its predecessor
    assert all(s.stop == s.start + min(16, n) for s in segs)
    assert segs[-1].stop == n
    assert [s.start for s in segs[:-1]] == list(range(0, 16 * (len(segs) - 1), 16))


def test_short_and_empty_chromosomes_are_not_skipped_silently() -> None:
    segs = build_segments({"1": 40, "2": 7, "3": 0, "4": 16}, 16)
    assert segs == [
        Segment("1", 0, 0, 0, 16),
        Segment("1", 0, 1, 16, 32),
        Segment("1", 0, 2, 24, 40),
        Segment("2", 1, 0, 0, 7),
        Segment("4", 3, 0, 0, 16),
    ]


def test_match_chromosomes_maps_naming() -> None:
    assert match_chromosomes(["chr5", "chr10"], ["1", "5", "10", "X"]) == ["5", "10"]
    assert match_chromosomes(["5", "X"], ["chr1", "chr5", "chrX"]) == ["chr5", "chrX"]
    assert match_chromosomes(["chr5"], ["chr5", "5"]) == ["chr5"]  # exact wins
    with pytest.raises(UsageError, match="chr7"):
        match_chromosomes(["chr7"], ["1", "5"])


def test_split_by_chromosome() -> None:
    segs = build_segments({"1": 32, "5": 20, "10": 16}, 16)
    out = split_segments(segs, val_chromosomes=["5"], test_chromosomes=["10"])
    assert {s.chrom for s in out["train"]} == {"1"}
    assert [(s.chrom, s.start) for s in out["val"]] == [("5", 0), ("5", 4)]
    assert [(s.chrom, s.start) for s in out["test"]] == [("10", 0)]
    with pytest.raises(UsageError):
        split_segments(segs, val_chromosomes=["5"], test_chromosomes=["5"])


def test_split_by_fraction_is_seeded_and_partitions() -> None:
    segs = build_segments({"1": 16 * 50}, 16)
    a = split_segments(segs, val_fraction=0.2, test_fraction=0.1, seed=3)
    b = split_segments(segs, val_fraction=0.2, test_fraction=0.1, seed=3)
    c = split_segments(segs, val_fraction=0.2, test_fraction=0.1, seed=4)
    assert a == b and a != c
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (35, 10, 5)
    keys = [s.start for part in a.values() for s in part]
    assert sorted(keys) == [s.start for s in segs]
    with pytest.raises(UsageError):
        split_segments(segs, val_fraction=0.6, test_fraction=0.5)


def test_batch_sampler_ranks_disjoint_equal_length_batches() -> None:
    from cpgformer.data.datamodule import SegmentBatchSampler

    lengths = [16] * 7 + [5, 9]  # two short chromosomes give shorter segments
    for world in (1, 2, 3):
        val = [
            SegmentBatchSampler(lengths, 2, shuffle=False, rank=r, world_size=world)
            for r in range(world)
        ]
        seen = [i for s in val for batch in s for i, _, _ in batch]
        assert sorted(seen) == list(range(9))  # validation: every segment exactly once
        for s in val:
            assert len(list(s)) == len(s)
            for batch in s:
                assert len({lengths[i] for i, _, _ in batch}) == 1
        train = [
            SegmentBatchSampler(
                lengths, 2, shuffle=True, seed=1, rank=r, world_size=world, pad=True
            )
            for r in range(world)
        ]
        counts = {len(list(s)) for s in train}
        assert len(counts) == 1 and counts == {len(train[0])}  # equal steps on every rank
    s = SegmentBatchSampler(lengths, 2, shuffle=True, seed=1)
    first = list(s)
    s.set_epoch(1)
    assert list(s) != first and all(e == 1 for b in s for _, e, _ in b)
