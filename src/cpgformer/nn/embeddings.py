"""Call-state embeddings (binary: a lookup table; continuous: a linear map plus a learned mask vector)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class BinaryStateEmbedding(nn.Module):
    """Model-input codes {0 unknown/masked, 1 unmethylated, 2 methylated} -> ``[..., dim]``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(3, dim)

    def forward(self, states: Tensor) -> Tensor:
        return self.embed(states.long())


class ContinuousStateEmbedding(nn.Module):
    """Input 0 (unknown/masked) -> learned ``mask_embed``; input ``1 + beta`` -> ``Linear(1 -> dim)(beta)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(1, dim)
        bound = 1.0 / math.sqrt(dim)
        self.mask_embed = nn.Parameter(torch.empty(1, dim).uniform_(-bound, bound))

    def forward(self, states: Tensor) -> Tensor:
        dtype = self.linear.weight.dtype
        values = states.to(dtype)
        embedded = self.linear((values - 1).unsqueeze(-1))
        unknown = (values == 0).unsqueeze(-1)
        return torch.where(unknown, self.mask_embed.to(dtype), embedded)


SUMMARY_FEATURES = 7
"""Width of :func:`input_summaries`."""
SUMMARY_PRIOR_WEIGHT = 1.0
"""Pseudo-calls of the prior each summary mean is shrunk towards."""
_LOGIT_EPS = 1e-3


def _window_sum(x: Tensor, half: int, dim: int) -> Tensor:
    """Sums of ``x`` over a window of ``2 * half + 1`` positions along ``dim`` (zero beyond the
    ends), via cumulative sums."""
    length = x.shape[dim]
    cum = torch.cumsum(x, dim)
    zero = torch.zeros_like(cum.narrow(dim, 0, 1))
    cum = torch.cat([zero, cum], dim)  # cum[k] = sum of the first k entries
    idx = torch.arange(length, device=x.device)
    hi = (idx + half + 1).clamp(max=length)
    lo = (idx - half).clamp(min=0)
    return cum.index_select(dim, hi) - cum.index_select(dim, lo)


def _logit(p: Tensor) -> Tensor:
    p = p.clamp(_LOGIT_EPS, 1 - _LOGIT_EPS)
    return torch.log(p) - torch.log1p(-p)


def input_summaries(
    states: Tensor, half_window: int, data_mode: str = "binary", rest: Tensor | None = None
) -> Tensor:
    """Cheap summaries of the model's INPUT grid, per token: ``states [B, L, C]`` -> ``[B, L, C, 7]``.

    Each summary of token (site i, cell c) leaves that token's own input out, so it carries nothing
    about the token itself (masked or not); labels are never an input. Means are shrunk towards a
    prior with :data:`SUMMARY_PRIOR_WEIGHT` pseudo-calls and given as logits. Counts across cells are
    fractions of the tokens they could have covered, so a feature means the same with 128 cells in a
    training batch and 5,000 in an imputation group:

    0. mean of the other cells' observed inputs at site i (prior: the segment's mean), 1. the fraction
    of the other cells observed there;
    2. the same over sites ``i ± half_window`` (all cells but this token), 3. the fraction observed;
    4. this cell's mean over sites ``i ± half_window`` (prior: the cell's segment mean), 5. ``log1p``
    of its number of calls there;
    6. this cell's mean over the segment (prior: the segment's mean).

    The per-site mean is the ``site-mean`` baseline computed from the cells in the batch; the
    windowed cell mean is a local version of ``cell-mean``.

    ``rest`` [B, L, 3] (:func:`cpgformer.data.batch.rest_totals`): the cells of the segment that
    are not in ``states`` (a training batch of resampled cells). The across-cell summaries (0-3,
    and the priors) then count every cell of the segment, exactly as for the whole grid -- so
    training on 128 cells gives the model the summaries it will see at inference over all of them.
    """
    x = states.to(torch.float32)
    observed = (x > 0).to(torch.float32)
    value = torch.where(x > 0, x - 1.0, torch.zeros_like(x))
    if data_mode == "binary":
        value = value.clamp(0.0, 1.0)
    a = SUMMARY_PRIOR_WEIGHT
    # per site, every cell of the segment (the grid's and the rest's)
    all_sum = value.sum(2, keepdim=True)
    all_n = observed.sum(2, keepdim=True)
    n_cells = torch.full((x.shape[0], 1, 1), float(x.shape[2]), device=x.device)
    if rest is not None:
        rest = rest.to(x.device, torch.float32)
        all_sum = all_sum + rest[..., 0:1]
        all_n = all_n + rest[..., 1:2]
        n_cells = n_cells + rest[:, :1, 2:3]
    # segment totals (leave-one-out per token) -> the prior of everything else
    seg_sum = all_sum.sum(1, keepdim=True) - value
    seg_n = all_n.sum(1, keepdim=True) - observed
    seg_mean = (seg_sum + 0.5 * a) / (seg_n + a)
    # per site, the other cells
    site_sum = all_sum - value
    site_n = all_n - observed
    site_mean = (site_sum + a * seg_mean) / (site_n + a)
    # per site window, every token but this one
    win_sum = _window_sum(all_sum, half_window, 1) - value
    win_n = _window_sum(all_n, half_window, 1) - observed
    win_mean = (win_sum + a * seg_mean) / (win_n + a)
    # this cell over the segment and over the window, leaving its own site out
    cell_sum = value.sum(1, keepdim=True) - value
    cell_n = observed.sum(1, keepdim=True) - observed
    cell_mean = (cell_sum + a * seg_mean) / (cell_n + a)
    local_sum = _window_sum(value, half_window, 1) - value
    local_n = _window_sum(observed, half_window, 1) - observed
    local_mean = (local_sum + a * cell_mean) / (local_n + a)
    ones = torch.ones(1, x.shape[1], 1, dtype=x.dtype, device=x.device)
    win_tokens = _window_sum(ones, half_window, 1) * n_cells - 1.0  # every token but this one
    others = (n_cells - 1).clamp_min(1)
    return torch.stack(
        [
            _logit(site_mean),
            (site_n / others).clamp_min(0),
            _logit(win_mean),
            (win_n / win_tokens.clamp_min(1.0)).clamp_min(0).expand_as(win_n),
            _logit(local_mean),
            torch.log1p(local_n.clamp_min(0)),
            _logit(cell_mean),
        ],
        dim=-1,
    )


def input_summaries_reference(
    states: Tensor, half_window: int, data_mode: str = "binary"
) -> Tensor:
    """:func:`input_summaries` token by token with explicit loops (for tests; slow)."""
    b_n, length, cells = states.shape
    out = torch.zeros(b_n, length, cells, SUMMARY_FEATURES, dtype=torch.float64)
    a = SUMMARY_PRIOR_WEIGHT

    def val(b: int, i: int, c: int) -> float | None:
        s = float(states[b, i, c])
        if s <= 0:
            return None
        v = s - 1.0
        return min(max(v, 0.0), 1.0) if data_mode == "binary" else v

    def shrunk(values: list[float], prior: float) -> float:
        return (sum(values) + a * prior) / (len(values) + a)

    def logit(p: float) -> float:
        p = min(max(p, _LOGIT_EPS), 1 - _LOGIT_EPS)
        return math.log(p / (1 - p))

    for b in range(b_n):
        for i in range(length):
            for c in range(cells):
                others = [
                    (j, d)
                    for j in range(length)
                    for d in range(cells)
                    if (j, d) != (i, c) and val(b, j, d) is not None
                ]
                seg = (sum(val(b, j, d) for j, d in others) + 0.5 * a) / (len(others) + a)
                site = [val(b, i, d) for j, d in others if j == i]
                win = [val(b, j, d) for j, d in others if abs(j - i) <= half_window]
                cell = [val(b, j, d) for j, d in others if d == c]
                cell_mean = shrunk(cell, seg)
                local = [val(b, j, d) for j, d in others if d == c and abs(j - i) <= half_window]
                win_tokens = sum(1 for j in range(length) if abs(j - i) <= half_window) * cells - 1
                out[b, i, c] = torch.tensor(
                    [
                        logit(shrunk(site, seg)),
                        len(site) / max(1, cells - 1),
                        logit(shrunk(win, seg)),
                        len(win) / max(1, win_tokens),
                        logit(shrunk(local, cell_mean)),
                        math.log1p(len(local)),
                        logit(cell_mean),
                    ],
                    dtype=torch.float64,
                )
    return out
