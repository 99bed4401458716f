"""Flags generated from option dataclasses (``cpgformer.options``)."""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import pytest

from cpgformer import options
from cpgformer.errors import UsageError
from cpgformer.options import option


@pytest.fixture(autouse=True)
def _package_logs_reach_caplog(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """An earlier CLI run in the same process (``-q`` among them) sets the package logger's level and
    stops it from propagating: undone here so that caplog sees the warnings."""
    logger = logging.getLogger("cpgformer")
    monkeypatch.setattr(logger, "propagate", True)
    level = logger.level
    logger.setLevel(logging.NOTSET)
    yield
    logger.setLevel(level)


@dataclass
class Example:
    store: str = option(help="a store", positional=True)
    output: str = option("out", "output folder", short="-o")
    max_steps: int = option(800, "training steps")
    rate: float | None = option(None, "a rate")
    test_chromosomes: tuple[str, ...] = option(
        (), "held-out chromosomes", deprecated=("--test-chroms",)
    )
    protocol: Literal["holdout", "exhaustive"] = option("holdout", "how entries are hidden")
    figures: bool = option(True, "write figures")
    overwrite: bool = option(False, "replace an existing output", deprecated=("--force",))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    options.add_options(parser, Example)
    options.add_alias(parser, "--no-plots", "--no-figures", "figures", store=False)
    return parser


def test_defaults_types_and_help() -> None:
    parser = _parser()
    got = options.from_args(Example, parser.parse_args(["S"]))
    assert got == Example(store="S")
    got = options.from_args(
        Example,
        parser.parse_args(
            ["S", "-o", "x", "--max-steps", "3", "--rate", "0.5", "--test-chromosomes", "a,b", "c",
             "--protocol", "exhaustive", "--no-figures", "--overwrite"]
        ),
    )  # fmt: skip
    assert got == Example("S", "x", 3, 0.5, ("a", "b", "c"), "exhaustive", False, True)
    assert options.from_args(Example, parser.parse_args(["S", "--rate", "none"])).rate is None
    with pytest.raises(SystemExit):
        parser.parse_args(["S", "--protocol", "other"])
    with pytest.raises(SystemExit):
        parser.parse_args(["S", "--max-steps", "many"])
    text = parser.format_help()
    assert "training steps (default: 800)" in text
    assert "--no-figures" in text and "--overwrite" in text
    # deprecated spellings are accepted but not shown
    assert "--force" not in text and "--test-chroms" not in text and "--no-plots" not in text


def test_deprecated_spellings_warn_and_set_the_same_field(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an earlier CLI run in the same process stops the package logger from propagating to caplog
    monkeypatch.setattr(logging.getLogger("cpgformer"), "propagate", True)
    parser = _parser()
    logger = logging.getLogger(options.__name__)  # (the CLI may have stopped propagation)
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger=options.__name__):
            args = parser.parse_args(["S", "--force", "--test-chroms", "x,y", "--no-plots"])
    finally:
        logger.removeHandler(caplog.handler)
    got = options.from_args(Example, args)
    assert got.overwrite is True and got.test_chromosomes == ("x", "y") and got.figures is False
    messages = " ".join(r.getMessage() for r in caplog.records)
    for old, new in (("--force", "--overwrite"), ("--test-chroms", "--test-chromosomes"),
                     ("--no-plots", "--no-figures")):  # fmt: skip
        assert f"{old} is deprecated" in messages and f"use {new}" in messages


def test_prefix_suppressed_defaults_and_shared_spellings() -> None:
    parser = argparse.ArgumentParser()
    seen: set[str] = set()
    options.add_options(
        parser, Example, prefix="a__", skip={"store"}, suppress_defaults=True, seen=seen
    )
    options.add_options(parser, Example, prefix="b__", skip={"store"}, seen=seen)
    args = parser.parse_args(["--max-steps", "5"])
    assert vars(args) == {"a__max_steps": 5}  # unset flags absent; spellings added once
    assert options.values(args, Example, prefix="a__") == {"max_steps": 5}


def test_group_parse_and_shown() -> None:
    """A field's group titles its section of --help, ``parse`` turns the one value given into the
    field's value, and ``shown`` states the default instead of the raw value."""

    @dataclass
    class Grouped:
        spill_bytes: int = option(
            1 << 20, "buffer, MiB", flag="--spill-mb", parse=lambda t: int(t) << 20, shown="1"
        )
        keep: tuple[str, ...] = option((), "classes", parse=str, group="contigs")

    parser = argparse.ArgumentParser()
    options.add_options(parser, Grouped)
    assert options.from_args(Grouped, parser.parse_args([])) == Grouped()
    got = options.from_args(Grouped, parser.parse_args(["--spill-mb", "3", "--keep", "a,b"]))
    assert got == Grouped(spill_bytes=3 << 20, keep="a,b")  # type: ignore[arg-type]
    text = parser.format_help()
    assert "buffer, MiB (default: 1)" in text and str(1 << 20) not in text
    titles = [g.title for g in parser._action_groups if g._group_actions]
    assert "contigs" in titles
    contigs = next(g for g in parser._action_groups if g.title == "contigs")
    assert [a.dest for a in contigs._group_actions] == ["keep"]


def test_prepare_and_export_flags_reach_their_options(tmp_path) -> None:  # noqa: ANN001
    """prepare's and export's flags are made from PrepareOptions / ExportOptions by this module."""
    from cpgformer.commands import export as export_command
    from cpgformer.commands import prepare as prepare_command
    from cpgformer.export import ExportOptions
    from cpgformer.prepare import PrepareOptions

    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")
    parser = argparse.ArgumentParser()
    prepare_command.add_arguments(parser)
    args = parser.parse_args(
        ["f1", "f2", "-o", "out", "--spill-mb", "2", "--cell-names", str(names),
         "--keep-contigs", "spike-in", "--pair-adjacent", "--binarize", "majority"]
    )  # fmt: skip
    got = options.from_args(PrepareOptions, args)
    assert got == PrepareOptions(
        spill_bytes=2 << 20, cell_names=["a", "b"], keep_contigs="spike-in",  # type: ignore[arg-type]
        pair_adjacent=True, binarize="majority",
    )  # fmt: skip
    assert options.from_args(PrepareOptions, parser.parse_args(["-o", "x"])) == PrepareOptions()
    with pytest.raises(SystemExit):
        parser.parse_args(["-o", "x", "--binarize", "nope"])
    parser = argparse.ArgumentParser()
    export_command.add_arguments(parser)
    args = parser.parse_args(["imp", "-o", "o", "--no-uncertainty", "--kinds", "observed"])
    assert options.from_args(ExportOptions, args) == ExportOptions(
        uncertainty=False, kinds=["observed"]
    )


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    from cpgformer.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("name", sorted(_subparsers()))
def test_one_spelling_per_concept(name: str) -> None:
    """Per subcommand: one visible flag per destination (old spellings only as hidden, deprecated
    aliases), and none of the retired spellings in --help."""
    parser = _subparsers()[name]
    visible: dict[str, list[str]] = {}
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        longs = [s for s in action.option_strings if s.startswith("--")]
        # (a --x/--no-x pair is one flag; -o/--output one flag with a short form)
        visible.setdefault(action.dest, []).append(longs[0] if longs else action.option_strings[0])
    doubled = {dest: flags for dest, flags in visible.items() if len(flags) > 1}
    assert not doubled, f"{name}: several visible flags set the same value: {doubled}"
    text = parser.format_help()
    for retired in (r"--force\b", r"--no-plots\b", r"--test-chroms\b"):
        assert not re.search(retired, text), f"{name} --help shows {retired}"
    for action in parser._actions:  # hidden spellings warn (they are deprecated aliases)
        if action.option_strings and action.help == argparse.SUPPRESS and action.dest in visible:
            assert type(action).__name__.startswith("Deprecated"), (name, action.option_strings)


def test_convert_checkpoint_hparams_keep_commas_and_force_is_deprecated(caplog) -> None:  # noqa: ANN001
    """--hparams values are JSON or key=value pairs: kept whole (a JSON object holds commas);
    --force still works, with a warning naming --overwrite."""
    from cpgformer.commands import convert_checkpoint
    from cpgformer.legacy import ConvertOptions

    parser = argparse.ArgumentParser()
    convert_checkpoint.add_arguments(parser)
    spec = '{"n_cells": 20, "RF": 1001}'
    with caplog.at_level(logging.WARNING):
        args = parser.parse_args(["orig.pt", "-o", "m", "--hparams", spec, "mode=axial", "--force"])
    got = options.from_args(ConvertOptions, args)
    assert got == ConvertOptions(hparams=[spec, "mode=axial"], overwrite=True)
    assert "--force is deprecated" in caplog.text and "--overwrite" in caplog.text
    assert options.from_args(ConvertOptions, parser.parse_args(["o.pt", "-o", "m"])).hparams == []


def test_impute_flags_fill_options_and_launch() -> None:
    """impute's flags land in ImputeOptions (what decides the output) and ImputeLaunch (where it
    runs, regions); fields for Python callers only are no flags."""
    from cpgformer.commands import impute as impute_command
    from cpgformer.impute import ImputeOptions
    from cpgformer.impute.run import ImputeLaunch

    parser = argparse.ArgumentParser()
    impute_command.add_arguments(parser)
    flags = {s for a in parser._actions for s in a.option_strings}
    assert "--embed-chunk" not in flags and "--shared-dna" not in flags
    args = parser.parse_args(
        ["s", "c", "-o", "o", "--chroms", "1", "2", "--keep-observed", "--dtype", "uint8",
         "--temperature", "1.5", "--chunk-sites", "2048", "--bin-size", "1000", "--devices", "2",
         "--device", "cuda:1", "--overwrite"]
    )  # fmt: skip
    assert options.from_args(ImputeOptions, args) == ImputeOptions(
        chroms=["1", "2"], keep_observed=True, dtype="uint8", temperature=1.5, chunk_sites=2048,
        overwrite=True,
    )  # fmt: skip
    launch = options.from_args(ImputeLaunch, args)
    assert launch == ImputeLaunch(bin_size=1000, devices="2", device="cuda:1")
    assert launch.distributed
    plain = parser.parse_args(["s", "c", "-o", "o"])
    assert options.from_args(ImputeOptions, plain) == ImputeOptions()
    assert not options.from_args(ImputeLaunch, plain).distributed


def test_export_npz_genome_sources_exclude_each_other(tmp_path, capfd) -> None:  # noqa: ANN001
    from cpgformer.cli import main
    from cpgformer.io.npz import ExportNpzOptions

    out = str(tmp_path / "npz")
    assert main(["export-npz", str(tmp_path), "-o", out, "--fasta", "g.fa", "--no-genome"]) == 2
    assert "--fasta and --no-genome exclude each other" in capfd.readouterr().err
    assert not (tmp_path / "npz").exists()
    ExportNpzOptions(fasta="g.fa").check()
    with pytest.raises(UsageError, match="--genome-npz"):
        ExportNpzOptions(fasta="g.fa", genome_npz="X.npz").check()


def test_ablate_and_calibrate_flags_fill_their_options() -> None:
    from cpgformer.ablate import VARIANTS, AblateOptions
    from cpgformer.commands import ablate as ablate_command
    from cpgformer.commands import calibrate as calibrate_command
    from cpgformer.impute.calibration import CalibrateOptions

    parser = argparse.ArgumentParser()
    ablate_command.add_arguments(parser)
    args = parser.parse_args(
        ["s", "-o", "o", "--variants", "full", "no-dna", "--hide-fraction", "0.3"]
    )
    assert options.from_args(AblateOptions, args) == AblateOptions(("full", "no-dna"), 0.3)
    assert (
        options.from_args(AblateOptions, parser.parse_args(["s", "-o", "o"])).variants == VARIANTS
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["s", "-o", "o", "--variants", "no-such-variant"])
    parser = argparse.ArgumentParser()
    calibrate_command.add_arguments(parser)
    args = parser.parse_args(["s", "c", "-o", "o", "--mask-fraction", "0.25", "--chroms", "3"])
    assert options.from_args(CalibrateOptions, args) == CalibrateOptions(
        chroms=["3"], fraction=0.25
    )


def test_deprecated_alias_of_a_plain_and_a_parsed_value(caplog) -> None:  # noqa: ANN001
    @dataclass
    class Old:
        jobs: int = option(1, "workers", deprecated=("--threads",))
        spill: int = option(1 << 20, "MiB", parse=lambda t: int(t) << 20, deprecated=("--mb",))

    parser = argparse.ArgumentParser()
    options.add_options(parser, Old)
    with caplog.at_level(logging.WARNING):
        got = options.from_args(Old, parser.parse_args(["--threads", "3", "--mb", "2"]))
    assert got == Old(jobs=3, spill=2 << 20)
    assert "--threads is deprecated" in caplog.text and "use --jobs" in caplog.text
    assert "--mb" not in parser.format_help()
