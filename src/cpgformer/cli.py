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
import os
import pkgutil
import sys
import warnings
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
        module = importlib.import_module(f"cpgformer.commands.{info.name}")
        if hasattr(module, "NAME"):  # (helpers shared by commands define none)
            modules.append(module)
    return modules


class HelpFormatter(argparse.HelpFormatter):
    """Shows every option's default: appends ``(default: X)`` unless the help already names it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or "%(default)" in text
        ):
            return text
        if isinstance(default, (list, tuple)):
            shown = " ".join(str(d) for d in default)
        else:
            shown = str(default)
        if f"({shown})" in text or f"default: {shown}" in text or f"default {shown}" in text:
            return text
        return f"{text} (default: {shown.replace('%', '%%')})"


def _verbosity_parent() -> argparse.ArgumentParser:
    """-v/-q accepted after the subcommand too (``cpgformer CMD ... -q``)."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("logging")
    group.add_argument(
        "-v",
        "--verbose",
        dest="_sub_verbose",
        action="count",
        default=None,
        help="more logging (-vv debug; Lightning's own messages); tracebacks on errors",
    )
    group.add_argument(
        "-q",
        "--quiet",
        dest="_sub_quiet",
        action="store_true",
        help="print nothing but errors (no progress, no warnings, no summary lines)",
    )
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cpgformer",
        description="Impute and denoise single-cell DNA methylation with CpG Transformer. "
        "-v/-q may be given before or after the command.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cpgformer {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=None,
        help="more logging (-vv debug; Lightning's own messages); tracebacks on errors",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print nothing but errors (no progress, no warnings, no summary lines)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parent = _verbosity_parent()
    for module in _command_modules():
        p = sub.add_parser(
            module.NAME,
            help=module.HELP,
            description=module.HELP,
            parents=[parent],
            formatter_class=HelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


_TIMESTAMP_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_PLAIN_FORMAT = "%(levelname)s %(name)s: %(message)s"
_THIRD_PARTY = ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning")


class _DropAdverts(logging.Filter):
    """Drops third-party adverts ("Tip: ... litlogger", "Lightning ... platform")."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return "litlogger" not in text.lower() and "💡" not in text


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record (not the one at setup)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):  # type: ignore[override]  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def _log_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning`` replacement: one log record on ``py.warnings``, one line (the
    warning's source line, which ``formatwarning`` would add, is left out)."""
    text = warnings.formatwarning(message, category, filename, lineno, "").rstrip()
    logging.getLogger("py.warnings").warning("%s", text)


def setup_logging(verbose: int, quiet: bool) -> None:
    """Log lines on stderr, timestamped when stderr is not a terminal (a batch job's log).

    cpgformer's loggers, Lightning's and Python warnings share one handler. ``quiet``: errors only,
    no progress and no warnings. Lightning's banners (GPU/TPU availability, ``Trainer.fit
    stopped``) are shown only with ``-vv``; its adverts never. Other libraries' warnings reach the
    same handler through the root logger.
    """
    if quiet:
        level = logging.ERROR
    elif verbose >= 2:
        level = logging.DEBUG
    else:
        level = logging.INFO
    batch = not sys.stderr.isatty()
    formatter = logging.Formatter(
        _TIMESTAMP_FORMAT if batch else _PLAIN_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"
    )
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    handler.addFilter(_DropAdverts())
    ours = logging.getLogger("cpgformer")
    ours.handlers[:] = [handler]
    ours.setLevel(level)
    ours.propagate = False
    # Python warnings (Lightning's, PyTorch's) as log lines
    warnings.showwarning = _log_warning
    py_warnings = logging.getLogger("py.warnings")
    py_warnings.handlers[:] = [handler]
    py_warnings.setLevel(logging.ERROR if quiet else logging.WARNING)
    py_warnings.propagate = False
    # Lightning logs through module loggers below "lightning.pytorch"/"lightning.fabric" and sets
    # the level of those two on import (and adds a plain handler when the root logger has none);
    # the rank-zero loggers keep the level set here
    third_level = logging.ERROR if quiet else (logging.INFO if verbose >= 2 else logging.WARNING)
    for name in _THIRD_PARTY:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
        for suffix in (".utilities.rank_zero", ".accelerators.cuda"):
            logging.getLogger(name + suffix).setLevel(third_level)
    # everything else that warns (and makes Lightning, if imported later, keep our handler)
    root = logging.getLogger()
    other = _StderrHandler()
    other.setFormatter(formatter)
    other.addFilter(_DropAdverts())
    other.setLevel(logging.ERROR if quiet else logging.WARNING)
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, _StderrHandler)] + [other]
    from cpgformer.utils import progress

    progress.set_enabled(False if quiet else None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    args.verbose = int(args.verbose or 0) + int(getattr(args, "_sub_verbose", 0) or 0)
    args.quiet = bool(args.quiet or getattr(args, "_sub_quiet", False))
    if args.quiet and args.verbose:
        parser.error("-q and -v exclude each other")
    setup_logging(args.verbose, args.quiet)
    out = sys.stdout
    try:
        with warnings.catch_warnings():
            if args.quiet:
                warnings.simplefilter("ignore")
                if not _prints_data(args):
                    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - no summary lines
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
    finally:
        if sys.stdout is not out:
            sys.stdout.close()
            sys.stdout = out
    return int(code or 0)


def _prints_data(args: argparse.Namespace) -> bool:
    """Commands whose stdout is the result asked for (kept with ``-q``): ``info``, ``--json``."""
    return args.command == "info" or bool(getattr(args, "json", False))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
