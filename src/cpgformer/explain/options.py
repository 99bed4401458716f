"""Options of ``cpgformer explain`` (its flags are made from :class:`ExplainOptions`)."""

from __future__ import annotations

from dataclasses import dataclass

from cpgformer.errors import UsageError
from cpgformer.model import IGNORE_FINGERPRINT_HELP
from cpgformer.options import option

FIGURE_FORMATS = ("png", "pdf", "svg")


@dataclass
class ExplainOptions:
    """How predictions are explained and what is written."""

    sites: str = option(
        help="rows `chrom position cell [label_change]`: position 0-based (the + strand C, as in "
        "the store); cell name (or 0-based index); label_change mask/-1, 0, 1 (a fraction for "
        "continuous models) or none (default: keep the stored call); a header line is allowed",
        metavar="FILE",
        required=True,
    )
    n_steps: int = option(
        50,
        "integration points of integrated gradients per path stage (Gauss-Legendre); raise it "
        "when summary.tsv shows a large convergence_delta",
    )
    baseline: str = option(
        "unknown",
        "integrated-gradients baseline: 'unknown' = every call unknown, cell embeddings 0, every "
        "base N, integrated cells first, then the data; 'zero' = all embedding outputs 0, one "
        "straight path (the original script's choice)",
        choices=("unknown", "zero"),
    )
    fasta: str | None = option(
        None,
        "reference FASTA for models that use DNA",
        shown="the one the store records",
        metavar="FASTA",
    )
    device: str = option("cpu", "torch device to run on: cpu, cuda, cuda:1, ...")
    attention: bool = option(True, "write the attention maps (--no-attention: attributions only)")
    figures: bool = option(True, "draw figures (--no-figures: the npz files only)")
    format: str = option("png", "figure format", choices=FIGURE_FORMATS)
    ignore_fingerprint: bool = option(False, IGNORE_FINGERPRINT_HELP)
    overwrite: bool = option(False, "replace the output directory if it exists")

    def check(self) -> None:
        """:class:`UsageError` for a bad value."""
        if self.n_steps < 1:
            raise UsageError(f"--n-steps must be >= 1, got {self.n_steps}")
