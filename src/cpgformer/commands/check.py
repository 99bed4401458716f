"""``cpgformer check``: verify a dataset store, an imputed store or a checkpoint."""

from __future__ import annotations

import argparse
import json
import sys

from cpgformer.errors import InputError
from cpgformer.integrity import check_path

NAME = "check"
HELP = "verify a dataset store, imputed store or checkpoint: sizes, checksums, manifest vs content"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="STORE, IMPUTED store or CHECKPOINT file")
    parser.add_argument("--json", action="store_true", help="machine-readable report on stdout")


def run(args: argparse.Namespace) -> int:

    summary, problems = check_path(args.path)
    report = {"path": args.path, **summary, "ok": not problems, "problems": problems}
    if args.json:
        sys.stdout.write(json.dumps(report, indent=1) + "\n")
    else:
        details = ", ".join(f"{k} {v}" for k, v in summary.items() if k != "kind")
        if not problems:
            sys.stdout.write(f"{args.path}: ok ({summary['kind']}; {details})\n")
        for p in problems:
            sys.stdout.write(f"problem: {p}\n")
    if problems:
        more = f" (and {len(problems) - 1} more, listed above)" if len(problems) > 1 else ""
        raise InputError(None, None, problems[0] + more)
    return 0
