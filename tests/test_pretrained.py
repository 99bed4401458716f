"""The pretrained model shipped in the package: any store, no training; fine-tuning from it."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _reliability_helpers import cli  # noqa: E402
from _training_helpers import make_store  # noqa: E402

from cpgformer import pretrained  # noqa: E402
from cpgformer.io.store import open_dataset  # noqa: E402
from cpgformer.model import Model  # noqa: E402


def test_shipped_model_is_small_inductive_and_matches_its_card() -> None:
    path = pretrained.path()
    assert path.stat().st_size <= 20 * 1024 * 1024
    card = pretrained.card()
    assert card["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert card["size_bytes"] == path.stat().st_size
    assert {d["name"] for d in card["training_data"]} == {st["data"] for st in card["stages"]}
    assert card["train_seconds"] > 0 and all(st["steps"] > 0 for st in card["stages"])
    assert card["zero_shot"], "the card reports held-out scores"
    model = Model.load("pretrained")
    config = model.network.config
    assert model.inductive and not config.cell_identity and not config.has_dna
    assert config.input_summaries and config.summary_offset and config.mode == "induced"
    assert model.cells is None and model.store_fingerprint is None
    # no training split travels with it (a benchmark chooses its own hold-out)
    assert not any(k.endswith(("_regions", "_resolved")) for k in model.data or {})


def test_check_verifies_the_shipped_model(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = cli(capsys, "check", "pretrained")
    assert code == 0, err


def test_a_file_named_pretrained_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert pretrained.resolve("pretrained") == str(pretrained.path())
    (tmp_path / "pretrained").write_bytes(b"")
    assert pretrained.resolve("pretrained") == "pretrained"


def test_impute_with_the_pretrained_model_on_any_cells(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    store = make_store(tmp_path / "s", {"chr1": 300, "chr2": 120}, 37, fill=0.3, seed=3)
    code, err = cli(capsys, "impute", store, "--pretrained", "-o", tmp_path / "a", "-q")
    assert code == 0, err
    code, err = cli(capsys, "impute", store, "pretrained", "-o", tmp_path / "b", "-q")
    assert code == 0, err
    from cpgformer.impute import open_imputed

    a, b = open_imputed(tmp_path / "a"), open_imputed(tmp_path / "b")
    assert a.n_cells == 37 and a.chromosomes == ["chr1", "chr2"]
    for chrom in a.chromosomes:
        n = open_dataset(store).n_sites(chrom)
        pa, pb = a.values(chrom, 0, n), b.values(chrom, 0, n)
        assert pa.shape == (n, 37)
        assert np.array_equal(pa, pb) and np.isfinite(pa).all()
        assert 0 <= pa.min() and pa.max() <= 1 and pa.std() > 0.01
    code, err = cli(capsys, "impute", store, "pretrained", "--pretrained", "-o", tmp_path / "c")
    assert code == 2 and "not both" in err
    code, err = cli(capsys, "impute", store, "-o", tmp_path / "c")
    assert code == 2 and "--pretrained" in err
    # it has no per-cell vector to map: `cells` says so instead of drawing one cluster
    code, err = cli(capsys, "cells", "pretrained", store, "-o", tmp_path / "map")
    assert code == 2 and "no per-cell vector" in err


def test_fine_tune_from_the_pretrained_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    store = make_store(tmp_path / "s", {"chr1": 200, "chr5": 80, "chr10": 80}, 12, seed=4)
    run = tmp_path / "run"
    code, err = cli(
        capsys, "train", store, "-o", run, "--init-from", "pretrained", "--max-steps", "2", "-q"
    )
    assert code == 0, err
    rows = (run / "init_key_map.tsv").read_text().splitlines()[1:]
    source = Model.load("pretrained").network.state_dict()
    assert len(rows) == len(source) and all(r.endswith("\tloaded") for r in rows)
    tuned = Model.load(run / "checkpoints" / "last.ckpt")
    assert tuned.network.config.to_dict() == {
        **Model.load("pretrained").network.config.to_dict(),
        "n_cells": 12,
    }
    changed = [k for k, v in tuned.network.state_dict().items() if not torch.equal(v, source[k])]
    assert changed, "fine-tuning moved the weights"


def test_a_new_run_without_a_fasta_starts_from_the_pretrained_model_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    import json

    store = make_store(tmp_path / "s", {"chr1": 200, "chr5": 80, "chr10": 80}, 12, seed=4)

    def started_from(name: str, *flags: str) -> str | None:
        run = tmp_path / name
        code, err = cli(capsys, "train", store, "-o", run, "--max-steps", "1", "-q", *flags)
        assert code == 0, err
        record = json.loads((run / "config.json").read_text())
        return record["init_from"]

    assert started_from("default") == "pretrained"
    tuned = Model.load(tmp_path / "default" / "checkpoints" / "last.ckpt").network.config
    assert tuned.to_dict() == {**Model.load("pretrained").network.config.to_dict(), "n_cells": 12}
    # from scratch: asked for, architecture given, or the published schedule
    assert started_from("none", "--init-from", "none") is None
    assert started_from("arch", "--hidden", "8", "--n-layers", "1", "--n-heads", "2") is None
    assert started_from("published", "--schedule", "published", "--hidden", "8") is None
    # a runtime-only model parameter keeps the default
    assert started_from("impl", "--attention-impl", "reference") == "pretrained"
    # fine-tuning trains with the new-run masks; the published schedule with the published ones
    units = {
        name: json.loads((tmp_path / name / "config.json").read_text())["data"]["mask_unit"]
        for name in ("default", "published")
    }
    assert units == {"default": "run", "published": "call"}


def test_resolve_init_from_rules() -> None:
    from cpgformer.training.config import TrainConfig
    from cpgformer.training.configs import resolve_init_from

    adaptive, published = TrainConfig(), TrainConfig(schedule="published")
    assert resolve_init_from("auto", {}, adaptive, has_fasta=False)[0] == "pretrained"
    assert resolve_init_from(None, {}, adaptive, has_fasta=False)[0] == "pretrained"
    assert resolve_init_from("auto", {}, adaptive, has_fasta=True)[0] is None
    assert resolve_init_from("auto", {}, published, has_fasta=False)[0] is None
    assert resolve_init_from("auto", {"hidden": 8}, adaptive, has_fasta=False)[0] is None
    assert resolve_init_from("auto", {}, adaptive, has_fasta=False, resume=True)[0] is None
    assert resolve_init_from("none", {}, adaptive, has_fasta=False)[0] is None
    # an explicit checkpoint is used as given, even with a FASTA
    assert resolve_init_from("run/x.ckpt", {}, adaptive, has_fasta=True)[0] == "run/x.ckpt"


def test_zero_shot_beats_the_per_site_mean_on_new_simulated_cells(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    """Data the model was not trained on (another seed, size and cell count than its training
    sets): scored with the benchmark's default region hold-out, no training at all."""
    code, err = cli(
        capsys, "simulate", "--genome-length", "1000000", "--cells", "30", "--cell-types", "3",
        "--seed", "77", "-o", tmp_path / "sim", "--store", tmp_path / "store", "-q",
    )  # fmt: skip
    assert code == 0, err
    code, err = cli(
        capsys, "benchmark", tmp_path / "store", "--checkpoint", "pretrained", "--models",
        "cpgformer,site-mean", "-o", tmp_path / "bench", "--no-figures", "--bootstrap", "200", "-q",
    )  # fmt: skip
    assert code == 0, err
    import pandas as pd

    metrics = pd.read_csv(tmp_path / "bench" / "metrics.tsv", sep="\t").set_index("model")
    assert metrics.loc["cpgformer", "n"] >= 500
    paired = pd.read_csv(tmp_path / "bench" / "paired_bootstrap.tsv", sep="\t")
    row = paired[(paired["scope"] == "all") & (paired["metric"] == "auroc")].iloc[0]
    assert row["model"] == "site-mean" and row["difference"] > 0.03 and row["ci_low"] > 0


@pytest.mark.slow
def test_the_training_recipe_is_reproducible(tmp_path: Path) -> None:
    """``scripts/train_pretrained.py`` on a tiny version of its recipe, twice: the same weights."""
    import importlib.util
    import json
    import os
    import subprocess

    script = Path(__file__).resolve().parents[1] / "scripts" / "train_pretrained.py"
    runner = tmp_path / "run_recipe.py"
    runner.write_text(
        "import sys\n"
        f"spec = __import__('importlib.util').util.spec_from_file_location('r', {str(script)!r})\n"
        "r = __import__('importlib.util').util.module_from_spec(spec)\n"
        "spec.loader.exec_module(r)\n"
        "r.DATASETS = [dict(d, genome_length=100000, cells=min(d['cells'], 12))\n"
        "              for d in r.DATASETS if d['name'] in ('scbs40', 'sparse800')]\n"
        "r.STAGES = ['scbs40', 'sparse800']\n"
        "sys.argv = ['r', sys.argv[1], '--steps', '3']\n"
        "r.main()\n"
    )
    assert importlib.util.find_spec("cpgformer") is not None
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CPGFORMER_NO_PROGRESS": "1"}
    cards = []
    for name in ("a", "b"):
        done = subprocess.run(
            [sys.executable, str(runner), str(tmp_path / name)],
            capture_output=True, text=True, env=env, timeout=400,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        cards.append(json.loads((tmp_path / name / "pretrained" / "card.json").read_text()))
    assert cards[0]["sha256"] == cards[1]["sha256"]
    assert [st["steps"] for st in cards[0]["stages"]] == [3, 3]
    assert cards[0]["architecture"][0] == "--no-cell-identity"
