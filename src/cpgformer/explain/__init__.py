"""Explain predictions: integrated gradients (Captum) and attention maps.

For one target (site, cell) the model's logit (log-odds of "methylated") is explained over the
model's receptive field: ``model.receptive_field_sites`` sites on each side of the target (truncated
at chromosome ends, exactly what a whole-chromosome pass sees: the band attention has no rows
there) times all cells, plus the DNA window of every site when the model uses DNA.

Integrated gradients are taken on the outputs of the three input embeddings:

* call-state embedding, one vector per (site, cell) -- baseline: the embedding of the model's own
  "unknown" input (code 0, what a missing or masked call looks like to the model);
* cell embedding, one vector per cell -- baseline: the zero vector (there is no "unknown cell");
* nucleotide embedding inside the DNA encoder, one vector per base of every site's DNA window --
  baseline: the embedding of N (the model's "unknown base", also what pads chromosome ends).

The default path has two straight stages: the cell embeddings first (every call unknown, every base
N), then the calls and bases (cells at their values); see :func:`integrated_gradients`.
Attributions are summed over the embedding channels, so there is one number per (site, cell) for the
states, one per cell for the cell embedding and one per base for the DNA. By the completeness
property of integrated gradients, all attributions together add up to ``logit - baseline_logit``
(the logit with every input at its baseline), up to the integration error Captum reports as the
convergence delta.

Attention maps are read from the model's own attention modules (see :func:`attention_maps`).

Coordinates: a site is (chrom, 0-based position of the + strand C), like the store.

Modules: :mod:`~cpgformer.explain.queries` (the sites file), :mod:`~cpgformer.explain.attribution`
(integrated gradients), :mod:`~cpgformer.explain.attention` (attention maps),
:mod:`~cpgformer.explain.sites` (:func:`explain_sites`), :mod:`~cpgformer.explain.results`
(:class:`SiteExplanation`, npz), :mod:`~cpgformer.explain.plotting` (figures) and
:mod:`~cpgformer.explain.output` (an output directory with ``summary.tsv``).
"""

from cpgformer.explain.attention import AttentionMaps, attention_maps, attention_probabilities
from cpgformer.explain.attribution import BASELINES, Attributions, integrated_gradients
from cpgformer.explain.output import SUMMARY_COLUMNS, write_explanations
from cpgformer.explain.plotting import plot_attention, plot_attributions, plot_dna_track
from cpgformer.explain.queries import LABEL_KEEP, SiteQuery, dna_windows, read_sites, site_window
from cpgformer.explain.results import SiteExplanation, load_npz, save_npz
from cpgformer.explain.sites import explain_sites

__all__ = [
    "BASELINES",
    "SUMMARY_COLUMNS",
    "LABEL_KEEP",
    "AttentionMaps",
    "Attributions",
    "SiteExplanation",
    "SiteQuery",
    "attention_maps",
    "attention_probabilities",
    "dna_windows",
    "explain_sites",
    "integrated_gradients",
    "load_npz",
    "plot_attention",
    "plot_attributions",
    "plot_dna_track",
    "read_sites",
    "save_npz",
    "site_window",
    "write_explanations",
]
