"""Command-line entry point: ``cpgformer <command> ...``.

The CLI only parses arguments, sets up logging and delegates to one library function per command.
Each command lives in its own module in :mod:`cpgformer.commands`, which defines

* ``NAME: str`` and ``HELP: str``,
* ``add_arguments(parser: argparse.ArgumentParser) -> None``,
* ``run(args: argparse.Namespace) -> int | None``.

Modules are discovered automatically, so adding a command never touches this file.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence

from cpgformer import __version__
from cpgformer.errors import CpgformerError, describe_os_error

log = logging.getLogger("cpgformer")


def _command_modules() -> list:
    import cpgformer.commands as pkg

    modules = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        modules.append(importlib.import_module(f"cpgformer.commands.{info.name}"))
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cpgformer",
        description="Impute and denoise single-cell DNA methylation with CpG Transformer.",
    )
    parser.add_argument("--version", action="version", version=f"cpgformer {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv debug); tracebacks"
    )
    verbosity.add_argument(
        "-q", "--quiet", action="store_true", help="only warnings and errors, no progress bars"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose >= 2 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("cpgformer")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    if quiet:
        from cpgformer.utils import progress

        progress.set_enabled(False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    setup_logging(args.verbose, args.quiet)
    try:
        code = args._run(args)
    except CpgformerError as exc:
        if args.verbose:
            log.exception("failed")
        sys.stderr.write(f"cpgformer {args.command}: error: {exc}\n")
        return 2
    except OSError as exc:  # the environment: permissions, full disk, damaged files
        if args.verbose:
            log.exception("failed")
        sys.stderr.write(f"cpgformer {args.command}: error: {describe_os_error(exc)}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"cpgformer {args.command}: interrupted\n")
        return 130
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
