"""Tools (scanpy's ``tl``): clustering, embedding, comparisons across arms over time.

Each tool lives in its own private module and writes its results into named slots of the
AnnData (``key_added``), or returns a new object with ``copy=True``.
"""

from immunoprofile.tl._annotate import (
    agreement_table,
    annotate_clusters,
    cluster_abundance,
    cluster_agreement,
    cluster_f1,
    marker_thresholds,
)
from immunoprofile.tl._differential import (
    complements,
    differential_abundance,
    differential_state,
)
from immunoprofile.tl._flowsom import SOM_GRID, flowsom, flowsom_map, fluorescence_markers
from immunoprofile.tl._leiden import leiden
from immunoprofile.tl._power import DEFAULT_VARIABILITY, estimate_variability, power
from immunoprofile.tl._response import ResponderRule, response
from immunoprofile.tl._umap import umap

__all__ = [
    "DEFAULT_VARIABILITY",
    "SOM_GRID",
    "ResponderRule",
    "agreement_table",
    "annotate_clusters",
    "cluster_abundance",
    "cluster_agreement",
    "cluster_f1",
    "complements",
    "differential_abundance",
    "differential_state",
    "estimate_variability",
    "flowsom",
    "flowsom_map",
    "fluorescence_markers",
    "leiden",
    "marker_thresholds",
    "power",
    "response",
    "umap",
]

from immunoprofile.tl._joint import (
    clinical_comparison,
    correlations,
    cytokine_comparison,
    read_cytokines,
    responders,
    rmcorr,
)

__all__ += ["clinical_comparison", "correlations", "cytokine_comparison", "read_cytokines",
            "responders", "rmcorr"]
