"""Overwrite safety and output locks (docs/reliability.md, "Outputs").

--overwrite replaces only an output of the same kind that cpgformer wrote; the working directory,
inputs and folders holding them are never written; one writer per output; leftovers of killed runs
are removed or adopted by the rerun.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _reliability_helpers import cli, make_store, tiny_checkpoint, tree, write_cells

from cpgformer.io.store import open_dataset
from cpgformer.utils.locks import lock_path, output_lock
from cpgformer.utils.outputs import MARKER, check_output, output_kind

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture
def imputed(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(store, checkpoint, imputed store) of the small two-cell data."""
    store = make_store(tmp_path)
    ckpt = tiny_checkpoint(store, tmp_path / "model.pt")
    imp = tmp_path / "imp"
    from cpgformer.cli import main

    assert main(["-q", "impute", str(store), str(ckpt), "-o", str(imp)]) == 0
    return store, ckpt, imp


# ------------------------------------------------------------------------ the working directory


def test_prepare_overwrite_in_the_input_folder_deletes_nothing(tmp_path, capsys, monkeypatch):
    cells = write_cells(tmp_path / "data")
    (tmp_path / "data" / "notes.txt").write_text("my notes\n")
    before = tree(tmp_path / "data")
    monkeypatch.chdir(tmp_path / "data")
    code, msg = cli(capsys, "prepare", *[c.name for c in cells], "-o", ".", "--overwrite")
    assert code == 2 and "working directory" in msg
    assert tree(tmp_path / "data") == before


def test_output_that_contains_the_working_directory_is_refused(tmp_path, capsys, monkeypatch):
    cells = write_cells(tmp_path / "data")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    before = tree(tmp_path)
    code, msg = cli(capsys, "prepare", *cells, "-o", "..", "--overwrite")
    assert code == 2 and "working directory" in msg
    assert tree(tmp_path) == before


# ------------------------------------------------------------------------------------ inputs


def test_output_equal_to_an_input_is_refused(tmp_path, capsys):
    cells = write_cells(tmp_path / "data")
    before = tree(tmp_path)
    code, msg = cli(capsys, "prepare", *cells, "-o", cells[0], "--overwrite")
    assert code == 2 and "is an input" in msg
    assert tree(tmp_path) == before


def test_output_folder_holding_an_input_is_refused(tmp_path, capsys):
    cells = write_cells(tmp_path / "data")
    before = tree(tmp_path)
    code, msg = cli(capsys, "prepare", *cells, "-o", tmp_path / "data", "--overwrite")
    assert code == 2 and "contains an input" in msg
    assert tree(tmp_path) == before


def test_impute_into_its_own_store_is_refused(tmp_path, capsys):
    store = make_store(tmp_path)
    ckpt = tiny_checkpoint(store, tmp_path / "model.pt")
    before = tree(tmp_path)
    code, msg = cli(capsys, "impute", store, ckpt, "-o", store, "--overwrite")
    assert code == 2 and "is an input" in msg
    code, msg = cli(capsys, "impute", store, ckpt, "-o", store / "imputed")
    assert code == 2 and "is inside an input" in msg
    assert tree(tmp_path) == before


# ---------------------------------------------------------------- unrelated or other outputs


def test_prepare_overwrite_keeps_an_unrelated_folder(tmp_path, capsys):
    cells = write_cells(tmp_path / "data")
    folder = tmp_path / "somefolder"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work\n")
    code, msg = cli(capsys, "prepare", *cells, "-o", folder, "--overwrite")
    assert code == 2 and "not an output written by cpgformer" in msg
    assert (folder / "thesis.tex").read_text() == "years of work\n"


def test_impute_overwrite_keeps_an_unrelated_folder(tmp_path, capsys):
    store = make_store(tmp_path)
    ckpt = tiny_checkpoint(store, tmp_path / "model.pt")
    folder = tmp_path / "somefolder"
    folder.mkdir()
    (folder / "keep.txt").write_text("x")
    code, msg = cli(capsys, "impute", store, ckpt, "-o", folder, "--overwrite")
    assert code == 2 and "not an output written by cpgformer" in msg
    assert (folder / "keep.txt").read_text() == "x"
    assert not list(tmp_path.glob(".partial-*"))


def test_overwrite_refuses_an_output_of_another_kind(tmp_path, capsys, imputed):
    store, _ckpt, imp = imputed
    cells = sorted((tmp_path / "cells").glob("*.cov"))
    before = tree(imp)
    code, msg = cli(capsys, "prepare", *cells, "-o", imp, "--overwrite")
    assert code == 2 and "cpgformer imputed store" in msg
    assert tree(imp) == before
    code, msg = cli(capsys, "export-npz", store, "-o", imp, "--overwrite")
    assert code == 2 and "imputed store" in msg


def test_overwrite_replaces_a_store_cpgformer_wrote(tmp_path, capsys):
    store = make_store(tmp_path)
    old = open_dataset(store).fingerprint
    cells = write_cells(tmp_path / "other", {"z1": [("chr3", 5, 1, 0)]})
    code, msg = cli(capsys, "prepare", *cells, "-o", store)
    assert code == 2 and "already exists" in msg
    assert open_dataset(store).fingerprint == old
    code, _ = cli(capsys, "prepare", *cells, "-o", store, "--overwrite")
    assert code == 0
    assert open_dataset(store).cells == ["z1"]
    assert not list(tmp_path.glob(".partial-*")) and not list(tmp_path.glob("*.cpgformer-lock"))


def test_overwrite_of_an_imputed_store_cpgformer_wrote(tmp_path, capsys, imputed):
    store, ckpt, imp = imputed
    (imp / "manifest.json").touch()  # still ours: same content, fresh mtime
    code, _ = cli(capsys, "impute", store, ckpt, "-o", imp, "--overwrite")
    assert code == 0 and output_kind(imp) == "imputed"


def test_symlinked_output_is_not_followed(tmp_path, capsys):
    store = make_store(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(store, target_is_directory=True)
    cells = sorted((tmp_path / "cells").glob("*.cov"))
    code, msg = cli(capsys, "prepare", *cells, "-o", link, "--overwrite")
    assert code == 2 and "not an output written by cpgformer" in msg
    assert link.is_symlink() and output_kind(store) == "store"


def test_h5ad_overwrite_only_replaces_a_cpgformer_file(tmp_path, capsys, imputed):
    _store, _ckpt, imp = imputed
    mine = tmp_path / "results.h5ad"
    mine.write_text("not anndata\n")
    code, msg = cli(capsys, "export", imp, "-o", mine, "--overwrite")
    assert code == 2 and "not an output written by cpgformer" in msg
    assert mine.read_text() == "not anndata\n"
    ours = tmp_path / "ours.h5ad"
    assert cli(capsys, "export", imp, "-o", ours)[0] == 0
    assert output_kind(ours) == "h5ad"
    assert cli(capsys, "export", imp, "-o", ours)[0] == 2
    assert cli(capsys, "export", imp, "-o", ours, "--overwrite")[0] == 0


def test_bedgraph_overwrite_replaces_only_files_cpgformer_wrote(tmp_path, capsys, imputed):
    store, _ckpt, imp = imputed
    out = tmp_path / "bg"
    out.mkdir()
    (out / "README").write_text("mine")
    assert cli(capsys, "export", imp, "--to", "bedgraph", "-o", out)[0] == 0
    written = sorted(p.name for p in out.glob("*.bedGraph.gz"))
    assert written == ["c1.imputed.bedGraph.gz", "c2.imputed.bedGraph.gz"]
    assert json.loads((out / MARKER).read_text())["files"] == written
    code, msg = cli(capsys, "export", imp, "--to", "bedgraph", "-o", out)
    assert code == 2 and "already exists" in msg
    assert cli(capsys, "export", imp, "--to", "bedgraph", "-o", out, "--overwrite")[0] == 0
    assert (out / "README").read_text() == "mine"
    # a file of the same name that cpgformer did not write is never replaced
    other = tmp_path / "bg2"
    other.mkdir()
    (other / "c1.imputed.bedGraph.gz").write_bytes(b"user data")
    code, msg = cli(capsys, "export", imp, "--to", "bedgraph", "-o", other, "--overwrite")
    assert code == 2 and "not a file cpgformer wrote" in msg
    assert (other / "c1.imputed.bedGraph.gz").read_bytes() == b"user data"
    assert sorted(p.name for p in other.iterdir()) == ["c1.imputed.bedGraph.gz"]
    # never into another cpgformer output
    before = sorted(p.name for p in store.rglob("*"))
    code, msg = cli(capsys, "export", imp, "--to", "allc", "-o", store)
    assert code == 2 and "files are never added to it" in msg
    assert sorted(p.name for p in store.rglob("*")) == before


def test_export_npz_and_simulate_refuse_unrelated_folders(tmp_path, capsys):
    store = make_store(tmp_path)
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    code, msg = cli(capsys, "export-npz", store, "-o", folder, "--overwrite")
    assert code == 2 and "not an output written by cpgformer" in msg
    code, msg = cli(
        capsys, "simulate", "--genome-length", 20000, "--cells", 2, "-o", folder, "--overwrite"
    )
    assert code == 2 and "not an output written by cpgformer" in msg
    assert tree(folder) == {"a.txt": b"a"}
    # the kinds cpgformer wrote are replaced
    npz = tmp_path / "npz"
    assert cli(capsys, "export-npz", store, "-o", npz)[0] == 0
    assert output_kind(npz) == "npz"
    assert cli(capsys, "export-npz", store, "-o", npz, "--overwrite")[0] == 0


def test_demo_overwrite_refuses_a_folder_it_did_not_write(tmp_path, monkeypatch):
    from cpgformer.demo import run_demo
    from cpgformer.errors import UsageError

    home = tmp_path / "home"
    home.mkdir()
    (home / "photos").mkdir()
    with pytest.raises(UsageError, match="not an output written by cpgformer"):
        run_demo(home, overwrite=True)
    assert (home / "photos").is_dir()


def test_model_files_are_recognised_without_unpickling(tmp_path):
    store = make_store(tmp_path)
    ckpt = tiny_checkpoint(store, tmp_path / "model.pt")
    assert output_kind(ckpt) == "model"
    text = tmp_path / "t.pt"
    text.write_text("hello")
    assert output_kind(text) is None
    assert check_output(ckpt, "model", overwrite=True) is True
    from cpgformer.errors import UsageError

    with pytest.raises(UsageError, match="not an output written by cpgformer"):
        check_output(text, "model", overwrite=True)


# ------------------------------------------------------------------------------------- locks


def test_second_writer_refuses_at_once_naming_the_holder(tmp_path, capsys):
    cells = write_cells(tmp_path / "data")
    out = tmp_path / "store"
    with output_lock(out):
        code, msg = cli(capsys, "prepare", *cells, "-o", out)
        assert code == 2 and "another cpgformer process" in msg and f"pid {os.getpid()}" in msg
    assert not out.exists() and not lock_path(out).exists()
    assert cli(capsys, "prepare", *cells, "-o", out)[0] == 0


def test_two_imputes_into_one_output(tmp_path, capsys):
    """The second run refuses while the first holds the output; the first's partial output stays."""
    store = make_store(tmp_path)
    ckpt = tiny_checkpoint(store, tmp_path / "model.pt")
    out = tmp_path / "imp"
    partial = tmp_path / ".partial-imp.impute"
    partial.mkdir()
    (partial / "plan.json").write_text("{}")
    with output_lock(out):
        code, msg = cli(capsys, "impute", store, ckpt, "-o", out)
        assert code == 2 and "another cpgformer process" in msg
    assert (partial / "plan.json").read_text() == "{}"


def _holder_process(out: Path) -> subprocess.Popen:
    script = textwrap.dedent(
        f"""
        import sys, time
        from cpgformer.utils.locks import output_lock
        with output_lock({str(out)!r}):
            print("locked", flush=True)
            time.sleep(60)
        """
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"locked"
    return proc


def test_lock_of_a_killed_process_is_taken_over(tmp_path, capsys, caplog):
    cells = write_cells(tmp_path / "data")
    out = tmp_path / "store"
    proc = _holder_process(out)
    try:
        code, msg = cli(capsys, "prepare", *cells, "-o", out)
        assert code == 2 and f"pid {proc.pid}" in msg
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert lock_path(out).exists()  # left behind by the killed holder
    assert cli(capsys, "prepare", *cells, "-o", out)[0] == 0
    assert not lock_path(out).exists()


def test_leftovers_of_a_killed_prepare_are_removed_by_the_rerun(tmp_path, capsys):
    cells = write_cells(tmp_path / "data")
    out = tmp_path / "store"
    script = textwrap.dedent(
        f"""
        import os, signal
        from cpgformer.utils.atomic import atomic_dir
        with atomic_dir({str(out)!r}, kind="store") as tmp:
            (tmp / "half.npy").write_bytes(b"x" * 1000)
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.run([sys.executable, "-c", script], env=env, check=False)
    assert proc.returncode == -signal.SIGKILL
    left = list(tmp_path.glob(".partial-store-*"))
    assert len(left) == 1 and (left[0] / "half.npy").exists()
    assert cli(capsys, "prepare", *cells, "-o", out)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "store"]


def test_leftovers_of_another_output_are_kept(tmp_path, capsys):
    """``store-2``'s temporary folder is not ``store``'s leftover."""
    cells = write_cells(tmp_path / "data")
    other = tmp_path / ".partial-store-2-abcdefgh"
    other.mkdir()
    assert cli(capsys, "prepare", *cells, "-o", tmp_path / "store")[0] == 0
    assert other.is_dir()


def test_leftover_export_files_are_removed_by_the_rerun(tmp_path, capsys, imputed):
    _store, _ckpt, imp = imputed
    out = tmp_path / "bg"
    out.mkdir()
    (out / ".partial-c1-abcd1234.imputed.bedGraph.gz").write_bytes(b"half")
    (out / ".partial-mine-abcd1234.txt").write_bytes(b"not ours")
    assert cli(capsys, "export", imp, "--to", "bedgraph", "-o", out)[0] == 0
    names = sorted(p.name for p in out.iterdir())
    assert ".partial-c1-abcd1234.imputed.bedGraph.gz" not in names
    assert ".partial-mine-abcd1234.txt" in names


def test_files_of_a_killed_export_are_replaced_by_the_rerun(tmp_path, capsys, imputed):
    """A killed export leaves finished files that its marker lists as pending: the same command
    replaces them without --overwrite."""
    from cpgformer.utils.outputs import begin_files_in, read_marker

    _store, _ckpt, imp = imputed
    out = tmp_path / "bg"
    out.mkdir()
    names = ["c1.imputed.bedGraph.gz", "c2.imputed.bedGraph.gz"]
    begin_files_in(out, "export", names)
    (out / names[0]).write_bytes(b"finished by the killed run")
    assert cli(capsys, "export", imp, "--to", "bedgraph", "-o", out)[0] == 0
    assert (out / names[0]).read_bytes()[:2] == b"\x1f\x8b"
    marker = read_marker(out)
    assert marker["files"] == names and marker["pending"] == []


def test_an_empty_folder_is_used_as_the_output(tmp_path, capsys):
    cells = write_cells(tmp_path / "data")
    (tmp_path / "store").mkdir()
    assert cli(capsys, "prepare", *cells, "-o", tmp_path / "store")[0] == 0
    assert output_kind(tmp_path / "store") == "store"


def test_file_system_without_locks_warns_and_writes(tmp_path, capsys, monkeypatch):
    import errno
    import fcntl

    def no_locks(_fd, _op):  # noqa: ANN001, ANN202
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    cells = write_cells(tmp_path / "data")
    code, err = cli(capsys, "prepare", *cells, "-o", tmp_path / "store")
    assert code == 0 and "does not support locks" in err
    assert output_kind(tmp_path / "store") == "store" and not lock_path(tmp_path / "store").exists()
