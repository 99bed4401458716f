"""Tiled imputation: equality with one pass, bounded memory, resume after a kill, calibration."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cpgformer.errors import UsageError
from cpgformer.impute import (
    ImputeOptions,
    Predictor,
    binary_nll,
    default_chunk_sites,
    dequantize,
    expected_calibration_error,
    fit_temperature,
    impute,
    open_imputed,
    plan_tiles,
    predict_block,
    quantize,
)
from cpgformer.io.store import ChromArrays, open_dataset, write_store
from cpgformer.model import Model
from cpgformer.nn import CpGTransformer, ModelConfig

REPO = Path(__file__).resolve().parents[1]


def random_chrom(name: str, n_sites: int, n_cells: int, fill: float, seed: int) -> ChromArrays:
    """A random CSR chromosome: each (site, cell) observed with probability ``fill``."""
    rng = np.random.default_rng(seed)
    positions = np.cumsum(rng.integers(2, 400, size=n_sites)).astype(np.int64)
    parts = []  # drawn in blocks of rows to keep the fixture's own memory small
    for a in range(0, n_sites, 20_000):
        r, c = np.nonzero(rng.random((min(n_sites, a + 20_000) - a, n_cells)) < fill)
        parts.append((r + a, c))
    rows = np.concatenate([p[0] for p in parts])
    cols = np.concatenate([p[1] for p in parts])
    indptr = np.zeros(n_sites + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_sites), out=indptr[1:])
    cov = rng.integers(1, 4, size=rows.size).astype(np.int32)
    mc = rng.integers(0, cov + 1).astype(np.int32)
    label = np.where(2 * mc >= cov, 1, 0).astype(np.int8)
    label[rng.random(rows.size) < 0.02] = -1  # a few excluded calls
    return ChromArrays(name, positions, indptr, cols.astype(np.int32), mc, cov, label)


def make_store(path: Path, sizes: dict[str, int], n_cells: int, fill: float = 0.3) -> Path:
    chroms = [random_chrom(n, s, n_cells, fill, seed=i) for i, (n, s) in enumerate(sizes.items())]
    write_store(path, chroms, [f"cell{i:02d}" for i in range(n_cells)])
    return path


def tiny_model(n_cells: int, seed: int = 0) -> CpGTransformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        n_cells=n_cells,
        dna_window=0,
        hidden=16,
        n_heads=2,
        head_dim=8,
        n_layers=2,
        site_window=5,
        state_embed=8,
        cell_embed=8,
    )
    model = CpGTransformer(cfg)
    return model.eval()


def source_for(model: CpGTransformer, cells: list[str] | None = None) -> Model:
    return Model(model, cells=cells, checkpoint_id="test-model")


# ---------------------------------------------------------------------------------------------
# tiling arithmetic


@pytest.mark.parametrize("n", [1, 5, 30, 31, 50, 97, 200, 1000])
@pytest.mark.parametrize("tile,margin", [(30, 4), (11, 5), (64, 0), (1024, 40)])
def test_plan_tiles_cover_every_row_once_with_context(n: int, tile: int, margin: int) -> None:
    tiles = plan_tiles(0, n, n, tile, margin)
    kept = np.zeros(n, dtype=int)
    for t in tiles:
        assert 0 <= t.start <= t.keep_start < t.keep_stop <= t.stop <= n
        assert t.stop - t.start <= tile
        assert t.keep_start - t.start >= margin or t.start == 0
        assert t.stop - t.keep_stop >= margin or t.stop == n
        kept[t.keep_start : t.keep_stop] += 1
    assert np.all(kept == 1)  # every row written exactly once (original defect 15.25)
    if n <= tile:
        assert tiles == [(0, n, 0, n)]  # short chromosome: one shorter tile


def test_plan_tiles_hand_checked() -> None:
    # L = 10, m = 2, stride 6: keep [0,8) [8,14) [14,20) [20,23)
    assert plan_tiles(0, 23, 23, 10, 2) == [
        (0, 10, 0, 8),
        (6, 16, 8, 14),
        (12, 22, 14, 20),
        (18, 23, 20, 23),
    ]
    # a sub-range reads margin rows of context on each side
    assert plan_tiles(8, 14, 23, 10, 2) == [(6, 16, 8, 14)]
    with pytest.raises(UsageError, match="receptive field"):
        plan_tiles(0, 10, 10, 8, 4)


# ---------------------------------------------------------------------------------------------
# acceptance 1: tiled = one pass


def test_tiled_prediction_equals_one_pass_on_long_chromosome() -> None:
    n_sites, n_cells = 700, 6
    chrom = random_chrom("1", n_sites, n_cells, 0.3, seed=3)
    states = np.full((n_sites, n_cells), -1, dtype=np.int8)
    rows = np.repeat(np.arange(n_sites), np.diff(chrom.indptr))
    states[rows, chrom.cell] = chrom.label
    model = tiny_model(n_cells)
    predictor = Predictor.from_model(model)
    assert predictor.margin == 4
    x = (states + 1).astype(np.int64)
    with torch.inference_mode():
        one_pass = model(
            torch.from_numpy(x)[None],
            torch.from_numpy(chrom.positions - chrom.positions[0])[None],
            torch.arange(n_cells)[None],
        )[0].numpy()
    tiled = predict_block(predictor, x, chrom.positions, 0, n_sites, tile_sites=64, batch_size=3)
    assert len(plan_tiles(0, n_sites, n_sites, 64, 4)) >= 10  # several segments long
    np.testing.assert_allclose(tiled, one_pass, atol=1e-5, rtol=0)
    # the margin matters: without it the tile edges differ
    naive = Predictor(predictor.predict_fn, 0, n_cells)
    cut = predict_block(naive, x, chrom.positions, 0, n_sites, tile_sites=64)
    assert np.abs(cut - one_pass).max() > 1e-3


def test_impute_store_equals_one_pass_and_keep_observed(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", {"1": 300, "2": 37}, n_cells=5)
    ds = open_dataset(store)
    model = tiny_model(5, seed=1)
    opts = ImputeOptions(tile_sites=40, chunk_sites=64, dtype="float16")
    imp = impute(ds, source_for(model), tmp_path / "imp", opts)
    assert imp.chromosomes == ["1", "2"]
    for chrom in ("1", "2"):
        n = ds.n_sites(chrom)
        x = ds.states(chrom, 0, n).astype(np.int64) + 1
        pos = np.asarray(ds.positions(chrom))
        with torch.inference_mode():
            logits = model(
                torch.from_numpy(x)[None],
                torch.from_numpy(pos - pos[0])[None],
                torch.arange(5)[None],
            )[0].numpy()
        expected = 1 / (1 + np.exp(-logits))
        got = imp.values(chrom, 0, n)
        assert got.shape == (n, 5)
        np.testing.assert_allclose(got, expected, atol=1e-3)  # float16 storage
        np.testing.assert_array_equal(imp.positions(chrom), pos)
        np.testing.assert_array_equal(imp.states(chrom, 0, n), ds.states(chrom, 0, n))
    assert len(list((tmp_path / "imp" / "chroms" / "0").glob("p-*.npy"))) == 5
    # keep-observed copies the observed calls back, model probabilities elsewhere
    kept = impute(
        ds,
        source_for(model),
        tmp_path / "kept",
        ImputeOptions(tile_sites=40, chunk_sites=64, keep_observed=True),
    )
    s = ds.states("1", 0, 300)
    v = kept.values("1", 0, 300)
    np.testing.assert_array_equal(v[s >= 0], s[s >= 0].astype(np.float32))
    np.testing.assert_array_equal(v[s < 0], imp.values("1", 0, 300)[s < 0])
    np.testing.assert_array_equal(imp.imputed("1", 0, 300), v)
    assert kept.manifest["keep_observed"] is True


def test_impute_refuses_other_cells_and_fingerprint(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", {"1": 40}, n_cells=3)
    model = tiny_model(3)
    cells = ["cell00", "cell01", "cell02"]
    other = Model(model, cells=["cell00", "cell01", "x"], checkpoint_id="m")
    with pytest.raises(UsageError, match="unknown to the model"):
        impute(store, other, tmp_path / "a")
    wrong = Model(model, cells=cells, store_fingerprint="ab" * 32, checkpoint_id="m")
    with pytest.raises(UsageError, match="fingerprint"):
        impute(store, wrong, tmp_path / "b")
    imp = impute(store, wrong, tmp_path / "c", ImputeOptions(ignore_fingerprint=True))
    assert imp.n_cells == 3
    with pytest.raises(UsageError, match="already exists"):
        impute(store, wrong, tmp_path / "c", ImputeOptions(ignore_fingerprint=True))


def test_cells_in_other_order_are_matched_by_name(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", {"1": 60}, n_cells=3)
    model = tiny_model(3)
    ds = open_dataset(store)
    direct = impute(ds, source_for(model, ds.cells), tmp_path / "d")
    # a model whose cell table lists the same cells reversed, with the embedding rows reversed
    rev = tiny_model(3)
    rev.load_state_dict(model.state_dict())
    with torch.no_grad():
        rev.cell_embed.weight.copy_(model.cell_embed.weight.flip(0))
    reordered = impute(ds, source_for(rev, ds.cells[::-1]), tmp_path / "r")
    np.testing.assert_allclose(reordered.values("1", 0, 60), direct.values("1", 0, 60), atol=1e-3)


# ---------------------------------------------------------------------------------------------
# acceptance 3: killed runs resume; partial output is never readable as complete


def test_injected_failure_resumes_at_first_unfinished_chunk(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", {"1": 200, "2": 90}, n_cells=4)
    model = tiny_model(4)
    opts = ImputeOptions(tile_sites=24, chunk_sites=50, batch_size=2)
    full = impute(store, source_for(model), tmp_path / "full", opts)
    calls = {"n": 0, "fail_at": 7}
    base = Predictor.from_model(model)

    def flaky(states, positions, cell_ids, emb):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise RuntimeError("injected failure")
        return base.predict_fn(states, positions, cell_ids, emb)

    source = Model.from_predictor(Predictor(flaky, base.margin, 4), "test-model")
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="injected"):
        impute(store, source, out, opts)
    assert not out.exists()
    with pytest.raises(UsageError, match="not finished"):
        open_imputed(out)
    partial = tmp_path / ".partial-out.impute"
    done = sorted(p.name for p in partial.glob("chroms/*/p-*.npy"))
    assert 0 < len(done) < 7  # 4 + 2 chunks in all
    calls["fail_at"] = -1
    calls["n"] = 0
    resumed = impute(store, source, out, opts)
    # only the unfinished chunks were predicted again (tiles of 24 rows, 16 kept: 4 calls per chunk)
    assert calls["n"] < 4 * (6 - len(done)) + 1
    for chrom in ("1", "2"):
        n = full.n_sites(chrom)
        np.testing.assert_array_equal(resumed.values(chrom, 0, n), full.values(chrom, 0, n))
    # a resume with other settings is refused
    with pytest.raises(UsageError, match="already exists"):
        impute(store, source, out, opts)


KILL_MODEL = textwrap.dedent(
    """
    import time, torch
    from cpgformer.impute import ImputeOptions, Predictor
    from cpgformer.model import Model
    from cpgformer.nn import CpGTransformer, ModelConfig
    torch.manual_seed(0)
    cfg = ModelConfig(n_cells=4, dna_window=0, hidden=16, n_heads=2, head_dim=8, n_layers=2,
                      site_window=5, state_embed=8, cell_embed=8)
    model = CpGTransformer(cfg).eval()
    base = Predictor.from_model(model)
    def slow(*args):
        time.sleep(delay)
        return base.predict_fn(*args)
    src = Model.from_predictor(Predictor(slow, base.margin, 4), "kill-test")
    opts = ImputeOptions(tile_sites=24, chunk_sites=50)
    """
)
KILL_SCRIPT = (
    "import sys\nfrom cpgformer.impute import impute\ndelay = float(sys.argv[3])\n"
    + KILL_MODEL
    + "impute(sys.argv[1], src, sys.argv[2], opts)\n"
)


def test_sigkill_midway_then_rerun_equals_uninterrupted(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", {"1": 400}, n_cells=4)
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "CPGFORMER_NO_PROGRESS": "1"}
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(store), str(out), "0.05"],
        env=env,
        stderr=subprocess.PIPE,
    )
    partial = tmp_path / ".partial-out.impute"
    deadline = time.time() + 120
    while time.time() < deadline and not list(partial.glob("chroms/0/p-*.npy")):
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_done = len(list(partial.glob("chroms/0/p-*.npy")))
    assert 1 <= n_done < 8
    with pytest.raises(UsageError, match="not finished"):
        open_imputed(out)
    # rerun (in this process: the same model, seeded) and an uninterrupted reference run
    ns: dict = {"delay": 0.0}
    exec(KILL_MODEL, ns)
    resumed = impute(store, ns["src"], out, ns["opts"])
    ref = impute(store, ns["src"], tmp_path / "ref", ns["opts"])
    np.testing.assert_array_equal(resumed.values("1", 0, 400), ref.values("1", 0, 400))
    assert not partial.exists()
    assert not list(tmp_path.glob(".partial-*"))


# ---------------------------------------------------------------------------------------------
# acceptance 2: memory is flat in chromosome length

MEMORY_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    import numpy as np
    from cpgformer.impute import ImputeOptions, Predictor, impute
    from cpgformer.model import Model
    torch.set_num_threads(1)
    weights = torch.tensor([0.2, 0.3, 0.5, 0.3, 0.2])
    def smooth(states, positions, cell_ids, emb):
        # a cheap 5-site moving filter over every cell (receptive field 2 sites each side)
        x = states.float().permute(0, 2, 1).reshape(-1, 1, states.shape[1])
        y = torch.nn.functional.conv1d(x, weights.view(1, 1, 5), padding=2)
        return y.reshape(states.shape[0], states.shape[2], -1).permute(0, 2, 1) - 1.0
    src = Model.from_predictor(Predictor(smooth, 2, 32), "mem-test")
    impute(sys.argv[1], src, sys.argv[2], ImputeOptions(tile_sites=512, chunk_sites=4096))
    # VmHWM: this process's own peak (ru_maxrss would include the parent's at fork time)
    status = open("/proc/self/status").read()
    print(int(status.split("VmHWM:")[1].split()[0]))
    """
)


def test_peak_memory_flat_when_chromosome_grows_tenfold(tmp_path: Path) -> None:
    script = tmp_path / "mem.py"
    script.write_text(MEMORY_SCRIPT)
    env = {**os.environ, "CPGFORMER_NO_PROGRESS": "1"}
    peaks = {}
    for n in (25_000, 250_000):
        store = make_store(tmp_path / f"s{n}", {"1": n}, n_cells=32, fill=0.03)
        res = subprocess.run(
            [sys.executable, str(script), str(store), str(tmp_path / f"o{n}")],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        peaks[n] = int(res.stdout.strip().splitlines()[-1]) / 1024  # MiB
    # one whole-chromosome float32 matrix of 250k x 32 alone would add ~27 MiB; a single-chunk run
    # (whole chromosome at once) was measured to grow by 140 MiB, this chunked one by 7 MiB
    growth = peaks[250_000] - peaks[25_000]
    assert growth < 30, peaks


# ---------------------------------------------------------------------------------------------
# storage and calibration helpers


def test_quantisation_round_trip() -> None:
    p = np.array([0.0, 0.0021, 0.5, 0.73, 1.0], dtype=np.float32)
    q8 = quantize(p, "uint8")
    assert q8.tolist() == [0, 1, 128, 186, 255]
    assert np.abs(dequantize(q8) - p).max() <= 0.5 / 255 + 1e-7
    assert np.abs(dequantize(quantize(p, "float16")) - p).max() < 5e-4
    assert default_chunk_sites(20) == 65536 and default_chunk_sites(100_000) == 1024


def test_expected_calibration_error_by_hand() -> None:
    # bin [0.2,0.2667): p 0.25 x2, labels 0,1 -> |0.5 - 0.25| * 2/4;  bin of 0.9: |1 - 0.9| * 2/4
    p = np.array([0.25, 0.25, 0.9, 0.9])
    y = np.array([0, 1, 1, 1])
    assert expected_calibration_error(p, y, n_bins=15) == pytest.approx(0.5 * 0.25 + 0.5 * 0.1)
    assert expected_calibration_error(np.array([1.0, 0.0]), np.array([1, 0])) == 0.0


def test_fit_temperature_recovers_overconfidence() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, size=20000)
    labels = (rng.random(20000) < 1 / (1 + np.exp(-true_logits))).astype(np.int8)
    overconfident = 3.0 * true_logits  # the true temperature is 3
    t = fit_temperature(overconfident, labels)
    assert t == pytest.approx(3.0, rel=0.08)
    grid = np.linspace(0.5, 6, 200)
    best = grid[np.argmin([binary_nll(overconfident / g, labels) for g in grid])]
    assert t == pytest.approx(best, abs=0.05)
    p_before = 1 / (1 + np.exp(-overconfident))
    p_after = 1 / (1 + np.exp(-overconfident / t))
    assert expected_calibration_error(p_after, labels) < expected_calibration_error(
        p_before, labels
    )


def test_incomplete_or_foreign_directory_is_not_opened(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    with pytest.raises(UsageError, match="no manifest"):
        open_imputed(tmp_path / "x")
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "manifest.json").write_text(json.dumps({"format": "cpgformer-imputed"}))
    from cpgformer.errors import InputError

    with pytest.raises(InputError):
        open_imputed(tmp_path / "y")


# ---------------------------------------------------------------------------------------------
# DNA embeddings and --sites all


def test_dna_model_and_all_cpg_sites_equal_one_pass(tmp_path: Path) -> None:
    from cpgformer.io.fasta import Reference

    rng = np.random.default_rng(7)
    seq = "".join(rng.choice(list("ACGT"), size=3000, p=[0.3, 0.2, 0.2, 0.3]))
    fasta = tmp_path / "ref.fa"
    fasta.write_text(">chrQ\n" + "\n".join(seq[i : i + 60] for i in range(0, len(seq), 60)) + "\n")
    all_pos = np.array([i for i in range(len(seq) - 1) if seq[i : i + 2] == "CG"], dtype=np.int64)
    store_rows = np.sort(rng.choice(len(all_pos), size=len(all_pos) // 2, replace=False))
    n, n_cells = len(store_rows), 3
    obs = rng.random((n, n_cells)) < 0.5
    rows, cols = np.nonzero(obs)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    label = rng.integers(0, 2, size=rows.size).astype(np.int8)
    ch = ChromArrays(
        "chrQ", all_pos[store_rows], indptr, cols.astype(np.int32),
        label.astype(np.int32), np.ones(rows.size, dtype=np.int32), label,
    )  # fmt: skip
    write_store(tmp_path / "store", [ch], ["a", "b", "c"])
    torch.manual_seed(2)
    cfg = ModelConfig(
        n_cells=n_cells, dna_window=31, hidden=8, n_heads=2, head_dim=4, n_layers=2,
        site_window=3, state_embed=4, cell_embed=4, dna_embed=4,
    )  # fmt: skip
    model = CpGTransformer(cfg).eval()
    ref = Reference(fasta)
    opts = ImputeOptions(
        fasta=str(fasta), tile_sites=20, chunk_sites=30, embed_chunk=7, dtype="uint8"
    )
    for mode, positions in (("store", all_pos[store_rows]), ("all", all_pos)):
        opts.sites = mode
        imp = impute(tmp_path / "store", source_for(model), tmp_path / f"out-{mode}", opts)
        np.testing.assert_array_equal(imp.positions("chrQ"), positions)
        full = np.full((len(positions), n_cells), -1, dtype=np.int8)
        at = np.searchsorted(positions, all_pos[store_rows])
        full[at[rows], cols] = label
        np.testing.assert_array_equal(imp.states("chrQ", 0, len(positions)), full)
        windows = torch.from_numpy(ref.windows("chrQ", positions, 31).astype(np.int64))
        with torch.inference_mode():
            logits = model(
                torch.from_numpy(full.astype(np.int64) + 1)[None],
                torch.from_numpy(positions)[None],
                torch.arange(n_cells)[None],
                dna=windows[None],
            )[0].numpy()
        expected = 1 / (1 + np.exp(-logits))
        got = imp.values("chrQ", 0, len(positions))
        assert np.abs(got - expected).max() <= 0.5 / 255 + 1e-5  # uint8 quantisation
    with pytest.raises(UsageError, match="--fasta"):
        impute(tmp_path / "store", source_for(model), tmp_path / "nofasta")
    # the DNA network in bf16: close to fp32, not the same numbers, recorded in the plan
    opts.sites, opts.dtype = "store", "float16"
    fp32 = impute(tmp_path / "store", source_for(model), tmp_path / "fp32", opts)
    opts.dna_precision = "bf16"
    bf16 = impute(tmp_path / "store", source_for(model), tmp_path / "bf16", opts)
    a, b = (x.values("chrQ", 0, n) for x in (fp32, bf16))
    assert 0 < np.abs(a - b).max() < 0.02
    assert model.dna_encoder.bf16
    model.set_dna_precision("fp32")
    assert bf16.manifest["dna_precision"] == "bf16" and "dna_precision" not in fp32.manifest


# ---------------------------------------------------------------------------------------------
# calibration on masked calls


@pytest.mark.parametrize("unit", ["run", "call"])
def test_masked_holdout_hides_the_seeded_calls(tmp_path: Path, unit: str) -> None:
    from cpgformer.impute import _mask_for, masked_holdout
    from cpgformer.impute.calibration import call_runs

    store = make_store(tmp_path / "store", {"1": 150}, n_cells=4, fill=0.4)
    ds = open_dataset(store)
    model = tiny_model(4, seed=3)
    held = masked_holdout(ds, source_for(model), ["1"], fraction=0.2, seed=5, unit=unit,
                          tile_sites=32, chunk_sites=40)  # fmt: skip
    indptr, cell, _, _, label = (np.asarray(a) for a in ds.csr("1"))
    pos = np.array(ds.positions("1"))
    runs = call_runs(indptr, cell, label, pos) if unit == "run" else None
    hide = _mask_for("1", label, 0.2, 5, runs)
    rows = np.repeat(np.arange(150), np.diff(indptr))
    states = ds.states("1", 0, 150)
    states[rows[hide], cell[hide]] = -1
    pos = np.array(ds.positions("1"))
    with torch.inference_mode():
        logits = model(
            torch.from_numpy(states.astype(np.int64) + 1)[None],
            torch.from_numpy(pos)[None],
            torch.arange(4)[None],
        )[0].numpy()
    np.testing.assert_allclose(held.masked_logits, logits[rows[hide], cell[hide]], atol=1e-5)
    np.testing.assert_array_equal(held.masked_labels, label[hide])
    np.testing.assert_array_equal(held.masked_cells, cell[hide])
    other = ~hide & (label >= 0)
    np.testing.assert_allclose(held.observed_logits, logits[rows[other], cell[other]], atol=1e-5)
    assert 0.1 < hide.sum() / (label >= 0).sum() < 0.3
    if unit == "run":  # whole runs: no hidden call keeps a visible call of its cell within 150 bp
        for r, c in zip(rows[hide], cell[hide], strict=True):
            near = np.abs(pos - pos[r]) <= 150
            assert not np.any(states[near, c] >= 0)
        assert np.any(np.diff(pos) <= 150), "the store has calls close enough to share a run"


def test_call_runs_match_a_plain_loop() -> None:
    from cpgformer.impute.calibration import call_runs

    rng = np.random.default_rng(2)
    n_sites, n_cells = 60, 5
    pos = np.cumsum(rng.integers(20, 200, n_sites))
    dense = np.where(
        rng.random((n_sites, n_cells)) < 0.5, rng.integers(0, 2, (n_sites, n_cells)), -9
    )
    dense[rng.random((n_sites, n_cells)) < 0.05] = -1  # stored but excluded (label -1)
    rows, cols = np.nonzero(dense != -9)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n_sites))])
    label = dense[rows, cols]
    runs = call_runs(indptr, cols, label, pos, 150)
    assert np.all(runs[label < 0] == -1)
    # plain loop: per cell, valid calls in site order, a new run after a gap > 150 bp
    same = {}
    for c in range(n_cells):
        prev = None
        for k in np.flatnonzero((cols == c) & (label >= 0)):
            if prev is not None and pos[rows[k]] - pos[rows[prev]] <= 150:
                same[k] = prev
            prev = k
    for k in np.flatnonzero(label >= 0):
        members = [j for j in np.flatnonzero(runs == runs[k])]
        assert all(cols[j] == cols[k] for j in members)
        if k in same:
            assert runs[same[k]] == runs[k]
    n_plain = sum(1 for k in np.flatnonzero(label >= 0) if k not in same)
    assert len(np.unique(runs[label >= 0])) == n_plain


def test_calibrate_command_writes_temperature(tmp_path: Path) -> None:
    from cpgformer.checkpoint import load_checkpoint, save_checkpoint
    from cpgformer.cli import main

    store = make_store(tmp_path / "store", {"1": 300, "2": 50}, n_cells=4, fill=0.5)
    ds = open_dataset(store)
    model = tiny_model(4)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, model, cells=ds.cells, store_fingerprint=ds.fingerprint,
                    data={"val_chromosomes": ["chr1"]})  # fmt: skip
    out = tmp_path / "calibrated.pt"
    assert main(["-q", "calibrate", str(store), str(ckpt), "-o", str(out), "--mask-fraction",
                 "0.3"]) == 0  # fmt: skip
    loaded = load_checkpoint(out)
    report = loaded.data["calibration"]
    assert report["chromosomes"] == ["1"] and report["n"] > 100
    assert report["mask_unit"] == "call"
    assert loaded.temperature == pytest.approx(report["temperature"])
    assert report["nll_after"] <= report["nll_before"] + 1e-9
    imp = impute(store, out, tmp_path / "imp", ImputeOptions(chroms=["2"]))
    assert imp.temperature == pytest.approx(report["temperature"])
    x = ds.states("2", 0, 50).astype(np.int64) + 1
    pos = np.array(ds.positions("2"))
    with torch.inference_mode():
        logits = model(torch.from_numpy(x)[None], torch.from_numpy(pos)[None],
                       torch.arange(4)[None])[0].numpy()  # fmt: skip
    expected = 1 / (1 + np.exp(-logits / report["temperature"]))
    np.testing.assert_allclose(imp.values("2", 0, 50), expected, atol=1e-3)


def test_imputed_store_reads_the_observed_calls_like_the_dataset(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", {"1": 120, "2": 50}, n_cells=3)
    ds = open_dataset(store)
    imp = impute(ds, source_for(tiny_model(3), ds.cells), tmp_path / "imp")
    for chrom in ds.chromosomes:
        n = ds.n_sites(chrom)
        np.testing.assert_array_equal(imp.positions(chrom), ds.positions(chrom))
        np.testing.assert_array_equal(imp.states(chrom, 5, n), ds.states(chrom, 5, n))
        np.testing.assert_array_equal(imp.betas(chrom, 0, n), ds.betas(chrom, 0, n))
        for got, want in zip(imp.counts(chrom, 3, 40), ds.counts(chrom, 3, 40)):
            np.testing.assert_array_equal(got, want)
        for read in (imp.states, imp.counts, imp.values, imp.imputed):
            with pytest.raises(UsageError, match="out of range"):
                read(chrom, 0, n + 1)
    with pytest.raises(UsageError, match="chromosome 'X' is not in the imputed store"):
        imp.positions("X")
