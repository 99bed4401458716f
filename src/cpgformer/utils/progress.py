"""Progress bars for every long loop (disabled by ``-q`` or when stderr is not a terminal)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
_enabled: bool | None = None


def set_enabled(enabled: bool) -> None:
    global _enabled
    _enabled = enabled


def enabled() -> bool:
    if os.environ.get("CPGFORMER_NO_PROGRESS"):
        return False
    if _enabled is not None:
        return _enabled
    return sys.stderr.isatty()


def progress(
    iterable: Iterable[T], desc: str = "", total: int | None = None, unit: str = "it"
) -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm bar when progress display is enabled."""
    return iter(
        tqdm(iterable, desc=desc, total=total, unit=unit, disable=not enabled(), leave=False)
    )


def bar(total: int | None, desc: str = "", unit: str = "it") -> tqdm:
    """A manually updated bar (``bar.update(n)``; use as a context manager)."""
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled(), leave=False)
