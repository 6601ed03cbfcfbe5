"""Leiden clustering through scanpy, on a neighbour graph of the marker matrix.

Cytometry has no need for PCA: the graph is built on the (few, transformed) marker values
directly. The graph lands where :func:`scanpy.pp.neighbors` puts it (``obsp['distances']``,
``obsp['connectivities']``, ``uns['neighbors']``) with the markers recorded in its params, so
:func:`scanpy.tl.umap` or :func:`scanpy.tl.leiden` can run on it afterwards and
:func:`immunoprofile.tl.umap` reuses it when asked for the same graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from immunoprofile.tl._flowsom import cache_numba, marker_matrix


def marker_neighbors(adata: AnnData, *, markers: Sequence[str] | None = None,
                     n_neighbors: int = 15, random_state: int = 0) -> AnnData:
    """Compute (or reuse) the kNN graph of the marker matrix and return a scratch AnnData
    holding it (marker matrix in ``X``), on which scanpy's tools can run.

    The graph is also written into ``adata`` in scanpy's slots; a graph already there with the
    same markers, ``n_neighbors`` and ``random_state`` is reused instead of recomputed.
    """
    # start-up time: a heavy library, loaded on first use
    import scanpy as sc

    cache_numba()
    markers, X = marker_matrix(adata, markers, dtype=np.float32)  # read only, as neighbors do
    scratch = AnnData(X=X, obs=pd.DataFrame(index=adata.obs_names.copy()))
    wanted = {"markers": list(markers), "n_neighbors": int(n_neighbors),
              "random_state": int(random_state)}
    have = adata.uns.get("neighbors", {}).get("params", {})
    if ("connectivities" in adata.obsp and "distances" in adata.obsp
            and _same_graph(have, wanted)):
        scratch.obsp["connectivities"] = adata.obsp["connectivities"]
        scratch.obsp["distances"] = adata.obsp["distances"]
        scratch.uns["neighbors"] = _plain(adata.uns["neighbors"])
        return scratch
    sc.pp.neighbors(scratch, n_neighbors=n_neighbors, use_rep="X", random_state=random_state)
    scratch.uns["neighbors"]["params"].update(wanted)
    adata.obsp["connectivities"] = scratch.obsp["connectivities"]
    adata.obsp["distances"] = scratch.obsp["distances"]
    adata.uns["neighbors"] = _plain(scratch.uns["neighbors"])
    return scratch


def _same_graph(have: dict, wanted: dict) -> bool:
    try:
        return (list(map(str, have.get("markers", []))) == wanted["markers"]
                and int(have.get("n_neighbors", -1)) == wanted["n_neighbors"]
                and int(have.get("random_state", -1)) == wanted["random_state"])
    except (TypeError, ValueError):
        return False


def _plain(uns: dict) -> dict:
    """A copy with lists instead of arrays in params (h5ad-safe and comparable)."""
    out = dict(uns)
    params = dict(out.get("params", {}))
    if "markers" in params:
        params["markers"] = [str(m) for m in params["markers"]]
    out["params"] = params
    return out


def leiden(
    adata: AnnData,
    resolution: float = 1,
    *,
    markers: Sequence[str] | None = None,
    n_neighbors: int = 15,
    random_state: int = 0,
    key_added: str = "leiden",
    copy: bool = False,
) -> AnnData | None:
    """Leiden clustering (scanpy, igraph flavour) on the kNN graph of the markers.

    Parameters
    ----------
    adata
        Events × markers with transformed values in ``X``.
    resolution
        Higher values give more clusters.
    markers
        Markers the graph is built on (default: fluorescence markers, see
        :func:`immunoprofile.tl.fluorescence_markers`).
    n_neighbors
        Neighbours per event in the graph.
    random_state
        Seed of the graph search and of the Leiden optimisation.
    key_added
        ``obs[key_added]`` gets the cluster per event (``'0'``, ``'1'``, …) and
        ``uns[key_added]['params']`` the parameters, as in :func:`scanpy.tl.leiden`.
    copy
        Return a new AnnData instead of writing into ``adata``.

    Returns
    -------
    AnnData or None
        The new object when ``copy=True``.
    """
    # start-up time: a heavy library, loaded on first use
    import scanpy as sc

    adata = adata.copy() if copy else adata
    scratch = marker_neighbors(adata, markers=markers, n_neighbors=n_neighbors,
                               random_state=random_state)
    # igraph's implementation with two iterations is scanpy's announced future default: it is
    # faster than leidenalg and avoids the FutureWarning about the change.
    sc.tl.leiden(scratch, resolution=resolution, random_state=random_state, key_added="leiden",
                 flavor="igraph", n_iterations=2, directed=False)
    adata.obs[key_added] = scratch.obs["leiden"].to_numpy()
    adata.obs[key_added] = adata.obs[key_added].astype(scratch.obs["leiden"].dtype)
    params = dict(scratch.uns["leiden"]["params"])
    params.update(markers=list(scratch.uns["neighbors"]["params"]["markers"]),
                  n_neighbors=int(n_neighbors), flavor="igraph")
    adata.uns[key_added] = {"params": params}
    return adata if copy else None
