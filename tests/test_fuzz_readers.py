"""Property-based tests of every reader (docs/reliability.md, "Fuzzing").

Any content either reads correctly or raises the one-line error of its kind (``InputError`` naming
the file for file content, ``UsageError`` for a column spec); never another exception. Valid content
reads back exactly what was written.
"""

from __future__ import annotations

import atexit
import gzip
import os
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from cpgformer.errors import InputError, UsageError
from cpgformer.io.formats import _SPEC_KEYS
from cpgformer.io.readers import FORMATS, ReadStats, detect_format, parse_column_spec, read_calls

# Hypothesis caches data (constants of the code under test) as soon as tests are collected: in a
# temporary folder removed at exit, not in the working directory
_HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="cpgformer-hypothesis-")
atexit.register(shutil.rmtree, _HYPOTHESIS_HOME, ignore_errors=True)
set_hypothesis_home_dir(_HYPOTHESIS_HOME)

# more examples for a longer search: CPGFORMER_FUZZ_EXAMPLES=2000 pytest tests/test_fuzz_readers.py
FUZZ = settings(
    max_examples=int(os.environ.get("CPGFORMER_FUZZ_EXAMPLES", "40")),
    deadline=None,
    database=None,  # no .hypothesis folder: tests write only into their temporary folders
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

_INTS = st.one_of(
    st.integers(-5, 300),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, 2**31, 2**63, 2**64 + 1]),
)
_FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "-0.0", "50.0", "100", "0.5", "1,5"]),
)
_WORDS = st.sampled_from(
    ["chr1", "chr2", "1", "X", "chrM", "lambda", "", "#", "track", "+", "-", ".", "CG", "CHG",
     "CGA", "CHH", "F", "R", "NA", "chrBase", "pos"]
)  # fmt: skip
_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\n\r"), max_size=8)
_FIELD = st.one_of(_INTS.map(str), _FLOATS, _WORDS, _TEXT)
_LINE = st.tuples(
    st.lists(_FIELD, min_size=0, max_size=9), st.sampled_from(["\t", " ", ",", "  ", ";"])
).map(lambda t: t[1].join(t[0]))


@st.composite
def file_bytes(draw: st.DrawFn) -> bytes:
    """Text that looks somewhat like a call file: plausible fields, odd separators, CRLF, BOM,
    header and track lines, blank lines, binary junk, gzip."""
    lines = draw(st.lists(_LINE, min_size=0, max_size=12))
    if draw(st.booleans()):
        lines.insert(0, draw(st.sampled_from(["track type=bedGraph", "#header", "chrBase\tchr"])))
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    text = eol.join(lines) + (eol if draw(st.booleans()) else "")
    data = text.encode("utf-8")
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data
    if draw(st.integers(0, 9)) == 0:
        data += draw(st.binary(max_size=20))
    if draw(st.integers(0, 4)) == 0:
        data = gzip.compress(data)
        if draw(st.booleans()):
            data = data[: max(2, len(data) // 2)]  # truncated gzip
    return data


def _one_line(exc: Exception, path: Path | None = None) -> None:
    text = str(exc)
    assert text and "\n" not in text, repr(text)
    if path is not None:
        assert text.startswith(str(path)), text


def _lines(data: bytes) -> int:
    """Lines of a file as a reader sees them: a gzip file's once decompressed (as far as a
    truncated stream goes)."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = zlib.decompressobj(wbits=31).decompress(data)
        except zlib.error:
            pass
    return data.count(b"\n") + 1


def _check_chunks(chunks: list, n_lines: int) -> None:
    for c in chunks:
        assert c.pos.dtype == np.int64 and np.all(c.pos >= 0)
        assert np.all(c.cov >= 0) and np.all(c.mc >= 0) and np.all(c.mc <= c.cov)
        assert set(np.unique(c.strand).tolist()) <= {-1, 0, 1}
        assert np.all(c.line >= 1) and np.all(c.line <= n_lines + 1)
        if c.frac is not None:
            assert np.all((c.frac >= 0) & (c.frac <= 1))


READ_FORMATS = sorted(f for f in FORMATS if f != "tsv")


@pytest.mark.parametrize("fmt", [None, *READ_FORMATS])
@FUZZ
@given(data=file_bytes())
@example(data=gzip.compress(b"0\t0\t+\t0\t0\t0\t0\n0"))  # ragged rows: a 7-column sniff
def test_any_file_reads_or_raises_one_line(tmp_path, fmt, data):
    path = tmp_path / ("cell.cov.gz" if data[:2] == b"\x1f\x8b" else "cell.txt")
    path.write_bytes(data)
    try:
        chunks = list(read_calls(path, fmt=fmt, stats=ReadStats()))
    except InputError as exc:
        _one_line(exc, path)
        return
    _check_chunks(chunks, _lines(data))


@FUZZ
@given(data=file_bytes())
def test_format_detection_decides_or_raises_one_line(tmp_path, data):
    path = tmp_path / "cell.txt"
    path.write_bytes(data)
    try:
        fmt = detect_format(path)
    except InputError as exc:
        _one_line(exc, path)
        return
    assert fmt in FORMATS


_CALL = st.tuples(
    st.sampled_from(["chr1", "chr2", "19", "scaffold_7"]),
    st.integers(1, 10**9),
    st.integers(0, 50),
    st.integers(0, 50),
).filter(lambda r: r[2] + r[3] > 0)


@FUZZ
@given(
    rows=st.lists(_CALL, min_size=1, max_size=30, unique_by=lambda r: (r[0], r[1])),
    crlf=st.booleans(),
    gz=st.booleans(),
)
def test_valid_bismark_cov_reads_back_exactly(tmp_path, rows, crlf, gz):
    eol = "\r\n" if crlf else "\n"
    text = "".join(
        f"{c}\t{p}\t{p}\t{100 * m / (m + u):.4f}\t{m}\t{u}{eol}" for c, p, m, u in rows
    ).encode()
    path = tmp_path / ("c.cov.gz" if gz else "c.cov")
    path.write_bytes(gzip.compress(text) if gz else text)
    got = {}
    for chunk in read_calls(path, fmt="bismark-cov"):
        for pos, mc, cov, line in zip(chunk.pos, chunk.mc, chunk.cov, chunk.line):
            got[(chunk.chrom, int(pos))] = (int(mc), int(cov), int(line))
    want = {(c, p - 1): (m, m + u, i + 1) for i, (c, p, m, u) in enumerate(rows)}
    assert got == want


@FUZZ
@given(
    rows=st.lists(_CALL, min_size=1, max_size=30, unique_by=lambda r: (r[0], r[1])),
    strand=st.sampled_from(["+", "-"]),
)
def test_valid_allc_reads_back_exactly(tmp_path, rows, strand):
    text = "".join(f"{c}\t{p}\t{strand}\tCGA\t{m}\t{m + u}\t1\n" for c, p, m, u in rows)
    path = tmp_path / "c.allc.tsv"
    path.write_text(text)
    got = {}
    for chunk in read_calls(path, fmt="allc"):
        assert np.all(chunk.strand == (1 if strand == "+" else -1))
        for pos, mc, cov in zip(chunk.pos, chunk.mc, chunk.cov):
            got[(chunk.chrom, int(pos))] = (int(mc), int(cov))
    assert got == {(c, p - 1): (m, m + u) for c, p, m, u in rows}


# ------------------------------------------------------------------------------ column spec


_SPEC_PART = st.one_of(
    st.integers(-2, 12).map(str),
    st.sampled_from(["5c", "5u", "3C", "x", "", "-", "\\t", "tab", ",", ";", "0", "1", "yes"]),
    st.tuples(
        st.sampled_from(
            [*sorted(_SPEC_KEYS), "bogus", "POS", " pos"]
        ),  # the keys and a few wrong ones
        st.one_of(st.integers(-1, 9).map(str), st.sampled_from(["", "a", "\\t", "1", "0", "2"])),
    ).map(lambda kv: f"{kv[0]}={kv[1]}"),
    _TEXT,
)


@settings(max_examples=300, deadline=None, database=None)
@given(parts=st.lists(_SPEC_PART, min_size=0, max_size=9))
def test_any_column_spec_parses_or_raises_one_line(parts):
    text = ":".join(parts)
    try:
        spec = parse_column_spec(text)
    except UsageError as exc:
        _one_line(exc)
        return
    assert spec.chrom >= 1 and spec.pos >= 1


@settings(max_examples=100, deadline=None, database=None)
@given(
    chrom=st.integers(1, 9),
    pos=st.integers(1, 9),
    meth=st.integers(1, 9),
    count=st.integers(1, 9),
    kind=st.sampled_from(["c", "u"]),
    sep=st.sampled_from(["\\t", ","]),
    header=st.sampled_from(["0", "1"]),
)
def test_valid_positional_column_spec(chrom, pos, meth, count, kind, sep, header):
    assume(len({chrom, pos, meth, count}) == 4)
    spec = parse_column_spec(f"{chrom}:{pos}:{meth}:{count}{kind}:{sep}:{header}")
    assert (spec.chrom, spec.pos, spec.meth) == (chrom, pos, meth)
    assert (spec.cov if kind == "c" else spec.unmeth) == count
    assert spec.sep == ("\t" if sep == "\\t" else ",")
    assert spec.header == (header == "1")


@FUZZ
@given(data=file_bytes())
def test_custom_spec_reader_on_any_file(tmp_path, data):
    path = tmp_path / "c.csv"
    path.write_bytes(data)
    spec = parse_column_spec("1:2:4:5c:,:1:strand=3")
    try:
        chunks = list(read_calls(path, spec=spec))
    except InputError as exc:
        _one_line(exc, path)
        return
    _check_chunks(chunks, _lines(data))


# ------------------------------------------------------------------------------ other readers


@FUZZ
@given(data=file_bytes())
def test_bed_regions_read_or_raise_one_line(tmp_path, data):
    from cpgformer.io.writers import read_bed_regions

    path = tmp_path / "r.bed"
    path.write_bytes(data)
    try:
        table = read_bed_regions(path)
    except InputError as exc:
        _one_line(exc, path)
        return
    assert list(table.columns[:3]) == ["chrom", "start", "end"]
    assert np.all(table["start"].to_numpy() >= 0)
    assert np.all(table["end"].to_numpy() >= table["start"].to_numpy())


@FUZZ
@given(data=file_bytes())
def test_explain_sites_read_or_raise_one_line(tmp_path, data):
    from cpgformer.explain import read_sites

    path = tmp_path / "sites.tsv"
    path.write_bytes(data)
    try:
        sites = read_sites(path)
    except InputError as exc:
        _one_line(exc, path)
        return
    assert all(s.position >= 0 for s in sites)


@FUZZ
@given(data=file_bytes())
def test_cell_names_file_reads_or_raises_one_line(tmp_path, data):
    from cpgformer.io.npz import read_names_file

    path = tmp_path / "names.txt"
    path.write_bytes(data)
    try:
        names = read_names_file(path)
    except InputError as exc:
        _one_line(exc, path)
        return
    assert all(n and n == n.strip() for n in names)


_FASTA_LINE = st.one_of(
    st.text(alphabet="ACGTNacgtn", min_size=0, max_size=30),
    st.sampled_from([">chr1", ">chr2 desc", ">", ">chr1", "", ";comment", "ACGT ACGT"]),
    _TEXT,
)


@FUZZ
@given(lines=st.lists(_FASTA_LINE, min_size=0, max_size=10), gz=st.booleans())
def test_fasta_reads_or_raises_one_line(tmp_path, lines, gz):
    from cpgformer.io.fasta import Reference

    folder = tmp_path / f"fa{abs(hash(tuple(lines))) % 10**9}{int(gz)}"
    folder.mkdir(exist_ok=True)
    text = ("\n".join(lines) + "\n").encode()
    path = folder / ("g.fa.gz" if gz else "g.fa")
    path.write_bytes(gzip.compress(text) if gz else text)
    try:
        ref = Reference(path, cache=folder / "cache")
        for name, length in ref.contigs.items():
            assert length >= 0
            if length:
                assert ref.fetch_codes(name, 0, length).shape == (length,)
    except InputError as exc:
        _one_line(exc)


@settings(max_examples=25, deadline=None, database=None)
@given(
    n_cells=st.integers(0, 4),
    n_sites=st.integers(0, 6),
    y_kind=st.sampled_from(["i1", "f4", "f8", "U3", "i8"]),
    pos_kind=st.sampled_from(["i8", "i4", "f8", "u8", "U3"]),
    fill=st.sampled_from([-1, 0, 1, 2, 0.5, np.nan]),
    unsorted=st.booleans(),
)
def test_npz_triple_imports_or_raises_one_line(
    tmp_path_factory, n_cells, n_sites, y_kind, pos_kind, fill, unsorted
):
    from cpgformer.io.npz import import_npz

    d = tmp_path_factory.mktemp("npz")
    with np.errstate(invalid="ignore"):  # NaN into an integer array: any value, on purpose
        y = np.full((n_sites, n_cells), fill if y_kind[0] != "U" else "a").astype(y_kind)
    pos = (np.arange(n_sites) * 10 + 5)[::-1] if unsorted else np.arange(n_sites) * 10 + 5
    np.savez(d / "y.npz", chr1=y)
    np.savez(d / "pos.npz", chr1=pos.astype(pos_kind))
    try:
        manifest = import_npz(d, d / "store")
    except (InputError, UsageError) as exc:
        _one_line(exc)
        return
    assert manifest["n_cells"] == n_cells
