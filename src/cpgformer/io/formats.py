"""Column layouts of the supported call-file formats (the reader-format table), custom specs."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cpgformer.errors import UsageError

# --------------------------------------------------------------------------------------------------
# Column layouts
# --------------------------------------------------------------------------------------------------

MAX_COORDINATE = 1 << 40
"""Largest coordinate read (about 1.1e12 bp, beyond any chromosome); larger values are refused."""


@dataclass(frozen=True)
class ColumnSpec:
    """Where the fields of a tabular call file are. Column numbers are **1-based** (as typed by users).

    Exactly one value source must be set: ``meth`` together with ``unmeth`` or ``cov`` (counts),
    ``frac`` (methylated fraction in [0, 1], ``frac_scale=100`` for percent), or ``state`` (0/1 call).
    ``base`` is the coordinate base of ``pos`` (and ``end``). ``strand`` (values ``+``/``-``, ``F``/``R``,
    ``1``/``-1``; ``.`` = unknown) makes the rows stranded; ``pooled=True`` declares that ``pos`` already
    is the + strand C of a CpG (DeepCpG-style); otherwise rows are unstranded per-C calls.
    ``context`` keeps only rows whose context starts with ``CG``. ``end`` with ``interval`` describes an
    end column (used by the built-in bedGraph-like formats).
    """

    chrom: int = 1
    pos: int = 2
    meth: int | None = None
    unmeth: int | None = None
    cov: int | None = None
    frac: int | None = None
    frac_scale: float = 1.0
    state: int | None = None
    strand: int | None = None
    context: int | None = None
    end: int | None = None
    interval: str | None = None
    base: int = 1
    sep: str = "\t"
    header: bool = False
    pooled: bool = False
    n_columns: tuple[int, ...] | None = None
    skip_zero_coverage: bool = False
    fused: bool = False  # column 1 of the file is ``chrom_pos`` (scAge); numbers count it as two

    def __post_init__(self) -> None:
        counts = self.meth is not None
        if counts and (self.unmeth is None) == (self.cov is None):
            raise UsageError(
                "column spec: a methylated-count column needs exactly one of unmeth/cov"
            )
        if not counts and self.unmeth is not None:
            raise UsageError("column spec: unmethylated column given without methylated column")
        if not counts and self.cov is not None and self.frac is None:
            raise UsageError(
                "column spec: a total-coverage column needs a methylated-count or fraction column"
            )
        n_sources = int(counts) + int(self.frac is not None) + int(self.state is not None)
        if n_sources != 1:
            raise UsageError(
                "column spec: give exactly one of meth+unmeth, meth+cov, frac or state columns"
            )
        if self.base not in (0, 1):
            raise UsageError(f"column spec: base must be 0 or 1, got {self.base}")
        for name in ("chrom", "pos", "meth", "unmeth", "cov", "frac", "state", "strand", "context"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"column spec: column numbers are 1-based, got {name}={value}")
        if self.pooled and self.strand is not None:
            raise UsageError("column spec: pooled=1 and a strand column exclude each other")
        used: dict[int, str] = {}
        for name in (
            "chrom",
            "pos",
            "end",
            "meth",
            "unmeth",
            "cov",
            "frac",
            "state",
            "strand",
            "context",
        ):
            value = getattr(self, name)
            if value is None:
                continue
            if value in used:
                raise UsageError(
                    f"column spec: column {value} is used for both {used[value]} and {name}"
                )
            used[value] = name

    @property
    def max_column(self) -> int:
        cols = [
            c
            for c in (
                self.chrom,
                self.pos,
                self.meth,
                self.unmeth,
                self.cov,
                self.frac,
                self.state,
                self.strand,
                self.context,
                self.end,
            )
            if c is not None
        ]
        return max(cols)

    @property
    def counts_available(self) -> bool:
        """True when reads are counted (mc/cov are depths), False for fraction/state-only inputs."""
        return self.meth is not None or (self.frac is not None and self.cov is not None)


@dataclass(frozen=True)
class FormatInfo:
    """A built-in input format: its column layout and a one-line description for docs and logs."""

    name: str
    spec: ColumnSpec | None
    description: str


def _fmt(name: str, description: str, **kw: object) -> FormatInfo:
    return FormatInfo(name, ColumnSpec(**kw) if kw else None, description)  # type: ignore[arg-type]


FORMATS: dict[str, FormatInfo] = {
    f.name: f
    for f in (
        _fmt(
            "bismark-cov",
            "Bismark coverage: chrom, start, end, meth%, mc, unmeth; 1-based, start == end",
            pos=2,
            end=3,
            interval="point1",
            meth=5,
            unmeth=6,
            base=1,
            n_columns=(6,),
        ),
        _fmt(
            "bismark-zero-cov",
            "Bismark .zero.cov: as bismark-cov but 0-based start, end = start + 1",
            pos=2,
            end=3,
            interval="c0",
            meth=5,
            unmeth=6,
            base=0,
            n_columns=(6,),
        ),
        _fmt(
            "bismark-bedgraph",
            "Bismark bedGraph: chrom, start, end, meth% (0-100); 0-based, no counts (cov 1 nominal)",
            pos=2,
            end=3,
            interval="c0",
            frac=4,
            frac_scale=100.0,
            base=0,
            n_columns=(4,),
        ),
        _fmt(
            "bismark-cpg-report",
            "Bismark CpG report: chrom, pos, strand, mc, unmeth, context, trinucleotide; 1-based",
            pos=2,
            strand=3,
            meth=4,
            unmeth=5,
            context=6,
            base=1,
            n_columns=(7,),
            skip_zero_coverage=True,
        ),
        _fmt(
            "bismark-merged-cov",
            "Bismark merged_CpG_evidence.cov: chrom, start (+ C), end (G), meth%, mc, unmeth; pooled",
            pos=2,
            end=3,
            interval="merged",
            meth=5,
            unmeth=6,
            base=1,
            n_columns=(6,),
        ),
        _fmt(
            "methyldackel",
            "MethylDackel bedGraph: chrom, start, end, meth%, mc, unmeth; 0-based half-open; "
            "end - start = 1 per C, 2 with --mergeContext (pooled)",
            pos=2,
            end=3,
            interval="dackel",
            meth=5,
            unmeth=6,
            base=0,
            n_columns=(6,),
        ),
        _fmt(
            "methyldackel-fraction",
            "MethylDackel --fraction .meth.bedGraph: chrom, start, end, fraction 0-1; 0-based",
            pos=2,
            end=3,
            interval="dackel",
            frac=4,
            base=0,
            n_columns=(4,),
        ),
        _fmt(
            "allc",
            "ALLC: chrom, pos, strand, context, mc, cov (total), methylated [, 2 SNP columns]; "
            "1-based; CG contexts kept",
            pos=2,
            strand=3,
            context=4,
            meth=5,
            cov=6,
            base=1,
            n_columns=(7, 8, 9),
        ),
        _fmt(
            "deepcpg",
            "DeepCpG profile: chrom, pos (1-based + C of the CpG), value in [0, 1]",
            pos=2,
            frac=3,
            base=1,
            pooled=True,
            n_columns=(3,),
        ),
        _fmt(
            "deepcpg-bedgraph",
            "DeepCpG bedGraph export: chrom, start (1-based + C), end (the G), value in [0, 1]",
            pos=2,
            end=3,
            interval="cpg1",
            frac=4,
            base=1,
            pooled=True,
            n_columns=(4,),
        ),
        _fmt(
            "methyldackel-methylkit",
            "MethylDackel --methylKit: chrBase, chr, base (1-based), strand F/R, coverage, "
            "freqC %, freqT % (header); mc = round(coverage * freqC / 100)",
            chrom=2,
            pos=3,
            strand=4,
            cov=5,
            frac=6,
            frac_scale=100.0,
            base=1,
            header=True,
            n_columns=(7,),
        ),
        _fmt(
            "methrix",
            "methrix-style counts: chrom, pos (1-based C), M (methylated reads), U (unmethylated "
            "reads); per C, unstranded",
            pos=2,
            meth=3,
            unmeth=4,
            base=1,
            n_columns=(4,),
        ),
        _fmt(
            "per-c-state",
            "per-C calls: chrom, pos (1-based C on either strand), 0/1 call; unstranded",
            pos=2,
            state=3,
            base=1,
            n_columns=(3,),
        ),
        _fmt(
            "percent-rate",
            "per-C rates: chrom, pos (1-based C), methylation percentage 0-100; unstranded, "
            "no counts (cov 1 nominal)",
            pos=2,
            frac=3,
            frac_scale=100.0,
            base=1,
            n_columns=(3,),
        ),
        _fmt(
            "scage",
            "scAge: chrom_pos (fused, 1-based C, e.g. chr1_3014555), methylation 0/1 or "
            "fraction in [0, 1]; unstranded",
            pos=2,
            frac=3,
            base=1,
            fused=True,
            n_columns=(3,),
        ),
        FormatInfo("tsv", None, "generic delimited file described by a column spec (--columns)"),
    )
}

REJECTED_SUFFIXES = {
    ".counts.bedgraph": "MethylDackel --counts output has total coverage only (no methylation)",
    ".logit.bedgraph": "MethylDackel --logit output holds logit values, not calls; rerun with the "
    "default or --fraction output",
    ".gpc.cov": "NOMe-seq GpC accessibility calls (*.NOMe.GpC.cov) are not CpG methylation; "
    "use the *.NOMe.CpG.cov file",
    "_chg.bedgraph": "MethylDackel CHG-context output is not CpG methylation; use the _CpG file",
    "_chh.bedgraph": "MethylDackel CHH-context output is not CpG methylation; use the _CpG file",
}


# --------------------------------------------------------------------------------------------------
# Custom column spec
# --------------------------------------------------------------------------------------------------

_SEP_WORDS = {"\\t": "\t", "tab": "\t", "t": "\t", ",": ",", "comma": ",", ";": ";", " ": " "}
_SPEC_KEYS = {
    "chrom",
    "pos",
    "meth",
    "unmeth",
    "cov",
    "frac",
    "percent",
    "state",
    "strand",
    "context",
    "base",
    "sep",
    "header",
    "pooled",
}


def parse_column_spec(text: str) -> ColumnSpec:
    """Parse a custom column spec.

    Grammar: colon-separated fields. The first fields may be MethSCAn's positional form
    ``chrom:pos:meth:X{c|u}:sep:header`` (1-based columns; ``Xc`` = column X is total coverage,
    ``Xu`` = unmethylated count; sep ``\\t``/``tab`` or ``,``; header 0/1). Any field may instead be
    ``key=value`` with keys ``chrom pos meth unmeth cov frac percent state strand context base sep
    header pooled``. Examples: ``1:2:4:5c:,:1:strand=3`` (vmrseq csv),
    ``1:2:5:6c:\\t:0`` (ALLC-like), ``chrom=1:pos=2:frac=3:base=1``, ``chrom=1:pos=2:state=4:base=0``.
    """
    if not text or not text.strip():
        raise UsageError("column spec is empty")
    fields = text.split(":")
    positional: list[str] = []
    keys: dict[str, str] = {}
    for item in fields:
        if "=" in item:
            key, _, value = item.partition("=")
            key = key.strip().lower()
            if key not in _SPEC_KEYS:
                raise UsageError(
                    f"column spec {text!r}: unknown key {key!r} (known: {', '.join(sorted(_SPEC_KEYS))})"
                )
            keys[key] = value
        else:
            if keys:
                raise UsageError(
                    f"column spec {text!r}: positional field {item!r} after key=value fields"
                )
            positional.append(item)
    if len(positional) > 6:
        raise UsageError(
            f"column spec {text!r}: at most 6 positional fields (chrom:pos:meth:X{{c|u}}:sep:header)"
        )

    def col(value: str, what: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise UsageError(
                f"column spec {text!r}: {what} must be a 1-based column number, got {value!r}"
            ) from None
        if number < 1:
            raise UsageError(f"column spec {text!r}: {what} must be >= 1, got {number}")
        return number

    kw: dict[str, object] = {}
    names = ["chrom", "pos", "meth", "count", "sep", "header"]
    for name, value in zip(names, positional):
        if value in ("", "-") and name in ("meth", "count"):
            continue
        if name in ("chrom", "pos", "meth"):
            kw[name] = col(value, name)
        elif name == "count":
            match = re.fullmatch(r"(\d+)([cCuU])", value)
            if not match:
                raise UsageError(
                    f"column spec {text!r}: 4th field must be a column number followed by c "
                    f"(total coverage) or u (unmethylated), got {value!r}"
                )
            kind = "cov" if match.group(2).lower() == "c" else "unmeth"
            kw[kind] = col(match.group(1), kind)
        elif name == "sep":
            kw["sep"] = value
        elif name == "header":
            kw["header"] = value
    for key, value in keys.items():
        if key in ("chrom", "pos", "meth", "unmeth", "cov", "frac", "state", "strand", "context"):
            kw[key] = col(value, key)
        elif key == "percent":
            kw["frac"] = col(value, key)
            kw["frac_scale"] = 100.0
        else:
            kw[key] = value
    if "sep" in kw:
        sep = str(kw["sep"])
        if sep not in _SEP_WORDS:
            raise UsageError(
                f"column spec {text!r}: separator must be \\t, ',' or ';' (got {sep!r})"
            )
        kw["sep"] = _SEP_WORDS[sep]
    for flag in ("header", "pooled"):
        if flag in kw:
            value = str(kw[flag]).strip().lower()
            if value not in ("0", "1", "true", "false", "yes", "no"):
                raise UsageError(f"column spec {text!r}: {flag} must be 0 or 1, got {value!r}")
            kw[flag] = value in ("1", "true", "yes")
    if "base" in kw:
        value = str(kw["base"]).strip()
        if value not in ("0", "1"):
            raise UsageError(f"column spec {text!r}: base must be 0 or 1, got {value!r}")
        kw["base"] = int(value)
    return ColumnSpec(**kw)  # type: ignore[arg-type]


def sep_name(sep: str) -> str:
    return {"\t": "tab", ",": "comma", ";": "semicolon", " ": "whitespace"}.get(sep, repr(sep))
