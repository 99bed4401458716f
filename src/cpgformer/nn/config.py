"""The model configuration: every architectural choice of a CpG Transformer, saved in each checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from cpgformer.errors import UsageError

MODES: dict[str, tuple[str, ...]] = {
    "axial": ("sites", "cells"),
    "2D": ("sites_cells",),
    "intracell": ("sites",),
    "intercell": ("cells",),
    "none": (),
    "induced": ("sites", "induced"),
    "intercell-induced": ("induced",),
}
"""Attention mode -> the attention sublayers of each transformer layer, in order.

``sites``: sliding window along sites within each cell (relative positions);
``cells``: full attention across cells at each site; ``sites_cells``: one 2D window over
``site_window`` sites x all cells (the preprint's mode); ``induced``: attention across cells through
``n_inducing`` learned summary tokens per site (cost per token independent of the number of cells,
see :mod:`cpgformer.nn.induced`; not part of the published model).
"""

DATA_MODES = ("binary", "continuous")
ACTIVATIONS = ("relu", "gelu")
ATTENTION_IMPLS = ("fast", "reference")
DNA_PRECISIONS = ("fp32", "bf16")
"""Precisions of the DNA network (``CpGTransformer.set_dna_precision``)."""
CELL_ENCODERS = ("table", "profile")
"""``table``: one learned vector per training cell (the published model); ``profile``: a small network
over each cell's profile features (:mod:`cpgformer.data.profiles`), so any cell can be embedded."""
DNA_CONV_CHANNELS = (128, 256, 512)
DNA_HIDDEN = 128


def dna_flat_length(dna_window: int, n_conv_layers: int) -> int:
    """Length along the sequence after the DNA CNN's convolutions and poolings (``hlen`` of the spec)."""
    length = (dna_window - 10) // 4  # conv k=11, max-pool 4
    for _ in range(n_conv_layers - 1):
        length = (length - 2) // 2  # conv k=3, max-pool 2
    return length


@dataclass
class ModelConfig:
    """Architecture of a CpG Transformer (defaults = the published model).

    ``input_summaries`` adds, to every token, cheap summaries of the input grid (per-site mean of the
    other cells' inputs, windowed means, the cell's own local mean; see
    :func:`cpgformer.nn.embeddings.input_summaries`); ``summary_offset`` adds the per-site mean (as a
    logit, learned scale starting at 1) to the output and starts the head at zero, so an untrained
    model predicts the per-site mean. Both are off in the published model.

    ``dna_window`` 0 or ``None`` disables the DNA branch (the model then needs no reference FASTA and
    its combine layer takes only the [state, cell] embeddings). ``attention_impl`` is a runtime choice
    ("fast" blocked attention or the dense "reference"), it does not change the weights.
    """

    n_cells: int
    dna_window: int | None = 1001
    n_conv_layers: int = 2
    dna_embed: int = 32
    cell_embed: int = 32
    state_embed: int = 32
    hidden: int = 64
    n_layers: int = 4
    n_heads: int = 8
    head_dim: int = 8
    site_window: int = 21
    mode: str = "axial"
    data_mode: str = "binary"
    layernorm: bool = True
    activation: str = "relu"
    attention_dropout: float = 0.2
    cnn_dropout: float = 0.0
    attention_impl: str = "fast"
    n_inducing: int = 16
    cell_encoder: str = "table"
    profile_features: int = 18
    use_positions: bool = True
    cell_identity: bool = True
    input_summaries: bool = False
    summary_offset: bool = False

    def __post_init__(self) -> None:
        if self.dna_window is None:
            self.dna_window = 0
        problems = []
        if self.n_cells < 1:
            problems.append(f"n_cells must be >= 1, got {self.n_cells}")
        if self.dna_window:
            if self.dna_window % 2 == 0:
                problems.append(f"dna_window must be odd, got {self.dna_window}")
            if self.n_conv_layers not in (2, 3):
                problems.append(f"n_conv_layers must be 2 or 3, got {self.n_conv_layers}")
            elif dna_flat_length(self.dna_window, self.n_conv_layers) < 1:
                problems.append(f"dna_window {self.dna_window} is too short for the DNA CNN")
        if self.site_window < 1 or self.site_window % 2 == 0:
            problems.append(f"site_window must be odd and >= 1, got {self.site_window}")
        if self.mode not in MODES:
            problems.append(f"mode must be one of {sorted(MODES)}, got {self.mode!r}")
        if self.data_mode not in DATA_MODES:
            problems.append(f"data_mode must be one of {DATA_MODES}, got {self.data_mode!r}")
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.attention_impl not in ATTENTION_IMPLS:
            problems.append(
                f"attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}"
            )
        if self.n_inducing < 1:
            problems.append(f"n_inducing must be >= 1, got {self.n_inducing}")
        if self.cell_encoder not in CELL_ENCODERS:
            problems.append(
                f"cell_encoder must be one of {CELL_ENCODERS}, got {self.cell_encoder!r}"
            )
        elif self.cell_encoder == "profile" and self.profile_features < 3:
            problems.append("cell_encoder 'profile' needs profile_features >= 3")
        if not 0.0 <= self.attention_dropout < 1.0 or not 0.0 <= self.cnn_dropout < 1.0:
            problems.append("dropout probabilities must be in [0, 1)")
        for name in ("dna_embed", "cell_embed", "state_embed", "hidden", "n_heads", "head_dim"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        if self.hidden % 2:
            problems.append(f"hidden must be even (sinusoid width), got {self.hidden}")
        if self.n_layers < 0:
            problems.append("n_layers must be >= 0")
        if problems:
            raise UsageError("invalid model config: " + "; ".join(problems))

    @property
    def has_dna(self) -> bool:
        return bool(self.dna_window)

    @property
    def inductive(self) -> bool:
        """True when the model applies to any cell: cells embedded from their data (or, in the
        no-identity ablation, not embedded at all) instead of looked up in a table."""
        return self.cell_encoder == "profile" or not self.cell_identity

    @property
    def uses_profiles(self) -> bool:
        """True when the model embeds cells from their profile features."""
        return self.cell_encoder == "profile" and self.cell_identity

    @property
    def attention_kinds(self) -> tuple[str, ...]:
        return MODES[self.mode]

    @property
    def half_window(self) -> int:
        return (self.site_window - 1) // 2

    @property
    def receptive_field_sites(self) -> int:
        """Sites each side of a site that can influence its output: ``n_layers * (site_window - 1) // 2``.

        (An upper bound for ``intercell``/``none``, which see no other site at all.)
        """
        return self.n_layers * self.half_window

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a saved dict; missing fields take defaults, unknown fields are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown model config field(s): {', '.join(unknown)}")
        return cls(**data)
