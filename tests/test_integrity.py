"""Integrity: ``cpgformer check`` and the cheap check every command does on open
(docs/reliability.md, "Integrity")."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch
from _reliability_helpers import cli, make_store, tiny_checkpoint

from cpgformer.cli import main
from cpgformer.errors import InputError
from cpgformer.io.store import open_dataset


@pytest.fixture
def imputed(tmp_path: Path) -> tuple[Path, Path, Path]:
    store = make_store(tmp_path)
    ckpt = tiny_checkpoint(store, tmp_path / "model.pt")
    assert main(["-q", "impute", str(store), str(ckpt), "-o", str(tmp_path / "imp")]) == 0
    return store, ckpt, tmp_path / "imp"


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def test_healthy_outputs_pass(tmp_path, capsys, imputed):
    store, ckpt, imp = imputed
    for path, kind in ((store, "store"), (imp, "imputed"), (ckpt, "checkpoint")):
        code, _ = cli(capsys, "check", path)
        assert code == 0
        assert main(["check", str(path), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["ok"] is True and report["kind"] == kind and report["problems"] == []
    manifest = json.loads((store / "manifest.json").read_text())
    assert set(manifest["files"]) >= {"cells.tsv", "chroms/0/positions.npy", "chroms/1/label.npy"}


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_truncated_or_deleted_store_array_is_never_reported_healthy(tmp_path, capsys, damage):
    store = make_store(tmp_path)
    target = store / "chroms" / "0" / "cov.npy"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-8])
    else:
        target.unlink()
    for command in ("info", "check", "export-npz"):
        extra = ["-o", tmp_path / "npz"] if command == "export-npz" else []
        code, msg = cli(capsys, command, store, *extra)
        assert code == 2 and str(target) in msg, msg
    with pytest.raises(InputError, match="cov.npy"):
        open_dataset(store)


def test_edited_site_count_is_caught_on_open(tmp_path, capsys):
    store = make_store(tmp_path)
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["chromosomes"][0]["n_sites"] += 5
    manifest["n_sites"] += 5
    (store / "manifest.json").write_text(json.dumps(manifest))
    code, msg = cli(capsys, "info", store)
    assert code == 2 and "positions.npy" in msg and "manifest promises" in msg


def test_edited_total_is_caught_on_open(tmp_path, capsys):
    store = make_store(tmp_path)
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["n_calls"] = 10**9
    (store / "manifest.json").write_text(json.dumps(manifest))
    code, msg = cli(capsys, "info", store)
    assert code == 2 and "n_calls 1000000000 disagrees" in msg


def test_changed_bytes_are_found_by_check(tmp_path, capsys):
    store = make_store(tmp_path)
    _flip_last_byte(store / "chroms" / "0" / "mc.npy")  # same size: the cheap check passes
    assert cli(capsys, "info", store)[0] == 0
    code, msg = cli(capsys, "check", store)
    assert code == 2 and "checksum differs" in msg
    assert main(["check", str(store), "--json"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert any("checksum differs" in p for p in report["problems"])
    assert any("fingerprint" in p for p in report["problems"])


def test_older_store_without_checksums_is_checked_by_content(tmp_path, capsys):
    store = make_store(tmp_path)
    manifest = json.loads((store / "manifest.json").read_text())
    del manifest["files"]
    (store / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(["check", str(store), "--json"]) == 0
    assert "not recorded" in json.loads(capsys.readouterr().out)["checksums"]
    (store / "chroms" / "1" / "label.npy").write_bytes(b"\x93NUMPY broken")
    code, msg = cli(capsys, "check", store)
    assert code == 2 and "label.npy" in msg


def test_damaged_imputed_store(tmp_path, capsys, imputed):
    _store, _ckpt, imp = imputed
    chunk = imp / "chroms" / "0" / "p-000000.npy"
    chunk.write_bytes(chunk.read_bytes()[:-2])
    code, msg = cli(capsys, "export", imp, "-o", tmp_path / "x.h5ad")
    assert code == 2 and str(chunk) in msg
    assert not (tmp_path / "x.h5ad").exists()
    code, msg = cli(capsys, "check", imp)
    assert code == 2 and str(chunk) in msg
    chunk.unlink()
    code, msg = cli(capsys, "check", imp)
    assert code == 2 and "missing" in msg


def test_damaged_checkpoint(tmp_path, capsys, imputed):
    _store, ckpt, _imp = imputed
    damaged = tmp_path / "damaged.pt"
    data = bytearray(ckpt.read_bytes())
    with zipfile.ZipFile(ckpt) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith("/data/0"))
    head = info.header_offset  # local header: name and extra lengths at bytes 26..29
    start = head + 30 + int.from_bytes(data[head + 26 : head + 28], "little")
    start += int.from_bytes(data[head + 28 : head + 30], "little")
    data[start] ^= 0xFF  # one weight byte: the archive still opens
    damaged.write_bytes(bytes(data))
    code, msg = cli(capsys, "check", damaged)
    assert code == 2 and "CRC" in msg
    nan = tmp_path / "nan.pt"
    from cpgformer.checkpoint import load_checkpoint, save_checkpoint

    loaded = load_checkpoint(ckpt)
    with torch.no_grad():
        next(iter(loaded.model.parameters())).fill_(float("nan"))
    save_checkpoint(nan, loaded.model, cells=loaded.cells)
    code, msg = cli(capsys, "check", nan)
    assert code == 2 and "NaN" in msg


def test_check_of_something_else(tmp_path, capsys):
    folder = tmp_path / "f"
    folder.mkdir()
    code, msg = cli(capsys, "check", folder)
    assert code == 2 and "not a cpgformer store" in msg
    code, msg = cli(capsys, "check", tmp_path / "nothing")
    assert code == 2 and "no such file" in msg
