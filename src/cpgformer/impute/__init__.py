"""Genome-wide imputation: overlap-tiled streaming inference into a compact, resumable imputed store.

A model reaches these functions as a :class:`cpgformer.model.Model` (or a checkpoint path); tiled
inference sees it through a :class:`cpgformer.model.Predictor`. Modules:

* :mod:`~cpgformer.impute.tiles`: tiling arithmetic and one block's predictions;
* :mod:`~cpgformer.impute.dna`: DNA embeddings of a block's sites (shared convolutions);
* :mod:`~cpgformer.impute.sites`: which rows are imputed and their observed calls;
* :mod:`~cpgformer.impute.probabilities`: outputs to probabilities, quantisation;
* :mod:`~cpgformer.impute.run`: options and the resumable chunk loop (:func:`impute`);
* :mod:`~cpgformer.impute.imputed`: the imputed store format and its reader;
* :mod:`~cpgformer.impute.calibration`: temperature scaling on seeded masked calls;
* :mod:`~cpgformer.impute.distributed`: several processes sharing the chunks (Lightning Fabric);
* :mod:`~cpgformer.impute.regions`: cells x regions sums instead of the per-CpG matrix.
"""

from cpgformer.impute.calibration import (
    HeldOut,
    _mask_for,
    binary_nll,
    calibrate,
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    masked_holdout,
)
from cpgformer.impute.distributed import impute_distributed
from cpgformer.impute.dna import embed_sites
from cpgformer.impute.imputed import FORMAT, FORMAT_VERSION, ImputedStore, open_imputed
from cpgformer.impute.probabilities import DTYPES, dequantize, quantize, to_probabilities
from cpgformer.impute.regions import impute_regions
from cpgformer.impute.run import SITE_MODES, ImputeOptions, default_chunk_sites, impute
from cpgformer.impute.sites import all_cpg_positions
from cpgformer.impute.tiles import (
    MAX_TILE_TOKENS,
    Tile,
    TileShape,
    plan_tile_shape,
    plan_tiles,
    predict_block,
)
from cpgformer.model import PredictFn, Predictor, file_digest, resolve_device

__all__ = [
    "DTYPES",
    "FORMAT",
    "FORMAT_VERSION",
    "MAX_TILE_TOKENS",
    "SITE_MODES",
    "HeldOut",
    "ImputeOptions",
    "ImputedStore",
    "PredictFn",
    "Predictor",
    "Tile",
    "TileShape",
    "_mask_for",
    "all_cpg_positions",
    "binary_nll",
    "calibrate",
    "calibration_report",
    "default_chunk_sites",
    "dequantize",
    "embed_sites",
    "expected_calibration_error",
    "file_digest",
    "fit_temperature",
    "impute",
    "impute_distributed",
    "impute_regions",
    "masked_holdout",
    "open_imputed",
    "plan_tile_shape",
    "plan_tiles",
    "predict_block",
    "quantize",
    "resolve_device",
    "to_probabilities",
]
