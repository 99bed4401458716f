"""The DNA encoder's shared-convolution path against the plain per-window CNN (forward, gradients
of every parameter, float64), the batch's DNA sequence against the reference's windows, and bounded
memory of long inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cpgformer.codes import CODE_N
from cpgformer.data.batch import SegmentItem, collate, dna_sequence
from cpgformer.io.fasta import Reference
from cpgformer.nn import CpGTransformer, ModelConfig
from cpgformer.nn import dna as dna_mod
from cpgformer.nn.dna import sliding_max


def _encoder(layers: int, window: int = 101, dropout: float = 0.0, seed: int = 0):
    torch.manual_seed(seed)
    config = ModelConfig(n_cells=3, dna_window=window, n_conv_layers=layers, cnn_dropout=dropout)
    return CpGTransformer(config).double().dna_encoder


def _grads(encoder, out: torch.Tensor, weight: torch.Tensor) -> list[torch.Tensor]:
    params = list(encoder.parameters())
    return list(torch.autograd.grad((out * weight).sum(), params, allow_unused=False))


def _starts(kind: str, span: int, window: int, rng: np.random.Generator) -> np.ndarray:
    hi = span - window
    if kind == "dense":  # overlapping windows, every phase modulo the poolings' product
        return np.sort(np.concatenate([np.arange(0, 64), rng.integers(0, hi, 40)]))
    if kind == "sparse":  # no two windows overlap
        return np.arange(0, hi, window + 7)[:12]
    # mixed, unsorted, repeated starts, one at each end of the sequence
    s = np.concatenate([rng.integers(0, 300, 30), [0, hi, hi, 5], np.arange(600, hi, 450)])
    return rng.permutation(s)


@pytest.mark.parametrize("layers", [2, 3])
@pytest.mark.parametrize("kind", ["dense", "sparse", "mixed"])
@pytest.mark.parametrize("max_bases", [1 << 16, 300])
def test_shared_equals_per_window(layers, kind, max_bases):
    window = 101
    encoder = _encoder(layers, window).train()  # dropout 0: train mode, deterministic
    rng = np.random.default_rng(layers)
    span = 2500
    sequence = torch.from_numpy(rng.integers(0, 16, span))  # every code, N and IUPAC included
    sequence[:40] = CODE_N  # a contig edge padded with N
    starts = torch.from_numpy(_starts(kind, span, window, rng))
    windows = sequence.unfold(0, window, 1)[starts]
    plain = encoder(windows)
    shared = encoder.encode(sequence, starts, max_bases=max_bases)
    torch.testing.assert_close(shared, plain, rtol=1e-10, atol=1e-12)
    weight = torch.from_numpy(rng.standard_normal(plain.shape))
    for a, b in zip(_grads(encoder, shared, weight), _grads(encoder, plain, weight)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_plan_chooses_by_cost():
    encoder = _encoder(2, 1001)
    dense = np.arange(0, 64 * 50, 50)  # 50 bp apart: shared
    sparse = np.arange(0, 64 * 5000, 5000)  # no overlap: one by one
    calls = encoder.plan(np.concatenate([dense, sparse + 10**6]))
    assert sorted(np.concatenate(calls[:-1]).tolist()) == list(range(64))
    assert sorted(calls[-1].tolist()) == list(range(64, 128))
    # every shared call within its bound
    calls = encoder.plan(np.arange(0, 2000 * 20, 20), max_bases=5000)
    assert len(calls) > 2 and len(calls[-1]) == 0
    for call in calls[:-1]:
        s = np.arange(0, 2000 * 20, 20)[call]
        assert s.max() - s.min() + 1001 <= 5000


def test_dropout_per_site():
    encoder = _encoder(2, 101, dropout=0.5).train()
    sequence = torch.randint(0, 4, (400,))
    starts = torch.tensor([10, 10, 10, 10, 11, 12])  # one window read three times
    torch.manual_seed(1)
    out = encoder.encode(sequence, starts)
    assert not torch.allclose(out[0], out[1]) or not torch.allclose(out[1], out[2])
    encoder.eval()
    torch.testing.assert_close(
        encoder.encode(sequence, starts)[0], encoder.encode(sequence, starts)[1]
    )


def test_windows_outside_sequence_rejected():
    encoder = _encoder(2, 101)
    with pytest.raises(ValueError, match="inside the sequence"):
        encoder.encode(torch.zeros(150, dtype=torch.long), torch.tensor([0, 50]))


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_model_sequence_input_equals_windows(impl):
    torch.manual_seed(0)
    config = ModelConfig(n_cells=4, dna_window=101, site_window=5, n_layers=2)
    model = CpGTransformer(config).double().eval()  # no dropout; gradients as in training
    batch, length = 2, 40
    g = torch.Generator().manual_seed(0)
    states = torch.randint(0, 3, (batch, length, 4), generator=g)
    positions = torch.cumsum(torch.randint(1, 90, (batch, length), generator=g), dim=1)
    sequence = torch.randint(0, 5, (batch, int(positions.max()) + 101), generator=g)
    windows = torch.stack([sequence[b].unfold(0, 101, 1)[positions[b]] for b in range(batch)])
    cells = torch.arange(4).repeat(batch, 1)
    a = model(states, positions, cells, dna=windows, attention_impl=impl)
    b = model(
        states, positions, cells, dna_sequence=sequence, dna_starts=positions, attention_impl=impl
    )
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    ga = torch.autograd.grad(a.square().sum(), list(model.parameters()), allow_unused=True)
    gb = torch.autograd.grad(b.square().sum(), list(model.parameters()), allow_unused=True)
    for x, y in zip(ga, gb):
        assert (x is None) == (y is None)
        if x is not None:
            torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-11)


def test_batch_sequence_matches_reference_windows(tmp_path):
    contig = "".join(np.random.default_rng(0).choice(list("ACGTN"), 3000))
    path = tmp_path / "g.fa"
    path.write_text(">c1\n" + "\n".join(contig[i : i + 60] for i in range(0, 3000, 60)) + "\n")
    ref = Reference(path, cache=tmp_path / "cache")
    width = 101
    # both contig ends (N beyond), dense runs, a far isolated site, a duplicate position
    positions = np.array([0, 3, 3, 20, 45, 49, 700, 760, 1500, 2950, 2999])
    seq, starts = dna_sequence(ref, "c1", positions, width)
    assert len(seq) <= (positions.max() - positions.min() + width)
    windows = seq[starts[:, None] + np.arange(width)]
    np.testing.assert_array_equal(windows, ref.windows("c1", positions, width))
    # collation pads to the longest sequence and keeps the starts
    other = positions[:4]
    seq2, starts2 = dna_sequence(ref, "c1", other, width)
    items = [
        SegmentItem(
            values=np.zeros((4, 2), np.int8),
            targets=np.zeros((4, 2), np.float32),
            loss_mask=np.zeros((4, 2), bool),
            positions=p[:4],
            cell_ids=np.arange(2),
            chrom_id=0,
            segment_id=i,
            start=0,
            dna_sequence=s,
            dna_starts=st[:4],
        )
        for i, (p, s, st) in enumerate([(positions, seq, starts), (other, seq2, starts2)])
    ]
    batch = collate(items)
    assert batch.dna_sequence.shape == (2, max(len(seq), len(seq2)))
    for b, (p, _, _) in enumerate([(positions, seq, starts), (other, seq2, starts2)]):
        got = batch.dna_sequence[b].unfold(0, width, 1)[batch.dna_starts[b]].numpy()
        np.testing.assert_array_equal(got, ref.windows("c1", p[:4], width))


def _peak_bytes(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    level = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        level += event.self_cpu_memory_usage
        peak = max(peak, level)
    return peak


@pytest.mark.slow
def test_memory_of_long_inputs_is_bounded(monkeypatch):
    """Peak memory of encoding does not grow with the number of sites (chunks), with or without
    gradients."""
    monkeypatch.setattr(dna_mod, "WINDOW_CHUNK", 32)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    encoder = CpGTransformer(ModelConfig(n_cells=2, dna_window=101)).dna_encoder
    peaks = {}
    for n in (128, 512):
        dense = torch.arange(n) * 10  # shared
        sparse = torch.arange(n) * 150 + dense[-1] + 200  # one by one
        starts = torch.cat([dense, sparse])
        sequence = torch.randint(0, 4, (int(starts.max()) + 101,))

        def infer(sequence=sequence, starts=starts):
            with torch.inference_mode():
                encoder.encode(sequence, starts, max_bases=600)

        def train(sequence=sequence, starts=starts):
            encoder.encode(sequence, starts, max_bases=600).sum().backward()

        peaks[n] = (_peak_bytes(infer), _peak_bytes(train))
    small, large = peaks[128], peaks[512]
    # what grows with n: the outputs, the per-site hidden vectors and their gradients
    per_site = 4 * 8 * (128 + 32)
    assert large[0] < 1.2 * small[0] + per_site * 768, peaks
    assert large[1] < 1.2 * small[1] + per_site * 768, peaks
    # without chunks the activations of all windows would be alive at once: far more
    assert large[1] < 512 * 2 * 128 * 91 * 4, peaks


def test_bf16_close_to_fp32():
    torch.manual_seed(0)
    model = CpGTransformer(ModelConfig(n_cells=2, dna_window=201)).eval()
    sequence = torch.randint(0, 4, (3000,))
    starts = torch.arange(0, 2700, 13).unsqueeze(0)
    full = model.embed_dna_sequence(sequence[None], starts)
    model.set_dna_precision("bf16")
    half = model.embed_dna_sequence(sequence[None], starts)
    assert half.dtype == torch.float32
    scale = full.abs().max()
    assert 0 < (half - full).abs().max() < 0.05 * scale
    # windows input (the benchmark's path) runs in bf16 too, as the sequence input does
    windows = sequence.unfold(0, 201, 1)[starts[0]]
    with torch.no_grad():
        by_windows = model.embed_dna(windows)
    torch.testing.assert_close(by_windows, half[0].detach(), rtol=0.02, atol=0.02 * scale.item())
    assert not torch.equal(by_windows, full[0].detach())
    with pytest.raises(ValueError, match="precision"):
        model.set_dna_precision("fp16")


def test_training_batches_feed_the_model_as_windows_would(tmp_path):
    """Data module -> batch (covered sequence + starts) -> training forward equals the model on the
    reference's windows of the same sites."""
    import sys
    from pathlib import Path

    from cpgformer.data.datamodule import DataConfig, SegmentDataModule
    from cpgformer.training.task import CpGTask

    sys.path.insert(0, str(Path(__file__).parent))
    from _training_helpers import make_store

    rng = np.random.default_rng(0)
    fasta = tmp_path / "ref.fa"
    with open(fasta, "w") as handle:
        for name in ("1", "5"):
            seq = "".join(rng.choice(list("ACGT"), size=3000))
            handle.write(
                f">{name}\n" + "\n".join(seq[i : i + 60] for i in range(0, 3000, 60)) + "\n"
            )
    store = make_store(tmp_path / "s", {"1": 48, "5": 16}, 4, seed=3, fasta=str(fasta))
    dm = SegmentDataModule(
        store,
        DataConfig(segment_length=16, batch_size=2, val_chromosomes=("5",), test_chromosomes=()),
        dna_window=101,
        rank=0,
        world_size=1,
    )
    torch.manual_seed(0)
    config = ModelConfig(n_cells=4, dna_window=101, n_layers=1)
    task = CpGTask(config)
    task.model.eval()
    ref = Reference(fasta, cache=tmp_path / "cache")
    batch = next(iter(dm.train_dataloader()))
    assert batch.dna is None and batch.dna_sequence is not None
    windows = []
    for k in range(batch.batch_size):
        start = int(batch.starts[k])
        pos = dm.store.positions("1")[start : start + 16]
        windows.append(ref.windows("1", np.asarray(pos), 101))
    with torch.no_grad():
        got = task(batch)
        want = task.model(
            batch.states, batch.positions, batch.cell_ids, dna=torch.from_numpy(np.stack(windows))
        )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("pool", "dilation"), [(1, 1), (2, 1), (2, 4), (4, 1), (4, 8), (3, 2)])
def test_sliding_max_equals_max_pool(dtype: torch.dtype, pool: int, dilation: int) -> None:
    h = torch.relu(torch.randn(1, 6, 300, generator=torch.Generator().manual_seed(pool))).to(dtype)
    with torch.no_grad():
        got = sliding_max(h, pool, dilation)
    assert torch.equal(got, F.max_pool1d(h, pool, stride=1, dilation=dilation))
