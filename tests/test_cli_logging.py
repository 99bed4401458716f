"""Logging for batch systems: -q/-v anywhere, nothing but errors with -q, timestamped progress
lines when stderr is not a terminal, defaults in every --help."""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cpgformer.cli import build_parser, main
from cpgformer.io.store import open_dataset
from cpgformer.utils import progress

sys.path.insert(0, str(Path(__file__).parent))
from _training_helpers import make_store  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TIMESTAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _tiny_checkpoint(store: Path, out: Path) -> Path:
    from cpgformer.checkpoint import save_checkpoint
    from cpgformer.nn import CpGTransformer, ModelConfig

    ds = open_dataset(store)
    torch.manual_seed(0)
    cfg = ModelConfig(
        n_cells=ds.n_cells, dna_window=0, hidden=8, n_heads=2, head_dim=4, n_layers=1,
        site_window=3, state_embed=4, cell_embed=4,
    )  # fmt: skip
    save_checkpoint(
        out, CpGTransformer(cfg).eval(), cells=ds.cells, store_fingerprint=ds.fingerprint
    )
    return out


# ------------------------------------------------------------------------------ progress lines


def test_impute_in_a_batch_log_prints_timestamped_progress_lines(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", {"1": 90, "2": 40}, 3, seed=2)
    ckpt = _tiny_checkpoint(store, tmp_path / "model.pt")
    env = {k: v for k, v in os.environ.items() if k != "CPGFORMER_NO_PROGRESS"}
    env.update(CPGFORMER_PROGRESS_INTERVAL="0", PYTHONPATH=str(REPO / "src"))
    args = [str(store), str(ckpt), "-o", str(tmp_path / "imp"), "--chunk-sites", "20"]
    proc = subprocess.run(
        [sys.executable, "-m", "cpgformer.cli", "impute", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,  # neither stdout nor stderr is a terminal
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    pattern = re.compile(
        rf"^{TIMESTAMP} INFO cpgformer\.progress: imputing: (\d+)/7 chunk \(\d+%\), "
        r"[\d.,]+ chunk/s, elapsed \d+:\d\d:\d\d, ETA \d+:\d\d:\d\d$"
    )
    lines = proc.stderr.splitlines()
    done = [int(m.group(1)) for m in map(pattern.match, lines) if m]
    assert done == list(range(1, 8))  # 5 + 2 chunks of 20 sites, one line per chunk here
    assert all(re.match(TIMESTAMP, line) for line in lines)  # every log line is timestamped
    assert "\r" not in proc.stderr  # no bar redraws in a log file


def test_progress_log_lines_are_rate_limited(monkeypatch: pytest.MonkeyPatch) -> None:
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("test.progress")
    logger.addHandler(Collect())
    logger.setLevel(logging.INFO)
    clock = iter([0.0, 1.0, 2.0, 11.0, 12.0, 25.0, 26.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    report = progress.LogProgress(5, "work", "file", interval=10.0, logger=logger)  # t=0
    for _ in range(5):  # updates at t = 1, 2, 11, 12, 25
        report.update(1)
    report.close()  # t = 26
    assert records == [
        "work: 3/5 file (60%), 0.273 file/s, elapsed 0:00:11, ETA 0:00:07",
        "work: 5/5 file (100%), 0.2 file/s, elapsed 0:00:25, ETA 0:00:00",
    ]  # nothing new to say at close


def test_progress_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CPGFORMER_NO_PROGRESS", raising=False)
    monkeypatch.setattr(progress, "_enabled", None)
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False, raising=False)
    assert progress.mode() == "log"
    assert isinstance(progress.bar(3), progress.LogProgress)
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: True, raising=False)
    assert progress.mode() == "bar"
    progress.set_enabled(False)
    assert progress.mode() == "off"
    monkeypatch.setenv("CPGFORMER_NO_PROGRESS", "1")
    progress.set_enabled(None)
    assert progress.mode() == "off"


# ------------------------------------------------------------------------------------- -q / -v


def _check_quiet(capfd: pytest.CaptureFixture[str], argv: list[str], stdout_ok: bool = False):
    """Run ``argv`` with -q before the command and again with -q after it."""
    for args in (["-q", *argv], [*argv, "-q"]):
        code = main(args)
        out, err = capfd.readouterr()
        assert code == 0, (args, err)
        assert err == "", (args, err)
        if not stdout_ok:
            assert out == "", (args, out)


def _check_error(capfd: pytest.CaptureFixture[str], argv: list[str]) -> None:
    for args in (["-q", *argv], [*argv, "-q"]):
        code = main(args)
        out, err = capfd.readouterr()
        assert code == 2, (args, err)
        assert out == ""
        assert err.count("\n") == 1 and err.startswith(f"cpgformer {argv[0]}: error: "), err


@pytest.mark.slow
def test_quiet_prints_nothing_but_errors_for_every_command(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CPGFORMER_NO_PROGRESS", raising=False)  # -q alone must silence
    monkeypatch.setenv("CPGFORMER_PROGRESS_INTERVAL", "0")  # (progress would print at once)
    torch.set_num_threads(1)
    ran: set[str] = set()
    t = tmp_path
    # calls files + prepare, info, export-npz
    cells = t / "cells"
    cells.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        pos = np.sort(rng.choice(np.arange(1, 5000, 3), size=60, replace=False))
        (cells / f"c{k}.cov").write_text(
            "".join(f"1\t{p}\t{p}\t100\t1\t0\n" for p in pos)
            + "".join(f"2\t{p}\t{p}\t0\t0\t1\n" for p in pos[:20])
        )
    files = [str(p) for p in sorted(cells.iterdir())]
    _check_quiet(capfd, ["prepare", *files, "-o", str(t / "p"), "--overwrite"])
    _check_quiet(capfd, ["info", str(t / "p")], stdout_ok=True)  # the report is the output
    _check_quiet(capfd, ["export-npz", str(t / "p"), "-o", str(t / "npz"), "--overwrite"])
    _check_quiet(capfd, ["simulate", "--genome-length", "3000", "--cells", "3", "-o",
                         str(t / "sim"), "--overwrite"])  # fmt: skip
    ran |= {"prepare", "info", "export-npz", "simulate"}
    # train, calibrate, impute, export, benchmark, explain on a tiny store
    store = make_store(t / "store", {"1": 160, "chr5": 32, "9": 40}, 4, seed=1)
    train = ["train", str(store), "-o", str(t / "run"), "--max-steps", "2", "--hidden", "8",
             "--n-layers", "1", "--n-heads", "2", "--head-dim", "4", "--cell-embed", "4",
             "--state-embed", "4", "--segment-length", "32", "--val-chromosomes", "5",
             "--test-chromosomes", "9", "--no-tensorboard", "--accelerator", "cpu"]  # fmt: skip
    assert main(["-q", *train]) == 0
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")  # no GPU/TPU banner, no litlogger tip, no progress
    assert main([*train[:3], str(t / "run2"), *train[4:], "-q"]) == 0
    assert capfd.readouterr() == ("", "")
    ckpt = t / "run" / "checkpoints" / "best.ckpt"
    assert ckpt.is_file()  # 2 steps end before the first scheduled validation
    _check_quiet(capfd, ["calibrate", str(store), str(ckpt), "-o", str(t / "cal.pt"),
                         "--chroms", "1", "--mask-fraction", "0.5", "--overwrite"])  # fmt: skip
    _check_quiet(capfd, ["impute", str(store), str(ckpt), "-o", str(t / "imp"), "--overwrite"])
    _check_quiet(capfd, ["export", str(t / "imp"), "-o", str(t / "x.h5ad"), "--overwrite"])
    _check_quiet(capfd, ["benchmark", str(store), "--checkpoint", str(ckpt), "-o",
                         str(t / "bench"), "--models", "cpgformer,site-mean", "--no-plots",
                         "--overwrite"])  # fmt: skip
    sites = t / "sites.tsv"
    sites.write_text(f"1\t{int(open_dataset(store).positions('1')[10])}\tcell0\n")
    _check_quiet(capfd, ["explain", str(store), str(ckpt), "--sites", str(sites), "-o",
                         str(t / "explained"), "--no-figures", "--n-steps", "4",
                         "--overwrite"])  # fmt: skip
    _check_quiet(capfd, ["cells", str(ckpt), str(store), "-o", str(t / "cellmap"),
                         "--overwrite"])  # fmt: skip
    _check_quiet(capfd, ["check", str(store)], stdout_ok=True)  # the report is the output
    ran |= {"train", "calibrate", "impute", "export", "benchmark", "explain", "cells", "check"}
    # commands too slow for a test run end to end: their errors still come through
    _check_error(capfd, ["convert-checkpoint", str(t / "missing.pt"), "-o", str(t / "c.pt")])
    (t / "taken").write_text("")
    _check_error(capfd, ["demo", "-o", str(t / "taken")])
    _check_error(capfd, ["prepare", str(t / "missing.cov"), "-o", str(t / "q")])
    _check_error(capfd, ["ablate", str(t / "missing-store"), "-o", str(t / "ablation")])
    ran |= {"convert-checkpoint", "demo", "ablate"}
    assert ran == set(_commands())  # every command was covered


def test_verbosity_flags_after_the_command(capfd: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["info", "x", "-q"])
    assert args._sub_quiet and not args.quiet
    args = build_parser().parse_args(["-v", "info", "x", "-v"])
    assert args.verbose == 1 and args._sub_verbose == 1
    with pytest.raises(SystemExit):
        main(["-q", "info", "x", "-v"])
    assert "exclude each other" in capfd.readouterr().err


def test_lightning_banner_and_advert_are_silenced(capfd: pytest.CaptureFixture[str]) -> None:
    from cpgformer.cli import setup_logging

    setup_logging(0, False)
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    rank_zero.info("GPU available: False, used: False")
    rank_zero.info("💡 Tip: For seamless cloud logging, try installing [litlogger](...)")
    rank_zero.warning("a real Lightning warning")
    setup_logging(2, False)  # -vv shows Lightning's messages, but never the advert
    rank_zero.info("TPU available: False, using: 0 TPU cores")
    rank_zero.info("💡 Tip: ... litlogger ...")
    err = capfd.readouterr().err
    assert "GPU available" not in err and "litlogger" not in err
    assert "a real Lightning warning" in err and "TPU available" in err
    setup_logging(0, False)


def test_python_warnings_are_timestamped_log_lines(capfd: pytest.CaptureFixture[str]) -> None:
    import warnings

    from cpgformer.cli import setup_logging

    with warnings.catch_warnings():  # (restores warnings.showwarning afterwards)
        setup_logging(0, False)  # stderr is captured here: not a terminal
        warnings.simplefilter("always")
        warnings.warn("the number of training batches is small", UserWarning, stacklevel=1)
    err = capfd.readouterr().err
    assert re.match(rf"{TIMESTAMP} WARNING py\.warnings: .*: UserWarning: the number of", err)


# ---------------------------------------------------------------------------------- --help


def test_every_option_shows_its_default_in_help() -> None:
    missing = []
    for name, parser in _commands().items():
        text = "".join(parser.format_help().split())  # (long values wrap at hyphens)
        for action in parser._actions:
            default = action.default
            if not action.option_strings or default in (None, False, argparse.SUPPRESS):
                continue
            if isinstance(default, (list, tuple)):
                shown = " ".join(map(str, default)) or "none"
            else:
                shown = str(default)
            if "".join(shown.split()) not in text:
                missing.append(f"{name} {action.option_strings[0]} ({shown})")
            if action.help is None:
                missing.append(f"{name} {action.option_strings[0]}: no help")
    assert missing == []
    demo = " ".join(_commands()["demo"].format_help().split())
    assert "--seed SEED random seed" in demo
    impute = " ".join(_commands()["impute"].format_help().split())
    assert "--compile" not in impute  # deprecated and ignored: hidden from the help
