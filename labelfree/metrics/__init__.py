"""Metrics of the paper (Section 2 of the paper (Crabbé & van der Schaar, 2022)): pure, vectorised tensor functions, one module per family.

* Consistency of feature importance: mask each input's top features by |attribution|
  (:func:`top_feature_mask`, :func:`mask_features`; :mod:`labelfree.metrics.masks`) and measure the
  representation shift ||f(x) - f(x_masked)||^2 (:func:`representation_shift`;
  :mod:`labelfree.metrics.shift`). A random ranking is obtained by passing random attributions
  (e.g. ``torch.rand_like(inputs)``) to :func:`top_feature_mask`.
* Consistency of example importance: the share of a test example's M most (and M least) important
  training examples that carry its label (:func:`similarity_rates`; :mod:`labelfree.metrics.similarity`).
* Agreement between explanations: Pearson / Spearman correlation between flattened importance arrays
  (:func:`pearson_matrix`, :func:`spearman_matrix`), averaged over off-diagonal pairs
  (:func:`mean_off_diagonal`; :mod:`labelfree.metrics.correlation`).
* Saliency maps of the latent units of disentangled VAEs (:mod:`labelfree.metrics.units`).
* Structured inputs: token, node-feature and edge masks and the graph representation shift
  (:mod:`labelfree.metrics.structured`; :func:`graph_representation_shift` encodes one graph per explained node).
* Percentages (the configs' unit) to fractions and counts (:mod:`labelfree.metrics.percentages`).

:data:`HIGHER_IS_BETTER` says, for every metric, whether a higher value is better.
No function loops over examples or features in Python; only :func:`representation_shift` loops over
batches, to bound memory.
"""

from __future__ import annotations

from labelfree.metrics import correlation, masks, percentages, shift, similarity, units
from labelfree.metrics import structured
from labelfree.metrics.correlation import mean_off_diagonal, pearson_matrix, spearman_matrix
from labelfree.metrics.masks import LAYOUTS, mask_features, top_feature_mask
from labelfree.metrics.percentages import percent_to_count, percent_to_fraction
from labelfree.metrics.shift import representation_shift
from labelfree.metrics.similarity import similarity_rate_curves, similarity_rates
from labelfree.metrics.structured import (
    graph_representation_shift,
    k_hop_nodes,
    mask_node_features,
    mask_tokens,
    remove_edges,
    top_edge_mask,
    top_node_feature_mask,
    top_token_mask,
)
from labelfree.metrics.units import (
    UNIT_CORRELATIONS,
    active_units,
    pooled_unit_correlation,
    unit_correlation,
    unit_cosine,
    unit_entropy,
    unit_shares,
)

#: :data:`HIGHER_IS_BETTER` and what each family module exports.
__all__ = [
    "HIGHER_IS_BETTER",
    *percentages.__all__,
    *masks.__all__,
    *shift.__all__,
    *similarity.__all__,
    *correlation.__all__,
    *units.__all__,
    *structured.__all__,
]

#: Whether a higher value of each metric is better. ``None``: descriptive, no preferred direction
#: (correlations between explanations are reported, not optimised: the pretext experiment reads a
#: moderate correlation, the VAE experiment asks whether it falls with beta).
HIGHER_IS_BETTER: dict[str, bool | None] = {
    # masking the most important features should move the representation the most
    "representation_shift": True,
    # the most important training examples should share the test example's label
    "similarity_most": True,
    # the least important training examples should rarely share it
    "similarity_least": False,
    "pearson": None,
    "spearman": None,
    # unit maps: descriptive (the VAE study asks whether they fall as beta grows), no preferred direction
    "pearson_pooled": None,
    "spearman_pooled": None,
    "cosine": None,
    "entropy": None,
    "active_units": None,
}
