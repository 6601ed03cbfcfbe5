"""FlowSOM clustering through the maintained ``flowsom`` package, with a model that travels.

:func:`flowsom` trains a self-organising map (SOM) on the marker matrix and groups its nodes
into metaclusters (FlowSOM: the SOM step for step as ``flowsom``'s ``SOMEstimator``, in loops
cached across processes (:mod:`immunoprofile.tl._som`), then ``flowsom``'s consensus
hierarchical clustering of the node codes). The fitted model is kept in
``adata.uns[key_added]`` as plain arrays (node codes and the node → metacluster map), so that
it survives an ``.h5ad`` round trip and other events can be mapped onto the same clusters with
:func:`flowsom_map` (a cohort's timepoints clustered once and compared cluster by cluster).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from immunoprofile._pool import in_pool_worker
from immunoprofile.errors import ImmunoprofileError
from immunoprofile.tl._parallel import resolve_jobs
from immunoprofile.tl._som import CAN_YIELD

# Names that are not fluorescence markers of a cell: scatter, the clock and dyes that only say
# whether a cell was alive. Compared case-insensitively; scatter by prefix (FSC-A, SSC-H, ...).
_SCATTER_PREFIXES = ("fsc", "ssc")
_NOT_MARKERS = {"time", "viability", "live", "dead", "live/dead", "livedead", "live_dead",
                "zombie", "dapi", "7-aad", "7aad", "pi", "event_length", "width"}


# Modules whose numba functions are compiled without ``cache=True``: umap-learn's graph and
# layout code alone costs ~15 s of compilation in every new process (measured: scanpy
# neighbors + UMAP of 3,000 events 27 s cold, 5 s with these cached).
# flowsom's own SOM loops are not listed: they take the distance as a function argument, which
# numba cannot cache (each process compiled again and added an entry beside the package).
_NUMBA_MODULES = ("umap.umap_", "umap.layouts", "umap.utils", "umap.distances", "umap.sparse",
                  "pynndescent.pynndescent_", "pynndescent.utils", "pynndescent.distances",
                  "pynndescent.rp_trees")


def cache_numba(modules: Sequence[str] = _NUMBA_MODULES) -> None:
    """Let numba cache the compiled code of the clustering libraries on disk.

    Turns on numba's own on-disk cache (what ``@njit(cache=True)`` does) for the jitted
    functions of umap-learn, pynndescent and flowsom that do not ask for it. The cache sits
    beside the packages or in ``NUMBA_CACHE_DIR``; numba invalidates it when a package's
    source changes. Functions numba cannot cache simply stay uncached. Idempotent.
    """
    # stdlib, needed only here
    import importlib
    import warnings

    # start-up time: a heavy library, loaded on first use
    from numba.core.caching import NullCache
    from numba.core.dispatcher import Dispatcher

    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for obj in list(vars(module).values()):
            if isinstance(obj, Dispatcher) and isinstance(obj._cache, NullCache):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    obj.enable_caching()


def fluorescence_markers(adata: AnnData) -> list[str]:
    """The markers clustering uses by default.

    ``var_names`` without scatter (``FSC*``, ``SSC*``), ``Time``, viability dyes and markers
    with missing values (markers some tubes of a pooled panel lack are NaN there).

    Parameters
    ----------
    adata
        Events × markers, as :func:`immunoprofile.assemble.timepoint_anndata` builds them.
    """
    out = []
    for i, name in enumerate(map(str, adata.var_names)):
        low = name.lower()
        if low.startswith(_SCATTER_PREFIXES) or low in _NOT_MARKERS or "viab" in low:
            continue
        column = np.asarray(adata.X[:, i])
        if np.isnan(column).any():
            continue
        out.append(name)
    if not out:
        raise ImmunoprofileError("no fluorescence markers left to cluster on (all var_names "
                                 "are scatter, Time, viability or contain NaN): pass markers=")
    return out


def marker_matrix(adata: AnnData, markers: Sequence[str] | None, *,
                  layer: str | None = None,
                  dtype: type[np.floating] | None = np.float64) -> tuple[list[str], np.ndarray]:
    """Resolve ``markers`` (default: :func:`fluorescence_markers`) and return them with their
    values as a C-contiguous matrix of ``dtype`` (float64 by default; ``None`` keeps float32
    values float32: the SOM loops compute in float64 either way, and float32 widens exactly,
    so they give the same codes without a float64 copy of every event).

    When no column is dropped or moved and no conversion is needed, the matrix is the
    AnnData's own (no copy of a million events): read it, do not write into it."""
    markers = fluorescence_markers(adata) if markers is None else [str(m) for m in markers]
    if not markers:
        raise ImmunoprofileError("no markers to cluster on: name them with markers= (the "
                                 "data has no fluorescence channel in var['kind'])")
    missing = [m for m in markers if m not in adata.var_names]
    if missing:
        raise ImmunoprofileError(f"markers {missing} are not in var_names "
                                 f"({', '.join(map(str, adata.var_names))})")
    if adata.var_names.is_unique:
        # columns taken from the stored matrix: an AnnData view of the columns copied them
        # into a strided array that took ~1 s to make contiguous at a million events
        stored = adata.layers[layer] if layer else adata.X
        values = stored.toarray() if hasattr(stored, "toarray") else np.asarray(stored)
        cols = adata.var_names.get_indexer(markers)
        if not np.array_equal(cols, np.arange(values.shape[1])):
            values = np.take(values, cols, axis=1)
    else:
        values = np.asarray(adata[:, markers].layers[layer] if layer else adata[:, markers].X)
    if dtype is None:
        dtype = np.float32 if values.dtype == np.float32 else np.float64
    X = np.ascontiguousarray(values, dtype=dtype)
    if not np.isfinite(X).all():
        # NaN: a tube without the marker; inf: no distance to a SOM code is finite
        bad = [m for m, col in zip(markers, X.T) if not np.isfinite(col).all()]
        raise ImmunoprofileError(f"markers {bad} have missing or infinite values (a tube "
                                 "without them?): leave them out of markers=")
    return markers, X


# One SOM grid for every entry point (tl.flowsom, cluster_run, the CLI); see flowsom().
SOM_GRID = 20

#: Codes from which two threads share the SOM's steps by default: a step's work must
#: outweigh the threads' handshake (~0.1 µs; on 10 × 10 they tie, on 6 × 6 two are 2× slower).
_SHARED_FROM = 200


def _som_threads(n_jobs: int | None, n_codes: int) -> int:
    """Threads for :func:`~immunoprofile.tl._som.train_codes` (see ``flowsom(n_jobs=)``)."""
    if n_jobs is not None and n_jobs > 0:
        return min(int(n_jobs), 2)
    if n_jobs is None or n_codes < _SHARED_FROM or in_pool_worker() or not CAN_YIELD:
        # one thread: as asked, a small grid, a pool worker's one core, or where a waiting
        # thread cannot give its core away
        return 1
    return min(resolve_jobs(n_jobs), 2)


def flowsom(
    adata: AnnData,
    *,
    markers: Sequence[str] | None = None,
    n_clusters: int = 20,
    xdim: int = SOM_GRID,
    ydim: int = SOM_GRID,
    rlen: int = 10,
    random_state: int = 0,
    key_added: str = "flowsom",
    copy: bool = False,
    seed: int | None = None,
    n_train: int | None = None,
    n_jobs: int | None = -1,
) -> AnnData | None:
    """FlowSOM clustering (self-organising map, then metaclustering of its nodes).

    Parameters
    ----------
    adata
        Events × markers with transformed values in ``X``.
    markers
        Markers to cluster on (default: fluorescence markers, see
        :func:`fluorescence_markers`).
    n_clusters
        Metaclusters.
    xdim, ydim
        SOM grid, 20 × 20 by default (:data:`SOM_GRID`) rather than FlowSOM's 10 × 10: over
        all lymphocytes one lineage dominates (T cells are ~70% of a B-cell tube) and a SOM
        gives nodes in proportion to density, so subsets of 0.3% of the events
        (transitional, unswitched, double-negative B, plasmablasts) got no node of their own
        on 10 × 10 and 14 × 14 grids for several seeds of small simulated cohorts; at 20 × 20
        every seed kept them apart. The grid needs at least xdim × ydim events.
    rlen
        Passes over the data while training the SOM.
    random_state
        Seed of the SOM initialisation and training.
    key_added
        ``obs[key_added]``: metacluster per event (categorical ``'0'``, ``'1'``, …);
        ``obs[key_added + '_node']``: SOM node (the row of the codes); ``uns[key_added]``:
        the model (``params``, ``codes``, ``node_metacluster``).
    copy
        Return a new AnnData instead of writing into ``adata``.
    seed
        Former name of ``random_state`` (kept as an alias).
    n_train
        Train the SOM on a seeded random subsample of this many events, then map every
        event to its nearest node (``params['n_train']``); None trains on all. The online
        SOM's time grows with the events it sees (~0.95 µs per event and pass on a 20 × 20
        grid and 15 markers in one thread, ~0.67 µs in two, see ``n_jobs``): a million
        events train in ~6.6 s on two cores, 100,000 in ~0.7 s, and mapping a million
        takes ~0.4 s more. A subsample's clusters differ from the full fit's about as much
        as another seed's do (benchmarks/README.md).
    n_jobs
        Threads training the SOM: 1, or 2 (each holds every other row of the grid and they
        trade each step's nearest code: ~1.45× faster on a 20 × 20 grid). ``-1`` (default;
        0 or below alike, as every ``n_jobs`` in immunoprofile) takes two where this process
        may use two cores (affinity and container quota) and the grid has at least 200 codes
        (below that a step is too short to share). If the cores turn out busy with other
        work, the two threads notice their waiting and one finishes alone. The codes, nodes
        and clusters are the same whatever the number (tested).

    Returns
    -------
    AnnData or None
        The new object when ``copy=True``.
    """
    # start-up time: heavy libraries, loaded on first use
    from flowsom.models import ConsensusCluster
    from scipy.spatial.distance import pdist, squareform

    from immunoprofile.tl._som import train_codes

    seed = random_state if seed is None else seed
    adata = adata.copy() if copy else adata
    markers, X = marker_matrix(adata, markers, dtype=None)
    if xdim * ydim > X.shape[0]:
        raise ImmunoprofileError(f"{X.shape[0]} events cannot train a {xdim}×{ydim} SOM: "
                                 "use a smaller grid or more events")
    if not 2 <= n_clusters <= xdim * ydim:
        raise ImmunoprofileError(f"n_clusters must be between 2 and {xdim * ydim} (the SOM "
                                 f"nodes), not {n_clusters}")
    if n_train is not None and n_train < xdim * ydim:
        raise ImmunoprofileError(f"n_train={n_train} events cannot train a {xdim}×{ydim} SOM")
    train = X
    if n_train is not None and n_train < X.shape[0]:
        pick = np.sort(np.random.default_rng(seed).choice(X.shape[0], n_train, replace=False))
        train = X[pick]
    # flowsom's SOMEstimator defaults: codes start at random events, the radius falls from the
    # grid's (Chebyshev) 67th-percentile distance to 0, the rate from 0.05 to 0.01.
    grid = [(x, y) for x in range(xdim) for y in range(ydim)]
    nhbrdist = squareform(pdist(grid, metric="chebyshev"))
    start = np.random.RandomState(seed).choice(train.shape[0], xdim * ydim, replace=False)
    codes = train_codes(train, np.ascontiguousarray(train[start], dtype=np.float64),
                        int(xdim), int(ydim), 0.05, 0.01,
                        float(np.quantile(nhbrdist, 0.67)), 0.0, int(rlen), int(seed),
                        threads=_som_threads(n_jobs, xdim * ydim))
    # FlowSOMEstimator's metaclustering of the codes (its fit_predict is the final
    # average-linkage clustering; the consensus resampling runs only in its fit()).
    node_metacluster = np.asarray(ConsensusCluster(n_clusters=n_clusters).fit_predict(codes),
                                  dtype=np.int64)
    model = {
        "params": {"markers": list(markers), "n_clusters": int(n_clusters), "xdim": int(xdim),
                   "ydim": int(ydim), "rlen": int(rlen), "seed": int(seed),
                   "n_train": int(train.shape[0]),
                   "method": "FlowSOM (SOM as flowsom.models.SOMEstimator; metaclusters "
                             "as FlowSOMEstimator: average-linkage clustering of the codes)",
                   "flowsom": _version()},
        "codes": codes,
        "node_metacluster": node_metacluster,
    }
    _assign(adata, X, model, key_added)
    return adata if copy else None


def flowsom_map(
    adata: AnnData,
    model_from: AnnData | Mapping[str, Any],
    *,
    key: str = "flowsom",
    key_added: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Map events onto a fitted FlowSOM model: nearest SOM node, then its metacluster.

    Parameters
    ----------
    adata
        Events with the model's markers in ``var_names``.
    model_from
        An AnnData clustered by :func:`flowsom` (its ``uns[key]``), or that model dict.
    key
        Where the model sits in ``model_from.uns``.
    key_added
        Slots to write (default: ``key``); the model is copied to ``uns[key_added]``.
    copy
        Return a new AnnData instead of writing into ``adata``.
    """
    model = model_from.uns.get(key) if isinstance(model_from, AnnData) else model_from
    if not isinstance(model, Mapping) or "codes" not in model:
        raise ImmunoprofileError(f"no FlowSOM model in uns[{key!r}]: run ip.tl.flowsom first")
    adata = adata.copy() if copy else adata
    params = dict(model["params"])
    markers = [str(m) for m in params["markers"]]
    _, X = marker_matrix(adata, markers, dtype=None)
    model = {"params": params, "codes": np.asarray(model["codes"], dtype=np.float64),
             "node_metacluster": np.asarray(model["node_metacluster"], dtype=np.int64)}
    _assign(adata, X, model, key_added or key)
    return adata if copy else None


def _assign(adata: AnnData, X: np.ndarray, model: dict, key_added: str) -> None:
    # start-up time: numba, loaded on first use
    from immunoprofile.tl._som import nearest_codes

    nodes, _ = nearest_codes(X, np.ascontiguousarray(model["codes"]))
    meta = model["node_metacluster"][nodes]
    categories = [str(i) for i in range(int(model["params"]["n_clusters"]))]
    adata.obs[key_added] = pd.Categorical.from_codes(meta, categories=categories)
    adata.obs[f"{key_added}_node"] = nodes
    params = dict(model["params"])
    params["markers"] = list(params["markers"])
    adata.uns[key_added] = {"params": params, "codes": model["codes"],
                            "node_metacluster": model["node_metacluster"]}


def _version() -> str:
    # stdlib, needed only here
    from importlib.metadata import version

    return version("flowsom")
