"""The DNA encoder: a CNN over the ``dna_window``-bp sequence around each site (shared by all cells).

Layout as in the original (DeepCpG's ``CnnL2h128`` + a projection): nucleotide embedding (16 -> 4),
Conv1d(4 -> 128, k=11) + ReLU + MaxPool(4), Conv1d(128 -> 256, k=3) + ReLU + MaxPool(2)
[, Conv1d(256 -> 512, k=3) + ReLU + MaxPool(2) with 3 conv layers], channel-major flatten,
Linear(-> 128) + ReLU + Dropout, Linear(128 -> dna_embed). With 3 conv layers the flattened
Linear is sized from the real channel count (the original's 3-layer option was broken).

Two ways to run it, with the same arithmetic per site:

* :meth:`DNAEncoder.forward` on ``[N, dna_window]`` windows, one CNN per window (the plain form);
* :meth:`DNAEncoder.encode` on a sequence and the start of each site's window in it: where windows
  overlap (dense CpGs) the convolutions are computed once per base of the covered sequence — each
  conv and pooling at every base, dilated by the product of the poolings before it, which keeps
  every pooling phase at once — and each window gathers its flattened features from that map;
  isolated windows run the plain form. Forward and backward, any device.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from cpgformer.codes import N_NUCLEOTIDE_CODES
from cpgformer.nn.config import DNA_CONV_CHANNELS, DNA_HIDDEN, ModelConfig, dna_flat_length

NUCLEOTIDE_EMBED = 4
# Cost of the plain CNN on one window, in bases of shared convolutions (the measured break-even,
# docs/benchmarks.md#whole-model-speed): a run of windows is shared when its covered sequence is
# shorter than this many bases per window.
SHARED_BASES_PER_WINDOW = 300
# Bases of sequence (shared) or windows (plain) encoded at once: bounds the memory of one call.
MAX_SHARED_BASES = 1 << 16
WINDOW_CHUNK = 512


def sliding_max(h: Tensor, pool: int, dilation: int) -> Tensor:
    """``F.max_pool1d(h, pool, stride=1, dilation=dilation)``. In bfloat16 without gradients it is
    computed as maxima of shifted views (doubling the span: 2 passes for a pool of 4) — the same
    values, several times faster than PyTorch's CPU max-pooling in bfloat16."""
    if (
        h.dtype != torch.bfloat16
        or pool & (pool - 1)
        or (torch.is_grad_enabled() and h.requires_grad)
    ):
        return F.max_pool1d(h, pool, stride=1, dilation=dilation)
    span = 1
    while span < pool:
        shift = span * dilation
        h = torch.maximum(h[..., :-shift], h[..., shift:])
        span *= 2
    return h


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
        self.feature_length = dna_flat_length(self.dna_window, config.n_conv_layers)
        flat = in_channels * self.feature_length
        self.fc = nn.Linear(flat, DNA_HIDDEN)
        self.dropout = nn.Dropout(config.cnn_dropout)
        self.proj = nn.Linear(DNA_HIDDEN, config.dna_embed)
        # opt-in: convolutions and Linear layers of encode() in bfloat16 (weights kept in fp32)
        self.bf16 = False

    @property
    def stride(self) -> int:
        """Bases per position of the last feature map (product of the poolings)."""
        return math.prod(self.pools)

    def forward(self, windows: Tensor) -> Tensor:
        if windows.shape[-1] != self.dna_window:
            raise ValueError(
                f"DNA windows have width {windows.shape[-1]}, the model expects {self.dna_window}"
            )
        h = self.nucleotide_embed(windows.long()).transpose(1, 2)  # [N, 4, window]
        for conv, pool in zip(self.convs, self.pools):
            h = F.max_pool1d(torch.relu(conv(h)), pool)
        h = self.dropout(torch.relu(self.fc(h.flatten(1))))  # channel-major flatten
        return self.proj(h)

    def embed_chunked(self, windows: Tensor, chunk_size: int = WINDOW_CHUNK) -> Tensor:
        """Encode many windows in chunks; same result as ``forward``. Memory is bounded by the chunk
        (with gradients, each chunk's activations are recomputed in backward instead of kept).
        With ``bf16`` set, in bfloat16 as :meth:`encode`."""
        with self._precision(windows.device):
            if windows.shape[0] <= chunk_size:
                out = self(windows)
            else:
                out = torch.cat([self._fc_in(part) for part in windows.split(chunk_size)], dim=0)
        return out.float() if self.bf16 else out

    def _precision(self, device: torch.device) -> contextlib.AbstractContextManager:
        """Autocast to bfloat16 when ``bf16`` is set (outputs then go back to float32), else
        nothing."""
        if self.bf16:
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ----------------------------------------------------------------------------------------------
    # shared convolutions

    def _base_map(self, codes: Tensor) -> Tensor:
        """``[S]`` codes -> ``[n, channels]``: row ``t`` holds the last conv block's output at the
        first position of the window starting at base ``t``; the window's ``j``-th position is row
        ``t + stride * j``. Each conv and pooling runs at every base, dilated by the poolings before
        it (so every pooling phase of the per-window computation is kept at once)."""
        h = self.nucleotide_embed(codes.long()).t().unsqueeze(0)  # [1, 4, S]
        dilation = 1
        for conv, pool in zip(self.convs, self.pools):
            # ReLU in place: a fresh output, not saved by the convolution's backward
            h = torch.relu_(F.conv1d(h, conv.weight, conv.bias, dilation=dilation))
            h = sliding_max(h, pool, dilation)
            dilation *= pool
        return h[0].t()

    def _fc_shared(self, codes: Tensor, starts: Tensor) -> Tensor:
        """fc output (before ReLU) of the windows starting at ``starts`` in ``codes``."""
        rows = self._base_map(codes)  # [n, ch]
        channels = rows.shape[1]
        hlen = self.feature_length
        index = starts[:, None] + self.stride * torch.arange(hlen, device=starts.device)
        feats = F.embedding(index, rows).reshape(len(starts), hlen * channels)  # position-major
        weight = (
            self.fc.weight.view(-1, channels, hlen).transpose(1, 2).reshape(-1, hlen * channels)
        )
        return F.linear(feats, weight, self.fc.bias)

    def _fc_windows(self, windows: Tensor) -> Tensor:
        h = self.nucleotide_embed(windows.long()).transpose(1, 2)
        for conv, pool in zip(self.convs, self.pools):
            h = F.max_pool1d(torch.relu_(conv(h)), pool)
        return self.fc(h.flatten(1))

    def _fc_in(self, windows: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            hidden = checkpoint(self._fc_windows, windows, use_reentrant=False)
        else:
            hidden = self._fc_windows(windows)
        return self.proj(self.dropout(torch.relu(hidden)))

    def plan(self, starts: np.ndarray, max_bases: int = MAX_SHARED_BASES) -> list[np.ndarray]:
        """Split window starts (any order) into calls: index arrays into ``starts``. Each shared call
        covers at most ``max_bases`` bases; the last array (possibly empty) lists the windows run
        one by one. Windows are grouped where they overlap; a group is shared when its covered
        sequence is shorter than ``SHARED_BASES_PER_WINDOW`` bases per window."""
        starts = np.asarray(starts, dtype=np.int64)
        width = self.dna_window
        order = np.argsort(starts, kind="stable")
        s = starts[order]
        if len(s) == 0:
            return [order]
        new_group = np.ones(len(s), dtype=bool)
        new_group[1:] = np.diff(s) >= width
        group = np.cumsum(new_group) - 1
        firsts = np.flatnonzero(new_group)
        lasts = np.append(firsts[1:], len(s)) - 1
        covered = s[lasts] - s[firsts] + width
        count = lasts - firsts + 1
        shared_group = covered < SHARED_BASES_PER_WINDOW * count
        shared = shared_group[group]
        calls: list[np.ndarray] = []
        current: list[int] = []
        bases = 0
        for i in np.flatnonzero(shared).tolist():
            added = width if new_group[i] or not current else min(int(s[i] - s[i - 1]), width)
            if current and bases + added > max_bases:
                calls.append(order[current])
                current, bases, added = [], 0, width
            current.append(i)
            bases += added
        if current:
            calls.append(order[current])
        calls.append(order[~shared])
        return calls

    def encode(self, sequence: Tensor, starts: Tensor, max_bases: int = MAX_SHARED_BASES) -> Tensor:
        """DNA embeddings ``[N, dna_embed]`` of the windows starting at ``starts`` ``[N]`` in
        ``sequence`` ``[S]`` (nucleotide codes); every window must lie inside the sequence.

        Equal to ``forward`` on the windows ``sequence[starts[i] : starts[i] + dna_window]`` (up to
        rounding). Overlapping windows share their convolutions (:meth:`plan`); at most
        ``max_bases`` bases are convolved at once, and with gradients each call's activations are
        recomputed in backward when there are several calls (bounded memory for long segments).
        With ``bf16`` set, the convolutions and Linear layers run in bfloat16 (autocast).
        """
        with self._precision(sequence.device):
            out = self._encode(sequence, starts, max_bases)
        return out.float() if self.bf16 else out

    def _encode(self, sequence: Tensor, starts: Tensor, max_bases: int) -> Tensor:
        width = self.dna_window
        starts_np = starts.detach().cpu().numpy().astype(np.int64)
        if len(starts_np) and (starts_np.min() < 0 or starts_np.max() + width > len(sequence)):
            raise ValueError(f"DNA windows of width {width} must lie inside the sequence")
        calls = self.plan(starts_np, max_bases)
        recompute = torch.is_grad_enabled() and sum(len(c) > 0 for c in calls) > 1
        parts, order = [], []
        device = sequence.device
        for k, idx in enumerate(calls):
            if len(idx) == 0:
                continue
            s = starts_np[idx]
            if k == len(calls) - 1:  # windows run one by one
                index = torch.from_numpy(s).to(device)
                windows = sequence.unfold(0, width, 1).index_select(0, index)
                for chunk in windows.split(WINDOW_CHUNK):
                    parts.append(self._fc_in(chunk) if recompute else self._fc_plain(chunk))
                order.append(idx)
                continue
            codes, local = self._compact(sequence, s)
            local_t = torch.from_numpy(local).to(device)
            if recompute:
                hidden = checkpoint(self._fc_shared, codes, local_t, use_reentrant=False)
            else:
                hidden = self._fc_shared(codes, local_t)
            parts.append(self.proj(self.dropout(torch.relu(hidden))))
            order.append(idx)
        if not parts:
            return self.proj.weight.new_zeros(0, self.proj.out_features)
        out = torch.cat(parts, dim=0)
        inverse = np.empty(len(starts_np), dtype=np.int64)
        inverse[np.concatenate(order)] = np.arange(len(starts_np))
        return out.index_select(0, torch.from_numpy(inverse).to(out.device))

    def _fc_plain(self, windows: Tensor) -> Tensor:
        return self.proj(self.dropout(torch.relu(self._fc_windows(windows))))

    def _compact(self, sequence: Tensor, s: np.ndarray) -> tuple[Tensor, np.ndarray]:
        """The covered pieces of ``sequence`` for windows ``s`` (sorted), concatenated, and each
        window's start in it."""
        width = self.dna_window
        new = np.ones(len(s), dtype=bool)
        new[1:] = np.diff(s) >= width
        firsts = np.flatnonzero(new)
        lasts = np.append(firsts[1:], len(s)) - 1
        if len(firsts) == 1:
            lo = int(s[0])
            return sequence[lo : int(s[-1]) + width], s - lo
        lengths = s[lasts] - s[firsts] + width
        offset = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        pieces = [sequence[int(s[a]) : int(s[b]) + width] for a, b in zip(firsts, lasts)]
        group = np.cumsum(new) - 1
        return torch.cat(pieces), s - s[firsts][group] + offset[group]
