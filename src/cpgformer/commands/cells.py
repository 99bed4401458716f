"""``cpgformer cells CHECKPOINT STORE -o DIR``: the model's cell representations, a map, clusters."""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from cpgformer import cells as lib
from cpgformer.cells import CellsOptions
from cpgformer.errors import InputError, UsageError
from cpgformer.impute import open_imputed
from cpgformer.io.store import open_dataset
from cpgformer.options import add_options, from_args

NAME = "cells"
HELP = "cell representations of a trained model: table, .h5ad, 2-D map, clusters, outliers"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint written by cpgformer train")
    parser.add_argument("store", help="dataset store whose cells to place (from cpgformer prepare)")
    parser.add_argument("-o", "--output", required=True, help="output directory (created)")
    add_options(parser, CellsOptions)


def read_metadata(path: str, cells: list[str]) -> pd.DataFrame:
    """The metadata table indexed by cell name (its first column), checked against the store."""
    try:
        table = pd.read_csv(path, sep="\t", dtype={0: str})
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(path, None, f"cannot read as a TSV table: {exc}") from None
    if table.shape[1] < 2:
        raise InputError(path, None, "needs a cell-name column and at least one more column")
    table = table.set_index(table.columns[0])
    table.index = table.index.astype(str)
    if not set(cells) & set(table.index):
        raise InputError(path, None, "no cell name of the store appears in its first column")
    return table


def run(args: argparse.Namespace) -> int:
    opts = from_args(CellsOptions, args)
    ds = open_dataset(args.store)
    obs = ds.cell_table.copy()
    if "n_obs" in obs:
        obs = obs.rename(columns={"n_obs": "n_calls_obs"})
    metadata = None
    if opts.cell_metadata:
        metadata = read_metadata(opts.cell_metadata, list(ds.cells))
        extra = metadata.reindex([str(c) for c in obs["name"]])
        for column in extra.columns:
            if column not in obs:
                obs[column] = extra[column].to_numpy()
    for column in (opts.color, opts.labels):
        if column and column not in obs:
            raise UsageError(
                f"no column {column!r} in the store's cell table or --cell-metadata "
                f"(has {', '.join(map(str, obs.columns))})"
            )
    representations = lib.cell_representations(
        args.checkpoint, ds, ignore_fingerprint=opts.ignore_fingerprint
    )
    adata = lib.cell_map(
        representations,
        obs,
        clusters=opts.clusters,
        n_clusters=opts.n_clusters,
        tsne=opts.tsne,
        seed=opts.seed,
    )
    comparison = labels = None
    if opts.imputed:
        imputed = open_imputed(opts.imputed)
        if list(imputed.cell_table["name"].astype(str)) != [str(c) for c in obs["name"]]:
            raise UsageError(f"{opts.imputed}: its cells are not the store's cells")
        bins = lib.bin_matrices(ds, imputed, opts.bin_size)
        labels = obs[opts.labels].tolist() if opts.labels else None
        comparison = lib.compare_clusterings(bins, labels, opts.n_clusters, opts.seed)
    summary = lib.write_cell_map(
        args.output,
        adata,
        opts.color,
        comparison=comparison,
        labels=labels,
        overwrite=opts.overwrite,
        inputs=[args.checkpoint, args.store, opts.cell_metadata, opts.imputed],
    )
    sys.stdout.write(
        f"{args.output}\t{adata.n_obs} cells\t{len(summary['clusters'])} clusters\t"
        f"{len(summary['outliers'])} outlier(s)\n"
    )
    return 0
