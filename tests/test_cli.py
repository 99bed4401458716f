from __future__ import annotations

import subprocess
import sys

from cpgformer.cli import main
from cpgformer.errors import InputError


def test_input_error_names_file_and_line() -> None:
    err = InputError(
        "cells/c1.cov.gz", 1042, "expected 6 tab-separated columns for bismark-cov, got 4"
    )
    assert (
        str(err) == "cells/c1.cov.gz:1042: expected 6 tab-separated columns for bismark-cov, got 4"
    )
    assert str(InputError("x.tsv", None, "empty file")) == "x.tsv: empty file"


def test_no_command_prints_help_and_exits_2(capsys) -> None:
    assert main([]) == 2
    assert "usage" in capsys.readouterr().out


def test_console_script_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cpgformer.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.startswith("cpgformer ")
