"""Explain predictions: sites file, receptive-field windows, integrated gradients, attention maps."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cpgformer import explain as ex
from cpgformer.codes import CODE_N, CODE_T, encode_sequence
from cpgformer.errors import InputError, UsageError
from cpgformer.io.store import open_dataset, write_store
from cpgformer.nn import CpGTransformer, ModelConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _training_helpers import dense_to_chrom  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest single-threaded (and do not fight other processes for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(n_cells: int, **overrides) -> ModelConfig:
    params = dict(
        n_cells=n_cells,
        dna_window=0,
        hidden=16,
        n_heads=2,
        head_dim=4,
        n_layers=2,
        site_window=5,
        state_embed=8,
        cell_embed=8,
        dna_embed=8,
        attention_dropout=0.0,
    )
    params.update(overrides)
    return ModelConfig(**params)


# --------------------------------------------------------------------------------------------------
# sites file


def test_read_sites_header_comments_and_label_changes(tmp_path: Path) -> None:
    f = tmp_path / "sites.tsv"
    f.write_text(
        "chrom\tposition\tcell\tlabel_change\n"
        "# a comment\n"
        "\n"
        "1\t100\tcell_01\n"
        "1 200 cell_02 mask\n"
        "X,300,cell_03,1\n"
        "X\t400\t7\t0\n"
        "X\t500\tc\tnone\n"
        "X\t600\tc\t?\n"
        "X\t700\tc\t0.25\n"
    )
    sites = ex.read_sites(f)
    assert [(s.chrom, s.position, s.cell) for s in sites] == [
        ("1", 100, "cell_01"),
        ("1", 200, "cell_02"),
        ("X", 300, "cell_03"),
        ("X", 400, "7"),
        ("X", 500, "c"),
        ("X", 600, "c"),
        ("X", 700, "c"),
    ]
    assert [s.label_change for s in sites] == [None, -1.0, 1.0, 0.0, None, -1.0, 0.25]
    assert [s.line for s in sites] == [4, 5, 6, 7, 8, 9, 10]
    assert [s.label_change_text for s in sites[:4]] == ["none", "mask", "1", "0"]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("1\t100\n", "expected 3 or 4 columns"),
        ("1\t100\tc\t1\textra\n", "expected 3 or 4 columns"),
        ("1\t1e3\tc\n", "not an integer"),
        ("1\t-5\tc\n", "negative"),
        ("1\t100\tc\tmethylated\n", "label change"),
        ("1\t100\tc\t2\n", "label change"),
    ],
)
def test_read_sites_bad_rows_name_file_and_line(tmp_path: Path, row: str, message: str) -> None:
    f = tmp_path / "sites.tsv"
    f.write_text("1\t50\tc\n" + row)
    with pytest.raises(InputError) as err:
        ex.read_sites(f)
    assert str(err.value).startswith(f"{f}:2: ")
    assert message in str(err.value)


def test_read_sites_empty_or_missing_file(tmp_path: Path) -> None:
    f = tmp_path / "sites.tsv"
    f.write_text("# nothing\n")
    with pytest.raises(InputError, match="no sites"):
        ex.read_sites(f)
    with pytest.raises(InputError, match="cannot read"):
        ex.read_sites(tmp_path / "absent.tsv")


def test_site_window_is_cut_at_chromosome_ends_never_wrapped() -> None:
    assert ex.site_window(100, 50, 40) == (10, 91)
    assert ex.site_window(100, 3, 40) == (0, 44)
    assert ex.site_window(100, 97, 40) == (57, 100)
    assert ex.site_window(5, 2, 40) == (0, 5)
    with pytest.raises(IndexError):
        ex.site_window(5, 5, 1)


# --------------------------------------------------------------------------------------------------
# acceptance 1: completeness of integrated gradients


def _random_segment(n_cells: int, length: int, dna_window: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    states = torch.randint(0, 3, (1, length, n_cells), generator=g)
    positions = torch.cumsum(torch.randint(1, 80, (1, length), generator=g), 1)
    cells = torch.arange(n_cells).unsqueeze(0)
    dna = torch.randint(0, 4, (1, length, dna_window), generator=g) if dna_window else None
    return states, positions, cells, dna


@pytest.mark.parametrize("baseline", ["unknown", "zero"])
def test_integrated_gradients_completeness(baseline: str) -> None:
    torch.manual_seed(1)
    config = tiny_config(4, dna_window=101, activation="gelu")
    model = CpGTransformer(config).double()
    with torch.no_grad():
        model.head.weight.mul_(20.0)  # outputs of order 1 (a random tiny model is nearly flat)
    states, positions, cells, dna = _random_segment(4, 5, 101, seed=2)
    attr = ex.integrated_gradients(
        model, states, positions, cells, 2, 1, dna=dna, n_steps=128, baseline=baseline
    )
    assert attr.state.shape == (5, 4) and attr.cell.shape == (4,) and attr.dna.shape == (5, 101)
    difference = attr.logit - attr.baseline_logit
    # Captum's delta is exactly (sum of attributions) - (output - baseline output) ...
    assert attr.total - difference == pytest.approx(attr.convergence_delta, abs=1e-9)
    # ... and it is small: the attributions add up to the output difference (ReLUs and max-pools
    # make the path integrand kinked, so the quadrature error shrinks slowly with n_steps)
    assert abs(difference) > 0.2
    assert abs(attr.convergence_delta) < 0.02 * abs(difference)

    # the baseline output, computed by hand with a plain forward pass
    plain = CpGTransformer(config).double()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        plain.cell_embed.weight.zero_()
        if baseline == "unknown":
            base_states = torch.zeros_like(states)  # input code 0 = unknown
            base_dna = torch.full_like(dna, CODE_N)
        else:
            plain.state_embed.embed.weight.zero_()
            plain.dna_encoder.nucleotide_embed.weight.zero_()
            base_states, base_dna = states, dna
        expected = plain.eval()(base_states, positions, cells, dna=base_dna)[0, 2, 1]
        actual = model.eval()(states, positions, cells, dna=dna)[0, 2, 1]
    assert attr.baseline_logit == pytest.approx(float(expected), abs=1e-10)
    assert attr.logit == pytest.approx(float(actual), abs=1e-10)


def test_masked_target_has_zero_own_state_attribution() -> None:
    torch.manual_seed(3)
    model = CpGTransformer(tiny_config(3)).double()
    states, positions, cells, _ = _random_segment(3, 7, 0, seed=4)
    states[0, 3, 2] = 0  # masked target: input equals the "unknown" baseline
    attr = ex.integrated_gradients(model, states, positions, cells, 3, 2, n_steps=16)
    assert attr.state[3, 2] == 0.0
    unknown = (states[0] == 0).numpy()
    assert np.all(attr.state[unknown] == 0.0)  # every unknown input: no attribution


# --------------------------------------------------------------------------------------------------
# attention maps


def test_attention_maps_uniform_weights_known_by_hand() -> None:
    model = CpGTransformer(tiny_config(4, n_layers=2, site_window=5))
    with torch.no_grad():
        for layer in model.layers:
            for attention in layer.attentions:
                attention.qkv.weight.zero_()
                attention.qkv.bias.zero_()
                if attention.positional:
                    attention.pos_proj.weight.zero_()
                    attention.pos_proj.bias.zero_()
                    attention.content_bias.zero_()
                    attention.position_bias.zero_()
    states, positions, cells, _ = _random_segment(4, 6, 0, seed=5)
    maps = ex.attention_maps(model, states, positions, cells, 0)
    assert maps.site.shape == (2, 2, 4, 5) and maps.cell.shape == (2, 2, 4, 4)
    assert list(maps.offsets) == [-2, -1, 0, 1, 2]
    # first site of the segment: offsets -2, -1 do not exist; the three others share equally
    assert np.all(np.isnan(maps.site[..., :2]))
    np.testing.assert_allclose(maps.site[..., 2:], 1 / 3, rtol=1e-6)
    np.testing.assert_allclose(maps.cell, 1 / 4, rtol=1e-6)


@pytest.mark.parametrize("mode", ["axial", "2D", "intracell", "intercell"])
def test_attention_maps_are_the_models_own_in_both_paths(mode: str) -> None:
    torch.manual_seed(6)
    model = CpGTransformer(tiny_config(5, mode=mode)).double()
    states, positions, cells, _ = _random_segment(5, 11, 0, seed=7)
    fast = ex.attention_maps(model, states, positions, cells, 5)
    model.attention_impl = "reference"
    reference = ex.attention_maps(model, states, positions, cells, 5)
    # the recomputed sublayer outputs equal the model's own (else attention_maps raises)
    assert fast.max_abs_error < 1e-12 and reference.max_abs_error < 1e-12
    for a, b in ((fast.site, reference.site), (fast.cell, reference.cell)):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(np.nansum(a, axis=-1), 1.0, rtol=1e-5)
    assert (fast.site is None) == (mode == "intercell")
    assert (fast.cell is None) == (mode == "intracell")


def test_attention_maps_refuse_recomputation_that_differs(monkeypatch) -> None:
    model = CpGTransformer(tiny_config(3)).double()
    states, positions, cells, _ = _random_segment(3, 6, 0, seed=8)
    original = ex.attention_probabilities

    def shifted(*args):
        probs, output = original(*args)
        return probs, output + 1e-2

    monkeypatch.setattr("cpgformer.explain.attention.attention_probabilities", shifted)
    with pytest.raises(RuntimeError, match="would not be the model's"):
        ex.attention_maps(model, states, positions, cells, 2)


# --------------------------------------------------------------------------------------------------
# acceptance 2: a copied cell gets the largest cell attribution


def _train_masked(model: CpGTransformer, labels: np.ndarray, positions: np.ndarray, steps: int):
    """A plain masked-call objective: hide 25 % of observed calls, BCE on them (Adam)."""
    rng = np.random.default_rng(0)
    n_sites, n_cells = labels.shape
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    length, batch = 32, 8
    cell_ids = torch.arange(n_cells).expand(batch, n_cells)
    model.train()
    for _ in range(steps):
        starts = rng.integers(0, n_sites - length, batch)
        y = np.stack([labels[s : s + length] for s in starts])
        pos = np.stack([positions[s : s + length] - positions[s] for s in starts])
        inputs = y.astype(np.int64) + 1
        hidden = (rng.random(y.shape) < 0.25) & (y >= 0)
        inputs[hidden] = 0
        logits = model(torch.as_tensor(inputs), torch.as_tensor(pos), cell_ids)
        mask = torch.as_tensor(hidden)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits[mask], torch.as_tensor(y[hidden], dtype=torch.float32)
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_copied_cell_gets_the_largest_cell_attribution(tmp_path: Path) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n_sites, n_cells = 400, 6
    labels = (rng.random((n_sites, n_cells)) < 0.5).astype(np.int8)  # independent cells ...
    labels[rng.random((n_sites, n_cells)) > 0.9] = -1
    labels[:, 3] = labels[:, 1]  # ... except cell 3, an exact copy of cell 1
    positions = np.cumsum(rng.integers(5, 50, n_sites)).astype(np.int64)
    names = [f"c{i}" for i in range(n_cells)]
    store = tmp_path / "store"
    write_store(store, [dense_to_chrom("chr1", positions, labels)], names)

    config = tiny_config(n_cells, n_layers=1, site_window=3, head_dim=8)
    model = _train_masked(CpGTransformer(config), labels, positions, steps=250)

    rows = [row for row in range(50, 350, 37) if labels[row, 3] >= 0][:4]
    queries = [ex.SiteQuery("chr1", int(positions[r]), "c3", -1.0) for r in rows]
    results = ex.explain_sites(model, open_dataset(store), queries, n_steps=64, attention=False)
    for row, expl in zip(rows, results):
        assert expl.states[expl.target_index, 3] == -1  # the copy's own call was masked
        # the model recovers the hidden call from the copied cell ...
        assert (expl.probability > 0.5) == bool(labels[row, 1])
        # ... and the copied cell gets by far the largest attribution
        totals = np.abs(expl.cell_totals)
        assert int(np.argmax(totals)) == 1, totals
        assert totals[1] > 5 * np.delete(totals, 1).max(), totals
        # pointing the right way: towards methylated when the copied call is methylated
        assert (expl.cell_totals[1] > 0) == bool(labels[row, 1])
        assert abs(expl.convergence_delta) < 0.05 * abs(expl.logit - expl.baseline_logit)


# --------------------------------------------------------------------------------------------------
# acceptance 3: a site next to a chromosome start pads with N and never wraps


def _fasta_with_distinctive_end(path: Path) -> str:
    """chrA: 300 bp of A/C/G only with CpGs at 3, 40, 80, 120, 160, 200; the last 60 bp are T."""
    rng = np.random.default_rng(1)
    seq = list(rng.choice(list("AAGGA"), size=300))  # no C at all, no T at all
    for p in (3, 40, 80, 120, 160, 200):
        seq[p], seq[p + 1] = "C", "G"
    seq[240:] = ["T"] * 60
    text = "".join(seq)
    path.write_text(">chrA\n" + "\n".join(text[i : i + 60] for i in range(0, 300, 60)) + "\n")
    return text


def test_site_near_chromosome_start_is_padded_not_wrapped(tmp_path: Path) -> None:
    from cpgformer.io.fasta import Reference

    fasta = tmp_path / "ref.fa"
    sequence = _fasta_with_distinctive_end(fasta)
    positions = np.array([3, 40, 80, 120, 160, 200], dtype=np.int64)
    labels = np.array(
        [[1, 0, -1], [1, 1, 0], [0, -1, 1], [1, 0, 0], [-1, 1, 1], [0, 0, 1]], dtype=np.int8
    )
    store = tmp_path / "store"
    write_store(store, [dense_to_chrom("chrA", positions, labels)], ["a", "b", "c"])
    torch.manual_seed(2)
    model = CpGTransformer(tiny_config(3, dna_window=101, n_layers=1))

    width, half = 101, 50
    (expl,) = ex.explain_sites(
        model,
        open_dataset(store),
        [ex.SiteQuery("chrA", 3, "b", -1.0)],
        reference=Reference(fasta),
        n_steps=8,
    )
    assert expl.target_index == 0 and list(expl.positions) == [3, 40, 80]  # 2 sites right only
    assert expl.dna.shape == (3, width) and expl.dna_attribution.shape == (3, width)
    # window of position p covers [p - 50, p + 50]: bases before the chromosome start are N
    for i, p in enumerate(expl.positions):
        expected = np.full(width, CODE_N, dtype=np.int8)
        lo = max(0, p - half)
        expected[lo - (p - half) :] = encode_sequence(sequence[lo : p + half + 1])
        np.testing.assert_array_equal(expl.dna[i], expected)
    np.testing.assert_array_equal(expl.dna[0, : half - 3], CODE_N)
    assert not np.any(expl.dna == CODE_T)  # the chromosome's end never shows up
    # padding equals the N baseline, so it gets exactly zero attribution
    assert np.all(expl.dna_attribution[0, : half - 3] == 0.0)
    assert np.any(expl.dna_attribution[0, half - 3 :] != 0.0)
    assert np.isfinite(expl.logit) and np.isfinite(expl.convergence_delta)


# --------------------------------------------------------------------------------------------------
# store plumbing, errors, the command


def _small_store(tmp_path: Path, n_sites: int = 30, n_cells: int = 4) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(3)
    labels = (rng.random((n_sites, n_cells)) < 0.5).astype(np.int8)
    labels[rng.random((n_sites, n_cells)) > 0.7] = -1
    positions = np.cumsum(rng.integers(5, 50, n_sites)).astype(np.int64)
    store = tmp_path / "store"
    names = [f"cell_{i}" for i in range(n_cells)]
    write_store(store, [dense_to_chrom("7", positions, labels)], names)
    return store, positions


def test_explain_sites_errors_name_the_sites_file_line(tmp_path: Path) -> None:
    store, positions = _small_store(tmp_path)
    ds = open_dataset(store)
    model = CpGTransformer(tiny_config(4))
    f = tmp_path / "sites.tsv"
    for row, message in [
        (f"8\t{positions[0]}\tcell_0\n", "chromosome '8' is not in the store"),
        (f"7\t{positions[0] + 1}\tcell_0\n", "is not a site of the store"),
        (f"7\t{positions[0]}\tcell_9\n", "cell 'cell_9' is not in the store"),
        (f"7\t{positions[0]}\tcell_0\t0.5\n", "a binary model takes"),
    ]:
        f.write_text("chrom\tpos\tcell\n" + row)
        with pytest.raises(InputError) as err:
            ex.explain_sites(model, ds, ex.read_sites(f), n_steps=2)
        assert str(err.value).startswith(f"{f}:2: ") and message in str(err.value)
    with pytest.raises(UsageError, match="unknown to the model"):
        ex.explain_sites(model, ds, ex.read_sites(f), cells=["x", "y", "z", "w"])
    dna_model = CpGTransformer(tiny_config(4, dna_window=101))
    with pytest.raises(UsageError, match="reference FASTA"):
        ex.explain_sites(dna_model, ds, ex.read_sites(f))


def test_explain_sites_label_change_and_cell_names(tmp_path: Path) -> None:
    store, positions = _small_store(tmp_path)
    ds = open_dataset(store)
    torch.manual_seed(4)
    model = CpGTransformer(tiny_config(4))
    p = int(positions[12])
    queries = [ex.SiteQuery("7", p, "cell_2", value) for value in (None, -1.0, 0.0, 1.0)]
    keep, masked, zero, one = ex.explain_sites(model, ds, queries, n_steps=4)
    stored = ds.states("7", 12, 13)[0, 2]
    assert keep.states[keep.target_index, 2] == stored
    assert masked.states[masked.target_index, 2] == -1
    assert zero.states[zero.target_index, 2] == 0 and one.states[one.target_index, 2] == 1
    assert zero.logit != one.logit
    assert keep.logit == (zero.logit if stored == 0 else one.logit if stored == 1 else masked.logit)
    # the same model with its cell table in another order, matched by name
    order = [3, 1, 0, 2]
    permuted = CpGTransformer(tiny_config(4))
    permuted.load_state_dict(model.state_dict())
    with torch.no_grad():
        permuted.cell_embed.weight.copy_(model.cell_embed.weight[order])
    (again,) = ex.explain_sites(
        permuted, ds, [queries[1]], n_steps=4, cells=[f"cell_{i}" for i in order]
    )
    assert again.logit == pytest.approx(masked.logit, abs=1e-5)
    np.testing.assert_allclose(again.cell_totals, masked.cell_totals, atol=1e-5)


def test_explain_command_writes_npz_figures_and_summary(tmp_path: Path) -> None:
    from cpgformer.checkpoint import save_checkpoint
    from cpgformer.cli import main

    store, positions = _small_store(tmp_path)
    torch.manual_seed(5)
    model = CpGTransformer(tiny_config(4))
    ckpt = tmp_path / "model.pt"
    cells = [f"cell_{i}" for i in range(4)]
    save_checkpoint(ckpt, model, cells=cells, store_fingerprint=open_dataset(store).fingerprint)
    sites = tmp_path / "sites.tsv"
    sites.write_text(f"chrom\tposition\tcell\tlabel\n7\t{positions[0]}\tcell_1\tmask\n")
    sites.write_text(sites.read_text() + f"7\t{positions[15]}\t2\n")
    out = tmp_path / "explained"
    args = ["-q", "explain", str(store), str(ckpt), "--sites", str(sites), "-o", str(out)]
    assert main([*args, "--n-steps", "8"]) == 0
    summary = (out / "summary.tsv").read_text().splitlines()
    assert summary[0].split("\t")[:5] == ["index", "chrom", "position", "cell", "label_change"]
    first = summary[1].split("\t")
    assert first[1:5] == ["7", str(positions[0]), "cell_1", "mask"]
    assert summary[2].split("\t")[3] == "cell_2"
    stem = f"000_7_{positions[0]}_cell_1"
    data = ex.load_npz(out / f"{stem}.npz")
    assert data["state_attribution"].shape == (5, 4)  # 4 sites to the right + the target
    assert data["site_attention"].shape == (2, 2, 4, 5)
    assert float(data["probability"]) == pytest.approx(float(first[6]), abs=1e-6)
    for kind in ("attributions", "attention"):
        png = out / f"{stem}.{kind}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("*.dna.png"))  # no DNA branch, no DNA figure
    # existing output without --overwrite, and a bad sites row: one-line errors, exit code 2
    assert main([*args, "--n-steps", "2"]) == 2
    sites.write_text("7\tx\tcell_1\n")
    assert main([*args, "--overwrite"]) == 2


def test_dna_figure_and_npz_round_trip(tmp_path: Path) -> None:
    from cpgformer.io.fasta import Reference

    fasta = tmp_path / "ref.fa"
    _fasta_with_distinctive_end(fasta)
    positions = np.array([3, 40, 80, 120], dtype=np.int64)
    labels = np.array([[1, 0], [1, 1], [0, -1], [1, 0]], dtype=np.int8)
    store = tmp_path / "store"
    write_store(store, [dense_to_chrom("chrA", positions, labels)], ["a", "b"])
    model = CpGTransformer(tiny_config(2, dna_window=101, n_layers=1))
    (expl,) = ex.explain_sites(
        model, open_dataset(store), [ex.SiteQuery("chrA", 80, "a")], Reference(fasta), n_steps=4
    )
    ex.plot_dna_track(expl, tmp_path / "dna.png")
    ex.plot_attributions(expl, tmp_path / "attr.png")
    ex.plot_attention(expl, tmp_path / "attn.png")
    for name in ("dna.png", "attr.png", "attn.png"):
        assert (tmp_path / name).stat().st_size > 1000
    ex.save_npz(expl, tmp_path / "e.npz")
    data = ex.load_npz(tmp_path / "e.npz")
    np.testing.assert_array_equal(data["dna"], expl.dna)
    np.testing.assert_array_equal(data["dna_attribution"], expl.dna_attribution)
    assert str(data["cell"]) == "a" and int(data["position"]) == 80
    assert float(data["logit"]) == expl.logit


def test_continuous_model_explains_fractions(tmp_path: Path) -> None:
    store, positions = _small_store(tmp_path, n_sites=12, n_cells=3)
    torch.manual_seed(6)
    model = CpGTransformer(tiny_config(3, data_mode="continuous", n_layers=1)).double()
    query = ex.SiteQuery("7", int(positions[5]), "cell_1", 0.25)
    (expl,) = ex.explain_sites(model, open_dataset(store), [query], n_steps=64)
    assert expl.states[expl.target_index, 1] == pytest.approx(0.25)
    betas = open_dataset(store).betas("7", 0, 12)
    expected = betas.copy()
    expected[5, 1] = 0.25
    assert list(expl.site_rows) == [3, 4, 5, 6, 7]
    np.testing.assert_allclose(expl.states, expected[expl.site_rows])
    # unknown calls (beta -1) sit at the baseline (the learned mask vector): zero attribution
    assert np.all(expl.state_attribution[expl.states < 0] == 0.0)
    difference = expl.logit - expl.baseline_logit
    assert expl.attribution_sum - difference == pytest.approx(expl.convergence_delta, abs=1e-9)


def test_large_integration_error_is_reported(tmp_path: Path, caplog) -> None:
    store, positions = _small_store(tmp_path)
    torch.manual_seed(7)
    model = CpGTransformer(tiny_config(4))
    with torch.no_grad():
        model.head.weight.mul_(30.0)
    query = ex.SiteQuery("7", int(positions[10]), "cell_0", None)
    with caplog.at_level("WARNING", logger="cpgformer.explain"):
        (rough,) = ex.explain_sites(model, open_dataset(store), [query], n_steps=1)
    assert abs(rough.convergence_delta) > 0.05 * abs(rough.logit - rough.baseline_logit)
    assert "use more steps (--n-steps, now 1)" in caplog.text
