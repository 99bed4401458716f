"""Reference FASTA access: contig names and aliases, nucleotide codes, DNA windows, CpG checks.

Coordinates are 0-based throughout. A FASTA may be plain or gzip-compressed:

* plain: pyfaidx reads it through a ``.fai`` index, built beside the FASTA when that folder is
  writable and otherwise in the cache directory (``<cache>/fasta/<key>/<name>.fai``, key = hash of
  the absolute path, size and modification time);
* gzip (BGZF included): decompressed once into ``<cache>/fasta/<sha256 of the .gz>/<name>`` and
  indexed there; later runs reuse it.

The cache directory is ``$CPGFORMER_CACHE_DIR``, else ``$XDG_CACHE_HOME/cpgformer``, else
``~/.cache/cpgformer``.
"""

from __future__ import annotations

import contextlib
import enum
import gzip
import hashlib
import logging
import os
import re
import shutil
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyfaidx

from cpgformer.codes import CODE_A, CODE_C, CODE_G, CODE_N, CODE_T, encode_sequence
from cpgformer.errors import InputError, UsageError
from cpgformer.integrity import sha256_file
from cpgformer.utils.atomic import atomic_file

log = logging.getLogger(__name__)

_BATCH_SPAN = (
    4_000_000  # at most this many bp of sequence fetched at once (windows, classify_sites)
)
_CLUSTER_GAP = 4_096  # positions further apart than this are fetched separately


class SiteClass(enum.IntEnum):
    """What the reference shows at a call's C (see :meth:`Reference.classify_sites`)."""

    NOT_CPG = 0
    PLUS = 1  # ref[x..x+1] == "CG": the + strand C of a CpG
    MINUS = 2  # ref[x-1..x] == "CG": the - strand C of a CpG (the G of the forward CpG)
    OUT_OF_RANGE = 3  # x < 0 or x >= contig length
    N_BASE = 4  # N or another non-ACGT letter where the C or G should be
    UNKNOWN_CONTIG = 5  # contig not in the FASTA (not even by alias)


def cache_dir() -> Path:
    """The directory for FASTA indexes and decompressed copies."""
    env = os.environ.get("CPGFORMER_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "cpgformer"


def _writable(folder: Path) -> bool:
    """Writable for us *and* not marked read-only (root passes os.access on r-x folders)."""
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    return bool(mode & 0o222) and os.access(folder, os.W_OK | os.X_OK)


def stale_index_problem(fasta: Path, index: Path, max_checks: int = 2000) -> str | None:
    """Why the ``.fai`` ``index`` does not describe ``fasta`` (None when it does).

    For each indexed contig (the first ``max_checks``, and the last) the header line must end just
    before the recorded offset, the first sequence line must have the recorded width, and the
    sequence must fit in the file. A FASTA rewrapped or edited after indexing fails these checks.
    """
    try:
        rows = [line.split("\t") for line in index.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        return f"unreadable FASTA index ({exc})"
    try:
        size = fasta.stat().st_size
        entries = [(r[0], int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows]
    except (OSError, IndexError, ValueError):
        return f"not a FASTA index (.fai) of {fasta.name}; remove it to have it rebuilt"
    picks = entries[:max_checks] + entries[-1:]
    fix = f"stale FASTA index for {fasta.name} (the FASTA changed after indexing): remove it so "
    fix += "that it is rebuilt"
    with open(fasta, "rb") as fh:
        for name, length, offset, line_bases, line_width in picks:
            if length < 0 or offset < 1 or line_bases < 1 or line_width < line_bases:
                return fix
            n_lines = -(-length // line_bases)
            end = offset + length + (n_lines - 1) * (line_width - line_bases)
            if end > size:
                return fix
            fh.seek(max(0, offset - len(name) - 1024))
            before = fh.read(offset - fh.tell())
            header = before.rstrip(b"\r\n").rsplit(b"\n", 1)[-1]
            if not before.endswith(b"\n") or not header.startswith(b">" + name.encode()):
                return fix
            if length > line_bases:  # a full first line ends where the index says
                fh.seek(offset + line_bases)
                eol = fh.read(line_width - line_bases)
                if eol not in (b"\n", b"\r\n"):
                    return fix
    return None


def _alias_candidates(name: str) -> list[str]:
    out: list[str] = []
    low = name.lower()
    if low in ("mt", "m", "chrm", "chrmt"):
        out += ["MT", "chrM", "M", "chrMT"]
    if name.startswith("chr"):
        out.append(name[3:])
    else:
        out.append("chr" + name)
    return [c for c in out if c != name]


class Reference:
    """A reference genome FASTA (plain or gzip), read through pyfaidx.

    ``Reference(path, cache=None)``; ``cache`` overrides :func:`cache_dir`.
    """

    def __init__(self, path: str | os.PathLike[str], cache: str | os.PathLike[str] | None = None):
        self.path = Path(path)
        if self.path.is_dir():
            raise InputError(self.path, None, "is a directory, expected a FASTA file")
        if not self.path.exists():
            raise InputError(self.path, None, "no such FASTA file")
        self._cache = Path(cache) if cache is not None else cache_dir()
        self.fasta_path, index_path = self._prepare_files()
        self.index_path = Path(index_path)
        if self.index_path.exists():
            problem = stale_index_problem(self.fasta_path, self.index_path)
            if problem is not None:
                raise InputError(self.index_path, None, problem)
        self._fa = self._open_index()
        self._pid = os.getpid()
        self._contigs = {name: len(self._fa[name]) for name in self._fa.keys()}
        if not self._contigs:
            raise InputError(self.path, None, "FASTA has no sequences")
        self._alias_cache: dict[str, str | None] = {}
        self._alias_logged: set[str] = set()

    def _open_index(self) -> pyfaidx.Fasta:
        try:
            return pyfaidx.Fasta(
                str(self.fasta_path),
                indexname=str(self.index_path),
                as_raw=True,
                sequence_always_upper=False,
                read_long_names=False,
                duplicate_action="stop",
            )
        except (pyfaidx.FastaIndexingError, ValueError) as exc:
            raise InputError(self.path, None, f"cannot index FASTA: {exc}") from None
        except (RuntimeError, UnicodeDecodeError) as exc:  # pyfaidx on blank or binary lines
            entry = re.search(r"at entry (.*?)Please report", str(exc))
            where = f" in contig {entry.group(1)!r}" if entry else ""
            raise InputError(
                self.path,
                None,
                f"cannot index FASTA: blank, binary or irregular sequence lines{where}",
            ) from None

    def _handle(self) -> pyfaidx.Fasta:
        """The pyfaidx handle of this process (a forked worker must not share the parent's file
        offset, so it reopens the file)."""
        if self._pid != os.getpid():
            self._fa = self._open_index()
            self._pid = os.getpid()
        return self._fa

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fa"] = None
        state["_pid"] = -1  # reopened on first use in the receiving process
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    # ---------------------------------------------------------------- files and identity
    def _prepare_files(self) -> tuple[Path, Path]:
        with open(self.path, "rb") as handle:
            magic = handle.read(2)
        if magic == b"\x1f\x8b":
            digest = sha256_file(self.path)
            folder = self._cache / "fasta" / digest[:24]
            name = self.path.name[:-3] if self.path.name.endswith(".gz") else self.path.name
            plain = folder / (name or "reference.fa")
            if not plain.exists():
                log.info("%s: decompressing gzip FASTA into %s (once)", self.path, plain)
                folder.mkdir(parents=True, exist_ok=True)
                try:
                    with gzip.open(self.path, "rb") as src, atomic_file(plain) as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
                    raise InputError(
                        self.path, None, f"truncated or corrupt gzip file ({exc})"
                    ) from None
            return plain, Path(str(plain) + ".fai")
        beside = Path(str(self.path) + ".fai")
        if beside.exists() or _writable(self.path.parent):
            return self.path, beside
        stat = self.path.stat()
        key = hashlib.sha256(
            f"{self.path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()
        ).hexdigest()[:24]
        folder = self._cache / "fasta" / key
        folder.mkdir(parents=True, exist_ok=True)
        log.info("%s: folder is read-only, FASTA index goes to %s", self.path, folder)
        return self.path, folder / (self.path.name + ".fai")

    def identity(self) -> dict:
        """Path, contig names and lengths, and the SHA-256 of the ``.fai`` (what a store records)."""
        return {
            "path": str(self.path),
            "contigs": [{"name": n, "length": int(length)} for n, length in self._contigs.items()],
            "fai_sha256": sha256_file(self.index_path),
        }

    def close(self) -> None:
        if self._fa is not None:
            with contextlib.suppress(Exception):
                self._fa.close()

    def __enter__(self) -> Reference:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- contigs
    @property
    def contigs(self) -> dict[str, int]:
        """Contig name (first word of the header) -> length, in FASTA order."""
        return dict(self._contigs)

    def resolve(self, name: str) -> str | None:
        """The FASTA contig for ``name``: exact match, else the one alias (``chr`` added/stripped,
        ``MT``/``chrM``/``M``) present in the FASTA; None if there is none or it is ambiguous."""
        if name in self._contigs:
            return name
        if name in self._alias_cache:
            return self._alias_cache[name]
        hits = [c for c in _alias_candidates(name) if c in self._contigs]
        found = hits[0] if len(set(hits)) == 1 else None
        self._alias_cache[name] = found
        return found

    def resolve_all(self, names: Iterable[str]) -> tuple[dict[str, str], list[str]]:
        """Map file contig names to FASTA names: (mapping, names absent from the FASTA).

        Raises :class:`UsageError` if two file names would map to the same FASTA contig (the alias
        map must be one-to-one). Aliases used are logged.
        """
        mapping: dict[str, str] = {}
        missing: list[str] = []
        back: dict[str, str] = {}
        for name in names:
            target = self.resolve(name)
            if target is None:
                missing.append(name)
                continue
            if target in back and back[target] != name:
                raise UsageError(
                    f"contigs {back[target]!r} and {name!r} both match FASTA contig {target!r} "
                    f"in {self.path}"
                )
            back[target] = name
            mapping[name] = target
            if target != name and name not in self._alias_logged:
                self._alias_logged.add(name)  # once per run, not once per input file
                log.info("contig %r matched to FASTA contig %r", name, target)
        return mapping, missing

    def _require(self, chrom: str) -> tuple[str, int]:
        target = self.resolve(chrom)
        if target is None:
            raise InputError(self.path, None, f"contig {chrom!r} is not in the FASTA")
        return target, self._contigs[target]

    # ---------------------------------------------------------------- sequence
    def fetch_codes(self, chrom: str, start: int, end: int) -> np.ndarray:
        """int8 nucleotide codes of ``[start, end)`` (0-based), N outside the contig."""
        target, length = self._require(chrom)
        start, end = int(start), int(end)
        if end <= start:
            return np.zeros(0, dtype=np.int8)
        out = np.full(end - start, CODE_N, dtype=np.int8)
        lo, hi = max(start, 0), min(end, length)
        if hi > lo:
            try:
                seq = self._handle()[target][lo:hi]
            except UnicodeDecodeError:
                seq = ""
            codes = encode_sequence(seq)
            if len(codes) != hi - lo:  # bytes that are not single ASCII letters
                raise InputError(
                    self.path,
                    None,
                    f"contig {target!r}: sequence is not plain ASCII letters near {lo}-{hi} "
                    "(binary or multi-byte characters)",
                )
            out[lo - start : hi - start] = codes
        return out

    def _codes_around(
        self, chrom: str, positions: np.ndarray, lo_off: int, hi_off: int
    ) -> np.ndarray:
        """codes[i, k] = base at positions[i] + lo_off + k, k < hi_off - lo_off (N-padded)."""
        positions = np.asarray(positions, dtype=np.int64)
        width = hi_off - lo_off
        out = np.full((len(positions), width), CODE_N, dtype=np.int8)
        if len(positions) == 0:
            return out
        order = np.argsort(positions, kind="stable")
        sorted_pos = positions[order]
        offsets = np.arange(lo_off, hi_off, dtype=np.int64)
        # one fetch per cluster: a new cluster starts at a gap wider than _CLUSTER_GAP (so sparse
        # positions never pull in the sequence between them) or after _BATCH_SPAN bp
        breaks = np.ones(len(sorted_pos), dtype=bool)
        breaks[1:] = np.diff(sorted_pos) > _CLUSTER_GAP + width
        cluster = np.cumsum(breaks) - 1
        first_of = sorted_pos[np.flatnonzero(breaks)]
        sub = (sorted_pos - first_of[cluster]) // _BATCH_SPAN
        new = np.ones(len(sorted_pos), dtype=bool)
        new[1:] = (cluster[1:] != cluster[:-1]) | (sub[1:] != sub[:-1])
        bounds = np.append(np.flatnonzero(new), len(sorted_pos))
        for i, j in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            region_start = int(sorted_pos[i]) + lo_off
            region_end = int(sorted_pos[j - 1]) + hi_off
            codes = self.fetch_codes(chrom, region_start, region_end)
            idx = sorted_pos[i:j, None] + offsets[None, :] - region_start
            out[order[i:j]] = codes[idx]
        return out

    def windows(self, chrom: str, positions: np.ndarray, width: int) -> np.ndarray:
        """DNA windows [N, width] int8 with ``positions[i]`` at index ``width // 2``.

        The window of p covers [p - width//2, p - width//2 + width) (for odd width:
        [p - width//2, p + width//2]); positions beyond either contig end are N (never wrapped).
        """
        if width < 1:
            raise UsageError(f"window width must be >= 1, got {width}")
        half = width // 2
        return self._codes_around(chrom, positions, -half, width - half)

    def classify_sites(
        self, chrom: str, pos0: np.ndarray, strand: np.ndarray | int = 0
    ) -> np.ndarray:
        """Per row, a :class:`SiteClass` code (int8) for a call at 0-based ``pos0``.

        ``strand`` +1: the row claims a + strand C (ref[x..x+1] must be CG -> PLUS); -1: a - strand
        C (ref[x-1..x] must be CG -> MINUS); 0: unknown, either is accepted (unambiguous, also in
        CGCG runs). Otherwise N_BASE when the C or its partner base is N/IUPAC, else NOT_CPG.
        Case-insensitive (soft-masked lower case is fine).
        """
        pos = np.asarray(pos0, dtype=np.int64)
        strand_arr = np.broadcast_to(np.asarray(strand, dtype=np.int8), pos.shape)
        out = np.full(pos.shape, SiteClass.NOT_CPG, dtype=np.int8)
        if pos.size == 0:
            return out
        target = self.resolve(chrom)
        if target is None:
            out[:] = SiteClass.UNKNOWN_CONTIG
            return out
        length = self._contigs[target]
        ctx = self._codes_around(target, pos, -1, 2)  # bases at x-1, x, x+1
        prev, here, nxt = ctx[:, 0], ctx[:, 1], ctx[:, 2]
        plus = (here == CODE_C) & (nxt == CODE_G)
        minus = (prev == CODE_C) & (here == CODE_G)

        def is_acgt(c: np.ndarray) -> np.ndarray:
            return (c == CODE_A) | (c == CODE_C) | (c == CODE_G) | (c == CODE_T)

        # N/IUPAC where the C is, or where the partner of a real C/G is
        n_plus = ~is_acgt(here) | ((here == CODE_C) & ~is_acgt(nxt))
        n_minus = ~is_acgt(here) | ((here == CODE_G) & ~is_acgt(prev))
        fwd = strand_arr == 1
        rev = strand_arr == -1
        unk = ~(fwd | rev)
        out[fwd & plus] = SiteClass.PLUS
        out[fwd & ~plus & n_plus] = SiteClass.N_BASE
        out[rev & minus] = SiteClass.MINUS
        out[rev & ~minus & n_minus] = SiteClass.N_BASE
        out[unk & plus] = SiteClass.PLUS
        out[unk & minus] = SiteClass.MINUS
        out[unk & ~plus & ~minus & (n_plus | n_minus)] = SiteClass.N_BASE
        out[(pos < 0) | (pos >= length)] = SiteClass.OUT_OF_RANGE
        return out
