"""CpGTransformer: embeddings -> combine -> transformer layers -> per-token logit."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cpgformer.nn.config import ATTENTION_IMPLS, DNA_PRECISIONS, ModelConfig
from cpgformer.nn.dna import WINDOW_CHUNK, DNAEncoder
from cpgformer.nn.embeddings import (
    SUMMARY_FEATURES,
    BinaryStateEmbedding,
    ContinuousStateEmbedding,
    input_summaries,
)
from cpgformer.nn.layers import TransformerLayer
from cpgformer.nn.posenc import RelativePositions


class CpGTransformer(nn.Module):
    """The CpG Transformer (De Waele et al. 2022) over a token grid of sites x cells.

    ``forward(states [B, L, C], positions [B, L], cell_ids [B, C], dna=None, dna_embedding=None)``
    returns logits ``[B, L, C]`` (pre-sigmoid for binary data, the beta estimate for continuous).
    Token (i, c) = concat(state embedding, cell embedding, DNA embedding of site i) -> Linear + ReLU;
    without a DNA branch (``dna_window`` 0) the combine layer takes [state, cell] only.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.attention_impl = config.attention_impl
        self.dna_encoder = DNAEncoder(config) if config.has_dna else None
        if config.uses_profiles:
            # cells embedded from their profile features: any cell, not a fixed table
            self.cell_encoder = nn.Sequential(
                nn.Linear(config.profile_features, 2 * config.cell_embed),
                nn.ReLU(),
                nn.Linear(2 * config.cell_embed, config.cell_embed),
            )
            self.register_buffer(
                "cell_profiles", torch.zeros(0, config.profile_features), persistent=False
            )
        elif config.cell_identity:
            self.cell_embed = nn.Embedding(config.n_cells, config.cell_embed)
        # (no cell_identity: an ablation where cells carry no identity — zero cell vectors)
        if config.data_mode == "binary":
            self.state_embed: nn.Module = BinaryStateEmbedding(config.state_embed)
        else:
            self.state_embed = ContinuousStateEmbedding(config.state_embed)
        combined = (
            config.state_embed + config.cell_embed + (config.dna_embed if config.has_dna else 0)
        )
        self.combine = nn.Linear(combined, config.hidden)
        if config.input_summaries:
            self.summary_embed = nn.Linear(SUMMARY_FEATURES, config.hidden, bias=False)
        self.layers = nn.ModuleList(TransformerLayer(config) for _ in range(config.n_layers))
        self.head = nn.Linear(config.hidden, 1)
        if config.summary_offset:
            # an untrained model predicts the per-site mean of the other cells' inputs
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
            self.offset_scale = nn.Parameter(torch.ones(()))
        self._positional = any(k in ("sites", "sites_cells") for k in config.attention_kinds)

    @property
    def receptive_field_sites(self) -> int:
        """``n_layers * (site_window - 1) // 2``: sites each side that can influence an output."""
        return self.config.receptive_field_sites

    def set_cell_profiles(self, profiles: Tensor) -> None:
        """Profile features ``[n_cells, profile_features]`` of the cells ``cell_ids`` index (the cells
        of the store being used); only for ``cell_encoder="profile"`` models."""
        if not self.config.uses_profiles:
            raise ValueError(
                "this model embeds cells with a table (or not at all): it takes no cell profiles"
            )
        profiles = torch.as_tensor(profiles)
        if profiles.ndim != 2 or profiles.shape[1] != self.config.profile_features:
            raise ValueError(
                f"cell profiles must be [n_cells, {self.config.profile_features}], "
                f"got {tuple(profiles.shape)}"
            )
        self.cell_profiles = profiles.to(self.cell_encoder[0].weight)

    def cell_vectors(self, cell_ids: Tensor) -> Tensor:
        """Cell embeddings ``[B, C, cell_embed]`` of the cells ``cell_ids`` ``[B, C]``."""
        if not self.config.cell_identity:
            weight = self.combine.weight
            return weight.new_zeros(*cell_ids.shape, self.config.cell_embed)
        if not self.config.uses_profiles:
            return self.cell_embed(cell_ids)
        if self.cell_profiles.shape[0] == 0:
            raise ValueError("set the cells' profiles first (set_cell_profiles)")
        return self.cell_encoder(self.cell_profiles[cell_ids])

    def embed_dna(self, windows: Tensor, chunk_size: int = WINDOW_CHUNK) -> Tensor:
        """``[N, dna_window]`` nucleotide codes -> ``[N, dna_embed]`` (in chunks; cache per site)."""
        if self.dna_encoder is None:
            raise ValueError("this model has no DNA branch (dna_window = 0)")
        return self.dna_encoder.embed_chunked(windows, chunk_size)

    def set_dna_precision(self, precision: str) -> None:
        """``"bf16"``: the DNA CNN's convolutions and Linear layers in bfloat16, whether fed
        sequences or windows (faster where the hardware computes bf16 natively, e.g. x86 CPUs with
        AVX512-BF16 or AMX; slightly different numbers); ``"fp32"``: full precision (default)."""
        if precision not in DNA_PRECISIONS:
            raise ValueError(f"DNA precision must be fp32 or bf16, got {precision!r}")
        if self.dna_encoder is not None:
            self.dna_encoder.bf16 = precision == "bf16"

    def embed_dna_sequence(self, sequence: Tensor, starts: Tensor) -> Tensor:
        """DNA embeddings ``[B, L, dna_embed]`` from each segment's sequence ``[B, S]`` (nucleotide
        codes, any padding after the last window) and the start of each site's window in it
        ``[B, L]``: convolutions shared between overlapping windows (:meth:`DNAEncoder.encode`)."""
        if self.dna_encoder is None:
            raise ValueError("this model has no DNA branch (dna_window = 0)")
        batch, length = starts.shape
        span = sequence.shape[1]
        offset = torch.arange(batch, device=starts.device).unsqueeze(1) * span
        flat = self.dna_encoder.encode(sequence.reshape(-1), (starts + offset).reshape(-1))
        return flat.view(batch, length, flat.shape[-1])

    def embed_tokens(
        self,
        states: Tensor,
        cell_ids: Tensor,
        dna_embedding: Tensor | None,
        impl: str = "fast",
        rest: Tensor | None = None,
    ) -> Tensor:
        """Combined token embeddings ``[B, L, C, D]`` (after Linear + ReLU); ``rest``: see
        :meth:`summaries`."""
        batch, length, cells = states.shape
        state = self.state_embed(states)  # [B, L, C, Es]
        cell = self.cell_vectors(cell_ids)  # [B, C, Ec]
        summary = None
        if self.config.input_summaries:
            summary = self.summary_embed(self.summaries(states, rest).to(self.combine.weight.dtype))
        if impl == "reference":
            parts = [state, cell.unsqueeze(1).expand(batch, length, cells, cell.shape[-1])]
            if dna_embedding is not None:
                parts.append(dna_embedding.unsqueeze(2).expand(batch, length, cells, -1))
            combined = self.combine(torch.cat(parts, dim=-1))
            return torch.relu(combined if summary is None else combined + summary)
        # the combine Linear split by input block: per-cell and per-site terms computed once
        weight = self.combine.weight
        es, ec = self.config.state_embed, self.config.cell_embed
        hidden = F.linear(state, weight[:, :es], self.combine.bias)
        hidden = hidden + F.linear(cell, weight[:, es : es + ec]).unsqueeze(1)
        if dna_embedding is not None:
            hidden = hidden + F.linear(dna_embedding, weight[:, es + ec :]).unsqueeze(2)
        if summary is not None:
            hidden = hidden + summary
        return torch.relu(hidden)

    def summaries(self, states: Tensor, rest: Tensor | None = None) -> Tensor:
        """Input summaries ``[B, L, C, 7]`` of each token (:func:`input_summaries`; its own input
        left out), computed from the input grid and, in training on resampled cells, the totals
        ``rest`` ``[B, L, 3]`` of the segment's other cells."""
        with torch.no_grad():
            return input_summaries(states, self.config.half_window, self.config.data_mode, rest)

    def output_offset(self, states: Tensor, rest: Tensor | None = None) -> Tensor | None:
        """What ``summary_offset`` adds to the head's output ``[B, L, C]`` (None when off): the
        per-site mean of the other cells' inputs, as a logit for binary data."""
        if not self.config.summary_offset:
            return None
        site = self.summaries(states, rest)[..., 0]
        if self.config.data_mode != "binary":
            site = torch.sigmoid(site)
        return self.offset_scale * site.to(self.offset_scale.dtype)

    def forward(
        self,
        states: Tensor,
        positions: Tensor,
        cell_ids: Tensor,
        dna: Tensor | None = None,
        dna_embedding: Tensor | None = None,
        attention_impl: str | None = None,
        dna_sequence: Tensor | None = None,
        dna_starts: Tensor | None = None,
        rest: Tensor | None = None,
    ) -> Tensor:
        """See the class docstring; ``attention_impl`` overrides the config's "fast"/"reference".
        ``rest`` ``[B, L, 3]``: the input summaries' totals of the segment's cells that are not in
        ``states`` (training on resampled cells; :func:`cpgformer.data.batch.rest_totals`).

        The DNA input is one of: ``dna`` ``[B, L, dna_window]`` windows; ``dna_sequence`` ``[B, S]``
        with ``dna_starts`` ``[B, L]`` (each site's window start in its segment's sequence: the
        convolutions of overlapping windows are shared, same result); or precomputed
        ``dna_embedding`` ``[B, L, dna_embed]``. Either way the DNA CNN runs in bounded chunks.
        """
        impl = attention_impl or self.attention_impl
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
        batch, length, cells = states.shape
        if self.dna_encoder is not None:
            if dna_embedding is None:
                if dna_sequence is not None and dna_starts is not None:
                    dna_embedding = self.embed_dna_sequence(dna_sequence, dna_starts)
                elif dna is not None:
                    windows = dna.reshape(batch * length, -1)
                    dna_embedding = self.dna_encoder.embed_chunked(windows)
                    dna_embedding = dna_embedding.view(batch, length, -1)
                else:
                    raise ValueError(
                        "this model has a DNA branch: pass dna, dna_sequence with dna_starts, "
                        "or dna_embedding"
                    )
        else:
            dna_embedding = None  # a model without DNA branch ignores DNA inputs
        x = self.embed_tokens(states, cell_ids, dna_embedding, impl, rest)
        x = self.transform(x, positions, impl)
        out = self.head(x).squeeze(-1)
        offset = self.output_offset(states, rest)
        return out if offset is None else out + offset.to(out.dtype)

    def transform(self, x: Tensor, positions: Tensor, attention_impl: str | None = None) -> Tensor:
        """The transformer stack alone: token embeddings ``[B, L, C, D]`` -> ``[B, L, C, D]``."""
        impl = attention_impl or self.attention_impl
        rel = None
        if not self.config.use_positions:  # ablation: every site at distance 0 from every other
            positions = torch.zeros_like(positions)
        if self._positional and self.layers:
            rel = RelativePositions(positions, self.config.half_window, self.config.hidden)
        for layer in self.layers:
            x = layer(x, rel, impl)
        return x
