"""Bad environments and damaged files (docs/reliability.md, "Environment" and "Checkpoints").

A full disk, a read-only folder, a stale FASTA index, a coordinate beyond any chromosome or a file
that is not a checkpoint: one line naming the file and the cause, exit code 2, nothing half-written.
Output files follow the umask.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import stat
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
from _reliability_helpers import cli, cov_text, make_store, tiny_checkpoint, tree, write_cells

from cpgformer.errors import EnvironmentProblem, describe_os_error

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _run_limited(args: list[str], cwd: Path, max_file_bytes: int) -> subprocess.CompletedProcess:
    """The CLI in a child process that cannot write files beyond ``max_file_bytes`` (a full disk)."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes fail with EFBIG instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    env = {**os.environ, "PYTHONPATH": SRC, "CPGFORMER_NO_PROGRESS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "cpgformer.cli", "-q", *args],
        cwd=cwd,
        env=env,
        preexec_fn=limit,
        capture_output=True,
        text=True,
        check=False,
    )


def _one_error_line(proc: subprocess.CompletedProcess, command: str) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.strip().splitlines() if not x.startswith(("WARNING", "INFO"))]
    assert len(lines) == 1 and lines[0].startswith(f"cpgformer {command}: error: "), proc.stderr
    return lines[0]


# ---------------------------------------------------------------------------------- full disk


def test_disk_full_during_prepare(tmp_path):
    cells = write_cells(tmp_path / "data")
    proc = _run_limited(["prepare", *map(str, cells), "-o", "store"], tmp_path, 600)
    msg = _one_error_line(proc, "prepare")
    assert "store" in msg and "disk full" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no output, partial or lock


def test_disk_full_during_impute_and_export(tmp_path):
    store = make_store(tmp_path)
    ckpt = tiny_checkpoint(store, tmp_path / "model.pt")
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = _run_limited(["impute", str(store), str(ckpt), "-o", "imp"], tmp_path, 200)
    msg = _one_error_line(proc, "impute")
    assert "disk full" in msg
    assert not (tmp_path / "imp").exists()
    # what was finished stays for the rerun to adopt; nothing else is left
    left = sorted(p.name for p in tmp_path.iterdir())
    assert set(left) - set(before) <= {".partial-imp.impute"}
    from cpgformer.cli import main

    assert main(["-q", "impute", str(store), str(ckpt), "-o", str(tmp_path / "imp")]) == 0
    proc = _run_limited(["export", "imp", "--to", "bedgraph", "-o", "bg"], tmp_path, 60)
    msg = _one_error_line(proc, "export")
    assert "disk full" in msg
    assert not list((tmp_path / "bg").glob("*.gz")) and not list(tmp_path.glob(".partial-*"))


def test_no_space_for_h5ad_is_refused_before_writing(tmp_path, capsys, monkeypatch):
    import shutil
    from collections import namedtuple

    store = make_store(tmp_path)
    ckpt = tiny_checkpoint(store, tmp_path / "model.pt")
    assert cli(capsys, "impute", store, ckpt, "-o", tmp_path / "imp")[0] == 0
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage(10**9, 10**9 - 10, 10))
    code, msg = cli(capsys, "export", tmp_path / "imp", "-o", tmp_path / "x.h5ad")
    assert code == 2 and "x.h5ad: not enough free space" in msg
    assert not (tmp_path / "x.h5ad").exists() and not list(tmp_path.glob(".partial-*"))


def test_torch_save_failure_names_the_output(tmp_path, monkeypatch):
    import torch

    from cpgformer.checkpoint import save_checkpoint
    from cpgformer.nn import CpGTransformer, ModelConfig

    def full(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", full)
    model = CpGTransformer(ModelConfig(n_cells=2, dna_window=0, hidden=8, n_heads=2, head_dim=4))
    with pytest.raises(EnvironmentProblem, match="model.pt: writing failed"):
        save_checkpoint(tmp_path / "model.pt", model)
    assert list(tmp_path.iterdir()) == []


def test_os_error_lines():
    err = OSError(errno.ENOSPC, "No space left on device", "/data/out/x.npy")
    assert describe_os_error(err) == "/data/out/x.npy: no space left on the device (disk full)"
    assert describe_os_error(OSError(errno.EROFS, "x"), "out") == "out: read-only file system"
    assert describe_os_error(PermissionError(errno.EACCES, "d", "f")) == "f: permission denied"


# ------------------------------------------------------------------------------ read-only folder


def test_read_only_output_folder_simulated(tmp_path, capsys, monkeypatch):
    """The lock file is the first thing written: a refusal there names the folder."""
    cells = write_cells(tmp_path / "data")
    ro = tmp_path / "ro"
    ro.mkdir()
    real_open = os.open

    def guarded(path, flags, mode=0o777, **kw):  # noqa: ANN001, ANN003, ANN202
        if str(path).startswith(str(ro)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(os, "open", guarded)
    code, msg = cli(capsys, "prepare", *cells, "-o", ro / "store")
    assert code == 2 and str(ro) in msg and "Permission denied" in msg
    assert list(ro.iterdir()) == []


def _prepare_as_unprivileged(args: list[str]) -> tuple[int, str]:
    """``cpgformer prepare ARGS`` in a forked child; as root the child drops to user nobody first
    (permission bits do not bind root)."""
    import io
    import json

    from cpgformer.cli import main

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code, err = 99, ""
        try:
            os.close(read)
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            buf = io.StringIO()
            sys.stderr = buf
            code = main(["-q", "prepare", *args])
            err = buf.getvalue()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            err = repr(exc)
        finally:
            os.write(write, json.dumps([code, err]).encode())
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    code, err = json.loads(data)
    return code, err


def test_read_only_output_folder_real():
    """The same with real permissions (as an unprivileged user when the suite runs as root)."""
    import shutil

    base = Path(tempfile.mkdtemp(prefix="cpgformer-ro-"))  # removed below
    try:
        base.chmod(0o755)
        cells = write_cells(base / "data")
        for p in cells:
            p.chmod(0o644)
        (base / "data").chmod(0o755)
        ro = base / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        code, err = _prepare_as_unprivileged([*map(str, cells), "-o", str(ro / "store")])
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, err
        assert str(ro) in lines[0] and "ermission denied" in lines[0]
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)
        shutil.rmtree(base)


# ---------------------------------------------------------------------------------- input files


def test_stale_fasta_index(tmp_path, capsys):
    fasta = tmp_path / "g.fa"
    fasta.write_text(">chr1\nACGTTCGAAC\nGT\n>chr2\nTTCGAA\n")
    cells = write_cells(tmp_path / "data", {"c": [("chr1", 2, 1, 0)]})
    assert cli(capsys, "prepare", *cells, "--fasta", fasta, "-o", tmp_path / "s1")[0] == 0
    assert (tmp_path / "g.fa.fai").is_file()
    fasta.write_text(">chr1\nACGTTCGAACGT\n>chr2\nTTCGAA\n")  # rewrapped; the index is stale
    before = (tmp_path / "g.fa.fai").read_text()
    code, msg = cli(capsys, "prepare", *cells, "--fasta", fasta, "-o", tmp_path / "s2")
    assert code == 2 and "g.fa.fai" in msg and "stale FASTA index" in msg
    assert (tmp_path / "g.fa.fai").read_text() == before  # a user's index is never rewritten
    assert not (tmp_path / "s2").exists()


@pytest.mark.parametrize("pos", ["18446744073709551617", "9223372036854775808", "1099511627777"])
def test_coordinate_beyond_any_chromosome(tmp_path, capsys, pos):
    f = tmp_path / "c.cov"
    f.write_text(f"chr1\t{pos}\t{pos}\t100.0\t1\t0\n")
    good = write_cells(tmp_path / "data")
    code, msg = cli(capsys, "prepare", f, *good, "-o", tmp_path / "s")
    assert code == 2 and f"{f}:1:" in msg and "1099511627776" in msg
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------------------------- checkpoints


def _bad_checkpoint(kind: str, tmp_path: Path, good: Path) -> Path:
    p = tmp_path / f"{kind}.ckpt"
    if kind == "missing":
        return p
    if kind == "directory":
        p.mkdir()
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "text":
        p.write_text("epoch,loss\n1,0.5\n")
    elif kind == "truncated":
        data = good.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    elif kind == "zip":
        with zipfile.ZipFile(p, "w") as zf:
            zf.writestr("readme.txt", "hello")
    elif kind == "pickle":
        import argparse

        import torch

        torch.save({"hparams": argparse.Namespace(a=1)}, p)
    elif kind == "binary":
        p.write_bytes(bytes(range(256)) * 4)
    return p


BAD_CHECKPOINTS = {
    "missing": "no such file",
    "directory": "is a directory",
    "empty": "empty file",
    "text": "a text file",
    "truncated": "truncated or damaged",
    "zip": "not a PyTorch checkpoint",
    "pickle": "Python objects other than tensors",
    "binary": "unknown binary content",
}


@pytest.mark.parametrize("kind", sorted(BAD_CHECKPOINTS))
def test_bad_checkpoint_one_line_no_unsafe_advice(tmp_path, capsys, kind):
    store = make_store(tmp_path)
    good = tiny_checkpoint(store, tmp_path / "good.pt")
    bad = _bad_checkpoint(kind, tmp_path, good)
    before = tree(tmp_path)
    code, msg = cli(capsys, "impute", store, bad, "-o", tmp_path / "imp")
    assert code == 2 and str(bad) in msg and BAD_CHECKPOINTS[kind] in msg, msg
    assert "weights_only" not in msg and "trust" not in msg.lower()
    assert tree(tmp_path) == before and not (tmp_path / "imp").exists()


@pytest.mark.parametrize("kind", ["empty", "text", "truncated"])
def test_bad_original_checkpoint_for_convert(tmp_path, capsys, kind):
    store = make_store(tmp_path)
    good = tiny_checkpoint(store, tmp_path / "good.pt")
    bad = _bad_checkpoint(kind, tmp_path, good)
    code, msg = cli(capsys, "convert-checkpoint", bad, "--hparams", "n_cells=2", "-o",
                    tmp_path / "m.pt")  # fmt: skip
    assert code == 2 and BAD_CHECKPOINTS[kind] in msg and "weights_only" not in msg
    assert not (tmp_path / "m.pt").exists()


# ---------------------------------------------------------------------------------------- umask


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_follow_the_umask(tmp_path, capsys, umask):
    from cpgformer.utils.atomic import atomic_file

    old = os.umask(umask)
    try:
        store = make_store(tmp_path)
        ckpt = tiny_checkpoint(store, tmp_path / "model.pt")
        imp = tmp_path / "imp"
        assert cli(capsys, "impute", store, ckpt, "-o", imp)[0] == 0
        assert cli(capsys, "export", imp, "--to", "bedgraph", "-o", tmp_path / "bg")[0] == 0
        assert (
            cli(capsys, "export", imp, "--to", "allc", "-o", tmp_path / "allc", "--allow-cgn")[0]
            == 0
        )
        assert cli(capsys, "export", imp, "-o", tmp_path / "x.h5ad")[0] == 0
        with atomic_file(tmp_path / "run" / "metrics.csv", "w") as fh:
            fh.write("step,loss\n")
    finally:
        os.umask(old)
    want_file, want_dir = 0o666 & ~umask, 0o777 & ~umask
    files = [
        *(tmp_path / "bg").iterdir(),
        *(tmp_path / "allc").iterdir(),
        tmp_path / "x.h5ad",
        tmp_path / "run" / "metrics.csv",
        tmp_path / "model.pt",
        *store.rglob("*"),
        *imp.rglob("*"),
    ]
    assert len(files) > 20
    for p in files:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (want_dir if p.is_dir() else want_file), (p, oct(mode))


def test_cov_text_helper_round_trip():
    assert cov_text([("chr1", 5, 1, 3)]) == "chr1\t5\t5\t25.0\t1\t3\n"


def test_any_os_error_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    """An I/O error of the disk anywhere in a command: one line, exit 2 (traceback with -v)."""
    import cpgformer.commands.info as info

    def failing(_args):  # noqa: ANN001, ANN202
        raise OSError(errno.EIO, "Input/output error", "store/chroms/0/mc.npy")

    monkeypatch.setattr(info, "run", failing)
    from cpgformer.cli import main

    capsys.readouterr()
    assert main(["info", "store"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "cpgformer info: error: store/chroms/0/mc.npy: input/output error (damaged file or "
        "failing disk)"
    ]
    assert main(["-v", "info", "store"]) == 2
    assert "Traceback" in capsys.readouterr().err
