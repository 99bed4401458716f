"""Attention of the CpG Transformer: one module, a dense reference and the fast backends.

* :mod:`~cpgformer.nn.attention.reference` — the definition (dense score matrices, O(L²));
* :mod:`~cpgformer.nn.attention.backends` — the fast path and the one rule that picks its backend:
  fused C++ operators (:mod:`~cpgformer.nn.attention.kernels`), ``scaled_dot_product_attention`` on
  query blocks (:mod:`~cpgformer.nn.attention.blocked`, the CUDA path), or the chunked tensor-op
  cores (:mod:`~cpgformer.nn.attention.cores`);
* :class:`Attention` — the sublayer (projections + one kind of attention).
"""

from cpgformer.nn.attention.backends import SDPA_MIN_CELLS, choose, use
from cpgformer.nn.attention.blocked import BLOCK, OnBand
from cpgformer.nn.attention.dropout import fast_dropout
from cpgformer.nn.attention.module import KINDS, Attention
from cpgformer.nn.attention.reference import (
    cell_attention_reference,
    site_attention_reference,
    site_cell_attention_reference,
)

__all__ = [
    "BLOCK",
    "KINDS",
    "SDPA_MIN_CELLS",
    "Attention",
    "OnBand",
    "cell_attention_reference",
    "choose",
    "fast_dropout",
    "site_attention_reference",
    "site_cell_attention_reference",
    "use",
]
