"""The DNA encoder: a CNN over the ``dna_window``-bp sequence around each site (shared by all cells).

Layout as in the original (DeepCpG's ``CnnL2h128`` + a projection): nucleotide embedding (16 -> 4),
Conv1d(4 -> 128, k=11) + ReLU + MaxPool(4), Conv1d(128 -> 256, k=3) + ReLU + MaxPool(2)
[, Conv1d(256 -> 512, k=3) + ReLU + MaxPool(2) with 3 conv layers], channel-major flatten,
Linear(-> 128) + ReLU + Dropout, Linear(128 -> dna_embed). With 3 conv layers the flattened
Linear is sized from the real channel count (the original's 3-layer option was broken).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cpgformer.codes import N_NUCLEOTIDE_CODES
from cpgformer.nn.config import DNA_CONV_CHANNELS, DNA_HIDDEN, ModelConfig, dna_flat_length

NUCLEOTIDE_EMBED = 4


class DNAEncoder(nn.Module):
    """``[N, dna_window]`` nucleotide codes -> ``[N, dna_embed]``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        assert config.dna_window
        self.dna_window = int(config.dna_window)
        self.nucleotide_embed = nn.Embedding(N_NUCLEOTIDE_CODES, NUCLEOTIDE_EMBED)
        convs = []
        in_channels = NUCLEOTIDE_EMBED
        for layer in range(config.n_conv_layers):
            kernel = 11 if layer == 0 else 3
            convs.append(nn.Conv1d(in_channels, DNA_CONV_CHANNELS[layer], kernel))
            in_channels = DNA_CONV_CHANNELS[layer]
        self.convs = nn.ModuleList(convs)
        self.pools = [4] + [2] * (config.n_conv_layers - 1)
        flat = in_channels * dna_flat_length(self.dna_window, config.n_conv_layers)
        self.fc = nn.Linear(flat, DNA_HIDDEN)
        self.dropout = nn.Dropout(config.cnn_dropout)
        self.proj = nn.Linear(DNA_HIDDEN, config.dna_embed)

    def forward(self, windows: Tensor) -> Tensor:
        if windows.shape[-1] != self.dna_window:
            raise ValueError(
                f"DNA windows have width {windows.shape[-1]}, the model expects {self.dna_window}"
            )
        h = self.nucleotide_embed(windows.long()).transpose(1, 2)  # [N, 4, window]
        for conv, pool in zip(self.convs, self.pools):
            h = torch.nn.functional.max_pool1d(torch.relu(conv(h)), pool)
        h = self.dropout(torch.relu(self.fc(h.flatten(1))))  # channel-major flatten
        return self.proj(h)

    def embed_chunked(self, windows: Tensor, chunk_size: int = 4096) -> Tensor:
        """Encode many windows in chunks (bounded memory); same result as ``forward``."""
        if windows.shape[0] <= chunk_size:
            return self(windows)
        return torch.cat([self(part) for part in windows.split(chunk_size)], dim=0)
