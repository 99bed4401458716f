"""Imputation shared between ranks: same bytes as one process, resume after a lost rank, one lock.

The in-process tests play every rank in turn (the other ranks run inside the main rank's barrier);
the slow ones launch ``cpgformer impute --accelerator cpu --devices 2`` (two processes, gloo), by
Lightning's launcher and by torchrun.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_impute import make_store, tiny_model  # noqa: E402

import cpgformer.impute.run as run_module  # noqa: E402
from cpgformer.checkpoint import save_checkpoint  # noqa: E402
from cpgformer.impute import ImputeOptions, impute  # noqa: E402
from cpgformer.impute.distributed import EXIT_HOOK, MainRankFailed  # noqa: E402
from cpgformer.io.store import open_dataset  # noqa: E402
from cpgformer.utils.locks import output_lock  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CHUNK = 64  # chromosome 1: 5 chunks, chromosome 2: 2 chunks


def files_of(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def assert_same_bytes(a: Path, b: Path) -> None:
    fa, fb = files_of(a), files_of(b)
    assert sorted(fa) == sorted(fb)
    different = [name for name in fa if fa[name] != fb[name]]
    assert not different, different


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("dist")
    store = make_store(d / "store", {"1": 300, "2": 90}, n_cells=4, fill=0.4)
    ds = open_dataset(store)
    ckpt = d / "m.pt"
    save_checkpoint(ckpt, tiny_model(4), cells=ds.cells, store_fingerprint=ds.fingerprint)
    ref = impute(store, ckpt, d / "ref", ImputeOptions(chunk_sites=CHUNK))
    return {"store": store, "ckpt": ckpt, "ref": ref.path}


class PlayedRanks:
    """Rank ``rank`` of ``world_size``; the main rank plays the others inside its barrier."""

    def __init__(self, rank: int, world_size: int, args: tuple, pending: list | None = None):
        self.rank, self.world_size, self.args = rank, world_size, args
        self.pending = pending
        self.failed = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def ready(self, pending: list) -> None:
        self.pending = list(pending)

    def fail(self) -> None:
        self.failed = True

    def wait_ready(self) -> None:
        if self.pending is None:
            raise MainRankFailed()

    def share(self, items: list) -> list:
        return list(items[self.rank :: self.world_size])

    def barrier(self) -> None:
        if self.is_main:
            store, ckpt, out, opts = self.args
            for r in range(1, self.world_size):
                other = PlayedRanks(r, self.world_size, self.args, self.pending)
                assert run_module._impute(store, ckpt, out, opts, ranks=other) is None


def record_computes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    done: list[tuple[int, int]] = []
    original = run_module._ChunkWriter.compute

    def compute(self, k: int, i: int) -> None:  # noqa: ANN001
        done.append((k, i))
        original(self, k, i)

    monkeypatch.setattr(run_module._ChunkWriter, "compute", compute)
    return done


@pytest.mark.parametrize("world_size", [1, 2, 3, 10])  # 10 ranks for 7 chunks: 3 ranks idle
def test_ranks_share_chunks_round_robin_and_write_the_same_bytes(
    data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, world_size: int
) -> None:
    done = record_computes(monkeypatch)
    out = tmp_path / "out"
    opts = ImputeOptions(chunk_sites=CHUNK)
    ranks = PlayedRanks(0, world_size, (data["store"], data["ckpt"], out, opts))
    run_module._impute(data["store"], data["ckpt"], out, opts, ranks=ranks)
    items = [(0, i) for i in range(5)] + [(1, i) for i in range(2)]
    assert ranks.pending == items
    # rank 0 computes its share first, then the others in turn; nothing twice, nothing after
    expected = [it for r in range(world_size) for it in items[r::world_size]]
    assert done == expected
    assert_same_bytes(out, data["ref"])
    assert not list(tmp_path.glob(".*"))  # no partial directory, no lock file left


def test_resume_shares_only_the_chunks_not_written(
    data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    opts = ImputeOptions(chunk_sites=CHUNK)
    # an interrupted run that wrote chunks (0, 1) and (1, 0)
    original = run_module._ChunkWriter.compute
    calls = []

    def stop_after_two(self, k: int, i: int) -> None:  # noqa: ANN001
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append((k, i))
        original(self, k, i)

    monkeypatch.setattr(run_module._ChunkWriter, "compute", stop_after_two)
    ranks = PlayedRanks(0, 1, (data["store"], data["ckpt"], out, opts))
    ranks.share = lambda items: [(0, 1), (1, 0), (0, 2)]  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        run_module._impute(data["store"], data["ckpt"], out, opts, ranks=ranks)
    monkeypatch.setattr(run_module._ChunkWriter, "compute", original)
    done = record_computes(monkeypatch)
    ranks = PlayedRanks(0, 2, (data["store"], data["ckpt"], out, opts))
    run_module._impute(data["store"], data["ckpt"], out, opts, ranks=ranks)
    left = [(0, 0), (0, 2), (0, 3), (0, 4), (1, 1)]
    assert ranks.pending == left
    assert done == left[0::2] + left[1::2]
    assert_same_bytes(out, data["ref"])


def test_other_ranks_stop_quietly_when_the_main_rank_fails(data: dict[str, Path]) -> None:
    ranks = PlayedRanks(1, 2, ())
    with pytest.raises(MainRankFailed) as info:
        run_module._impute(
            data["store"], data["ckpt"], Path("unused"), ImputeOptions(), ranks=ranks
        )
    assert info.value.code == 2


# ---------------------------------------------------------------------------------------------
# two real processes (gloo on CPU)


def cli(*args: str, cwd: Path, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    return cli_module("cpgformer.cli", *args, cwd=cwd, extra_env=extra_env)


def cli_module(
    module: str, *args: str, cwd: Path, extra_env: dict | None = None
) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", CPGFORMER_NO_PROGRESS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    env.pop(EXIT_HOOK, None)
    env.update(extra_env or {})
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


def launch(data: dict[str, Path], out: Path, **kw) -> subprocess.CompletedProcess:  # noqa: ANN003
    store, ckpt = str(data["store"]), str(data["ckpt"])
    return cli("impute", store, ckpt, "-o", str(out), "--chunk-sites", str(CHUNK),
               "--accelerator", "cpu", "--devices", "2", cwd=out.parent, **kw)  # fmt: skip


@pytest.mark.slow
def test_two_processes_write_the_bytes_of_one(data: dict[str, Path], tmp_path: Path) -> None:
    proc = launch(data, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "7 chunk(s) to impute on 2 rank(s)" in proc.stderr
    assert proc.stdout.count("390 sites x 4 cells") == 1  # the summary once, from rank 0
    assert_same_bytes(tmp_path / "out", data["ref"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.slow
def test_a_lost_rank_then_a_rerun_completes_identically(
    data: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    killed = launch(data, out, extra_env={EXIT_HOOK: "1:1"})  # rank 1 dies after one chunk
    assert killed.returncode != 0
    partial = tmp_path / ".partial-out.impute"
    written = list(partial.glob("chroms/*/p-*.npy"))
    assert 1 <= len(written) < 7 and not out.exists()
    proc = launch(data, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "written by an earlier run" in proc.stderr
    assert_same_bytes(out, data["ref"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.slow
def test_a_locked_output_stops_every_rank_with_one_message(
    data: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    with output_lock(out):
        proc = launch(data, out)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and "another cpgformer process is writing this output" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, lock released


@pytest.mark.slow
def test_torchrun_launch_writes_the_bytes_of_one(data: dict[str, Path], tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    proc = cli_module(
        "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2", "--master-port",
        str(port), "-m", "cpgformer.cli", "impute", str(data["store"]), str(data["ckpt"]),
        "-o", str(out), "--chunk-sites", str(CHUNK), "--accelerator", "cpu", "--devices", "2",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "7 chunk(s) to impute on 2 rank(s)" in proc.stderr
    assert_same_bytes(out, data["ref"])
