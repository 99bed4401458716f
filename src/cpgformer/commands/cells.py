"""``cpgformer cells CHECKPOINT STORE -o DIR``: the model's cell representations, a map, clusters."""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from cpgformer import cells as lib
from cpgformer.errors import InputError, UsageError
from cpgformer.impute import open_imputed
from cpgformer.io.store import open_dataset
from cpgformer.model import IGNORE_FINGERPRINT_HELP

NAME = "cells"
HELP = "cell representations of a trained model: table, .h5ad, 2-D map, clusters, outliers"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint written by cpgformer train")
    parser.add_argument("store", help="dataset store whose cells to place (from cpgformer prepare)")
    parser.add_argument("-o", "--output", required=True, help="output directory (created)")
    parser.add_argument(
        "--cell-metadata",
        help="TSV with a first column of cell names (as in the store) and any other columns",
    )
    parser.add_argument(
        "--color",
        default="global_meth_frac",
        help="obs column that colours the map (default: %(default)s, from the store's QC table)",
    )
    parser.add_argument(
        "--clusters",
        choices=("kmeans", "leiden"),
        default="kmeans",
        help="clustering of the representations (default: %(default)s; leiden needs leidenalg)",
    )
    parser.add_argument("--n-clusters", type=int, default=3, help="k-means clusters (default: 3)")
    parser.add_argument("--tsne", action="store_true", help="also compute a t-SNE map")
    parser.add_argument(
        "--imputed",
        help="imputed store of the same cells: also cluster raw vs imputed bins (see --bin-size)",
    )
    parser.add_argument(
        "--bin-size", type=int, default=100_000, help="bp per bin for --imputed (default: 100000)"
    )
    parser.add_argument(
        "--labels",
        help="metadata column of known groups: ARI/NMI of the raw and imputed clusterings",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of UMAP and k-means (default: 0)")
    parser.add_argument("--ignore-fingerprint", action="store_true", help=IGNORE_FINGERPRINT_HELP)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")


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
    ds = open_dataset(args.store)
    obs = ds.cell_table.copy()
    if "n_obs" in obs:
        obs = obs.rename(columns={"n_obs": "n_calls_obs"})
    metadata = None
    if args.cell_metadata:
        metadata = read_metadata(args.cell_metadata, list(ds.cells))
        extra = metadata.reindex([str(c) for c in obs["name"]])
        for column in extra.columns:
            if column not in obs:
                obs[column] = extra[column].to_numpy()
    for column in (args.color, args.labels):
        if column and column not in obs:
            raise UsageError(
                f"no column {column!r} in the store's cell table or --cell-metadata "
                f"(has {', '.join(map(str, obs.columns))})"
            )
    representations = lib.cell_representations(
        args.checkpoint, ds, ignore_fingerprint=args.ignore_fingerprint
    )
    adata = lib.cell_map(
        representations,
        obs,
        clusters=args.clusters,
        n_clusters=args.n_clusters,
        tsne=args.tsne,
        seed=args.seed,
    )
    comparison = labels = None
    if args.imputed:
        imputed = open_imputed(args.imputed)
        if list(imputed.cell_table["name"].astype(str)) != [str(c) for c in obs["name"]]:
            raise UsageError(f"{args.imputed}: its cells are not the store's cells")
        bins = lib.bin_matrices(ds, imputed, args.bin_size)
        labels = obs[args.labels].tolist() if args.labels else None
        comparison = lib.compare_clusterings(bins, labels, args.n_clusters, args.seed)
    summary = lib.write_cell_map(
        args.output,
        adata,
        args.color,
        comparison=comparison,
        labels=labels,
        overwrite=args.overwrite,
        inputs=[args.checkpoint, args.store, args.cell_metadata, args.imputed],
    )
    sys.stdout.write(
        f"{args.output}\t{adata.n_obs} cells\t{len(summary['clusters'])} clusters\t"
        f"{len(summary['outliers'])} outlier(s)\n"
    )
    return 0
