"""UMAP embedding through scanpy, on the kNN graph of the marker matrix."""

from __future__ import annotations

from collections.abc import Sequence

from anndata import AnnData

from immunoprofile.tl._leiden import marker_neighbors


def umap(
    adata: AnnData,
    *,
    markers: Sequence[str] | None = None,
    n_neighbors: int = 15,
    min_dist: float = 0.3,
    random_state: int = 0,
    key_added: str = "X_umap",
    copy: bool = False,
) -> AnnData | None:
    """UMAP of the events (scanpy's :func:`scanpy.tl.umap` on the markers' kNN graph).

    Parameters
    ----------
    adata
        Events × markers with transformed values in ``X``.
    markers
        Markers the graph is built on (default: fluorescence markers).
    n_neighbors
        Neighbours per event; the graph of :func:`immunoprofile.tl.leiden` is reused when the
        markers, ``n_neighbors`` and ``random_state`` match.
    min_dist
        How tightly UMAP packs neighbouring points.
    random_state
        Seed (a fixed seed makes umap-learn single-threaded but reproducible).
    key_added
        ``obsm[key_added]`` gets the 2-D coordinates; ``uns['umap']`` (or ``uns[key_added]``
        for another key) the parameters, as scanpy does.
    copy
        Return a new AnnData instead of writing into ``adata``.

    Returns
    -------
    AnnData or None
        The new object when ``copy=True``.

    Notes
    -----
    UMAP costs about a second per few thousand events after numba's first compilation
    (cached on disk by umap-learn and pynndescent): embed a subsample of a large cohort.
    """
    # start-up time: a heavy library, loaded on first use
    import scanpy as sc

    adata = adata.copy() if copy else adata
    scratch = marker_neighbors(adata, markers=markers, n_neighbors=n_neighbors,
                               random_state=random_state)
    sc.tl.umap(scratch, min_dist=min_dist, random_state=random_state)
    adata.obsm[key_added] = scratch.obsm["X_umap"]
    params = dict(scratch.uns["umap"]["params"])
    params.update(markers=list(scratch.uns["neighbors"]["params"]["markers"]),
                  n_neighbors=int(n_neighbors), min_dist=float(min_dist),
                  random_state=int(random_state))
    adata.uns["umap" if key_added == "X_umap" else key_added] = {"params": params}
    return adata if copy else None
