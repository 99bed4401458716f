"""Progress reporting for every long loop.

Three modes (:func:`mode`):

* ``"bar"``: a tqdm bar on a terminal;
* ``"log"``: when stderr is not a terminal (batch jobs, ``> log 2>&1``), a log line on the
  ``cpgformer.progress`` logger at most every ``CPGFORMER_PROGRESS_INTERVAL`` seconds (default 30)
  and one when the loop ends, each with done/total, rate and ETA; the CLI's log handler puts a
  timestamp in front of every line there;
* ``"off"``: ``-q`` or the environment variable ``CPGFORMER_NO_PROGRESS``.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
_enabled: bool | None = None
DEFAULT_INTERVAL_S = 30.0

log = logging.getLogger("cpgformer.progress")


def set_enabled(enabled: bool) -> None:
    """``False`` turns every kind of progress report off (``-q``); ``True`` forces bars."""
    global _enabled
    _enabled = enabled


def mode() -> str:
    """``"bar"``, ``"log"`` or ``"off"`` (see the module docstring)."""
    if os.environ.get("CPGFORMER_NO_PROGRESS"):
        return "off"
    if _enabled is False:
        return "off"
    if _enabled is True or sys.stderr.isatty():
        return "bar"
    return "log"


def enabled() -> bool:
    """True when progress bars are drawn (a terminal, no ``-q``)."""
    return mode() == "bar"


def interval_s() -> float:
    """Seconds between two progress log lines (``CPGFORMER_PROGRESS_INTERVAL``, default 30)."""
    try:
        value = float(os.environ.get("CPGFORMER_PROGRESS_INTERVAL", DEFAULT_INTERVAL_S))
    except ValueError:
        return DEFAULT_INTERVAL_S
    return max(0.0, value)


def format_duration(seconds: float) -> str:
    """``3725`` -> ``1:02:05``; ``?`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def format_rate(rate: float) -> str:
    if not math.isfinite(rate):
        return "?"
    if rate >= 100:
        return f"{rate:,.0f}"
    return f"{rate:.3g}"


def progress_line(
    desc: str, done: float, total: float | None, elapsed: float, unit: str = "it"
) -> str:
    """``desc: done/total unit (pct), rate unit/s, elapsed, ETA`` (the text of one log line)."""
    rate = done / elapsed if elapsed > 0 else math.nan
    text = f"{desc}: {done:,.0f}"
    if total:
        text += f"/{total:,.0f} {unit} ({100.0 * done / total:.0f}%)"
    else:
        text += f" {unit}"
    text += f", {format_rate(rate)} {unit}/s, elapsed {format_duration(elapsed)}"
    if total:
        left = (total - done) / rate if rate > 0 else math.nan
        text += f", ETA {format_duration(left if done < total else 0.0)}"
    return text


class LogProgress:
    """A tqdm look-alike that writes periodic log lines instead of drawing a bar.

    ``update(n)``, ``close()``, ``set_postfix_str(s)`` and use as a context manager are supported.
    A line is logged when ``interval`` seconds passed since the previous one and, when the loop
    ran long enough for at least one line (or ``interval`` is 0), once more at the end.
    """

    def __init__(
        self,
        total: float | None,
        desc: str = "",
        unit: str = "it",
        interval: float | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.total = total
        self.desc = desc or "progress"
        self.unit = unit
        self.n = 0.0
        self.interval = interval_s() if interval is None else interval
        self.log = logger or log
        self.postfix = ""
        self._start = time.monotonic()
        self._last = self._start
        self._lines = 0
        self._last_n = -1.0
        self._closed = False

    def _emit(self, now: float) -> None:
        text = progress_line(self.desc, self.n, self.total, now - self._start, self.unit)
        if self.postfix:
            text += f", {self.postfix}"
        self.log.info("%s", text)
        self._last = now
        self._last_n = self.n
        self._lines += 1

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._emit(now)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        now = time.monotonic()
        if (self._lines or self.interval == 0) and self.n != self._last_n:
            self._emit(now)

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _NoProgress:
    """Does nothing (``-q``)."""

    n = 0

    def update(self, n: float = 1) -> None:
        self.n += n

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def bar(total: int | None, desc: str = "", unit: str = "it") -> Any:
    """A manually updated progress report (``bar.update(n)``; use as a context manager)."""
    current = mode()
    if current == "bar":
        return tqdm(total=total, desc=desc, unit=unit, leave=False)
    if current == "log":
        return LogProgress(total, desc, unit)
    return _NoProgress()


def progress(
    iterable: Iterable[T], desc: str = "", total: int | None = None, unit: str = "it"
) -> Iterator[T]:
    """Iterate over ``iterable`` with a progress report (bar, log lines or nothing)."""
    current = mode()
    if current == "bar":
        return iter(tqdm(iterable, desc=desc, total=total, unit=unit, leave=False))
    if current == "off":
        return iter(iterable)
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    return _logged(iterable, LogProgress(total, desc, unit))


def _logged(iterable: Iterable[T], report: LogProgress) -> Iterator[T]:
    with report:
        for item in iterable:
            yield item
            report.update(1)
