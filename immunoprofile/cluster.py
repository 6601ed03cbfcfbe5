"""Run-level clustering: one FlowSOM model per panel, every timepoint mapped onto it.

For each panel (tube) of a run, :func:`cluster_run`

1. draws a balanced subsample pooled over all timepoints: the same number of events from every
   sample (the smallest sample's count, capped by ``events_per_sample`` or by ``max_events``
   over the pool), so no sample or visit dominates the model;
2. fits one FlowSOM model on it (:func:`immunoprofile.tl.flowsom`);
3. maps every event of every timepoint's ``.h5ad`` onto that model
   (:func:`immunoprofile.tl.flowsom_map`), so cluster 7 at week 0 is cluster 7 at week 12, and
   writes each file's labels (``flowsom``, ``flowsom_node`` per event) with the model beside
   it in ``clusters/<file>.parquet``; the assembled ``.h5ad`` files are never rewritten, and
   :meth:`immunoprofile.Run.timepoint` reads a file with its labels joined into ``obs`` and the
   model in ``uns['flowsom']``;
4. writes ``clusters.parquet`` (sample × cluster counts, which ``compare`` tests like gated
   populations), ``cluster_annotation.csv`` and ``cluster_agreement.csv``.

Files are read a chunk of rows at a time (their sample sizes first, then the events twice: to
subsample and to map), so memory holds the pooled subsample's events (``X`` only) and one
chunk.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
from anndata.io import read_elem

from immunoprofile._pool import usable_cores
from immunoprofile.assemble import assemble_run
from immunoprofile.errors import ImmunoprofileError
from immunoprofile.run import Run
from immunoprofile.tables import (
    Column,
    register,
    write_csv,
    write_parquet,
    write_parquet_chunks,
)
from immunoprofile.tl import (
    SOM_GRID,
    agreement_table,
    annotate_clusters,
    cluster_abundance,
    flowsom,
    flowsom_map,
    marker_thresholds,
)

CLUSTERS: tuple[Column, ...] = (
    Column("sample_id", "string", "Sample id from the sample sheet."),
    Column("panel", "string", "Panel (tube) the clustering was fitted on ('' for one-tube "
           "studies); clusters of different panels are unrelated."),
    Column("cluster", "string", "FlowSOM metacluster ('0', '1', …), the same model at every "
           "timepoint of the panel."),
    Column("count", "int64", "Events of the sample in the cluster (zeros included)."),
    Column("parent_count", "int64", "Events of the sample in the clustered data (its events "
           "in the timepoint's .h5ad: the parent population, the templates' "
           "reference_population by default)."),
    Column("pct", "float64", "100 × count / parent_count."),
    Column("<sheet column>", "as in the sheet", "patient_id, arm, timepoint, week, batch, … "
           "as in subsets.parquet."),
)
ANNOTATION: tuple[Column, ...] = (
    Column("panel", "string", "Panel."),
    Column("cluster", "string", "Metacluster."),
    Column("n_events", "int64", "Events of the cluster in the balanced subsample the model "
           "was fitted on."),
    Column("pct_events", "float64", "100 × n_events / subsample size."),
    Column("population", "string", "Dominant gated population (deepest gate reached) over all "
           "mapped events."),
    Column("population_fraction", "float64", "Share of the cluster's events in it."),
    Column("phenotype", "string", "Marker rule, e.g. `CD3+ CD4+ CD25+ CD127-`: `+` when the "
           "cluster median is above the marker's threshold (bimodal valley, or 3 SD above a "
           "lone negative peak; see immunoprofile.tl.marker_thresholds)."),
    Column("median_<marker>", "float64", "Median transformed value in the subsample."),
    Column("threshold_<marker>", "float64", "The marker's +/- threshold."),
)
AGREEMENT: tuple[Column, ...] = (
    Column("panel", "string", "Panel."),
    Column("cluster", "string", "Metacluster."),
    Column("population", "string", "Gated population (deepest gate reached)."),
    Column("count", "int64", "Events in both, over all mapped events."),
    Column("frac_of_cluster", "float64", "count / events of the cluster."),
    Column("frac_of_population", "float64", "count / events of the population."),
)
register("clusters.parquet (one row per sample × cluster)", CLUSTERS)
register("cluster_annotation.csv (one row per panel × cluster)", ANNOTATION)
register("cluster_agreement.csv (one row per panel × cluster × gated population)", AGREEMENT)

KEY = "flowsom"


@dataclass
class ClusterRunResult:
    """What :func:`cluster_run` wrote and the per-panel tables."""

    h5ad: list[Path] = field(default_factory=list)  # the label files written
    clusters: pd.DataFrame | None = None
    annotation: pd.DataFrame | None = None
    agreement: pd.DataFrame | None = None
    paths: dict[str, Path] = field(default_factory=dict)
    events_per_sample: dict[str, int] = field(default_factory=dict)


def _panel(adata: ad.AnnData) -> str:
    return str(adata.uns.get("immunoprofile", {}).get("panel", "") or "")


def cluster_run(
    run_dir: str | Path,
    *,
    n_clusters: int = 20,
    events_per_sample: int | None = None,
    max_events: int = 500_000,
    random_state: int = 0,
    xdim: int = SOM_GRID,
    ydim: int = SOM_GRID,
    markers: Sequence[str] | None = None,
    seed: int | None = None,
) -> ClusterRunResult:
    """Cluster a run: one FlowSOM model per panel, fitted on a balanced pooled subsample.

    Parameters
    ----------
    run_dir
        A gate run folder; its ``anndata/`` folder is assembled first when missing.
    n_clusters
        Metaclusters per panel.
    events_per_sample
        Events drawn from every sample for fitting. Default: as many as the smallest sample
        has in the ``.h5ad`` files, unless the pool would exceed ``max_events``. Every sample
        contributes equally; all events are mapped afterwards.
    max_events
        Cap on the pooled fitting events of a panel when ``events_per_sample`` is not given
        (SOM training time grows with it).
    random_state
        Seed of the subsample and of the SOM.
    xdim, ydim
        SOM grid (``immunoprofile.tl.SOM_GRID``, 20 × 20, as :func:`immunoprofile.tl.flowsom`;
        see there why not FlowSOM's 10 × 10). A rare population also needs events: small
        cohorts should fit on all their events.
    markers
        Markers to cluster on (default: each panel's fluorescence markers).
    seed
        Former name of ``random_state`` (kept as an alias).

    Returns
    -------
    ClusterRunResult
        The label files written, the clusters, annotation and agreement tables and the
        events per sample each panel's model was fitted on.
    """
    seed = random_state if seed is None else seed
    run = Run.open(run_dir)
    if not run.timepoint_files():
        assemble_run(run)
    files = run.timepoint_files()
    if not files:
        raise ImmunoprofileError(f"no timepoint .h5ad files in {run.anndata_dir}: run "
                                 "`immunoprofile assemble` first")

    # Pass 1, the files' sample sizes only (obs): the pooled subsample's size per sample is
    # known before any events are held (holding every file's events grew with the study).
    sizes: dict[str, list[np.ndarray]] = {}
    panel_of: dict[Path, str] = {}
    codes_of: dict[Path, np.ndarray] = {}  # each event's sample (a few bytes an event)
    for path in files:
        with h5py.File(path, "r") as f:
            panel_of[path] = _panel(ad.AnnData(uns=read_elem(f["uns"]) if "uns" in f else {}))
            codes_of[path] = codes = f["obs"]["sample_id"]["codes"][()]
        n = np.bincount(codes[codes >= 0])
        sizes.setdefault(panel_of[path], []).append(n[n > 0])
    result = ClusterRunResult()
    for panel, found in sizes.items():
        per_sample = np.concatenate(found)
        if not per_sample.size:
            continue
        cap = events_per_sample or max(1, max_events // len(per_sample))
        result.events_per_sample[panel] = int(min(cap, per_sample.min()))

    # Pass 2: each sample's events in a random order, the first n kept, pooled per panel.
    rng = np.random.default_rng(seed)
    drawn: dict[str, list[tuple[Path, np.ndarray]]] = {}
    for path in files:
        n = result.events_per_sample.get(panel_of[path])
        if n is None:
            continue
        codes = codes_of.pop(path)
        # each sample's rows (ascending), samples in category order, as a groupby gives them
        order = np.argsort(codes, kind="stable")
        starts = np.flatnonzero(np.diff(codes[order], prepend=-2))
        keep = [rng.permutation(idx)[:n] for idx in np.split(order, starts[1:])
                if idx.size and codes[idx[0]] >= 0]
        if keep:
            drawn.setdefault(panel_of[path], []).append((path, np.concatenate(keep)))
    paths_of = {panel: [path for path, _ in parts] for panel, parts in drawn.items()}

    counts, annotations, agreements = [], [], []
    pools = {panel: _pool(drawn.pop(panel)) for panel in list(drawn)}

    # The panels' SOMs train at once (the compiled loop releases the GIL), each in one
    # thread; a single panel's SOM shares its steps between two (flowsom's n_jobs). Each
    # model is seeded on its own, and threads never change codes, so the clusters are those
    # of one panel after another.
    som_jobs = 1 if len(pools) > 1 else -1

    def fit(pooled: ad.AnnData) -> None:
        flowsom(pooled, markers=markers, n_clusters=n_clusters, xdim=xdim, ydim=ydim,
                random_state=seed, key_added=KEY, n_jobs=som_jobs)

    with ThreadPoolExecutor(max_workers=min(len(pools), usable_cores()) or 1) as pool:
        list(pool.map(fit, pools.values()))
    for panel, paths in paths_of.items():
        pooled = pools[panel]
        cross = None
        for path in paths:  # pass 3: map every event, write its labels beside the file
            per_sample: list[pd.DataFrame] = []
            crosses: list[pd.DataFrame] = []
            result.h5ad.append(write_parquet_chunks(
                _mapped(path, pooled, per_sample, crosses), run.labels_path(path),
                metadata=_labels_meta(path, pooled)))
            counts.append(_sample_counts(per_sample, panel))
            for here in crosses:
                cross = here if cross is None else cross.add(here, fill_value=0)
        agreement = agreement_table(cross) if cross is not None else None
        thresholds = marker_thresholds(pooled, pooled.uns[KEY]["params"]["markers"])
        table = annotate_clusters(pooled, KEY, thresholds=thresholds, agreement=agreement,
                                  population_key="population" if agreement is not None
                                  else None)
        for m, t in thresholds.items():
            table[f"threshold_{m}"] = t
        table.insert(0, "panel", panel)
        annotations.append(table)
        if agreement is not None:
            agreement.insert(0, "panel", panel)
            agreements.append(agreement)

    result.clusters = _with_metadata(pd.concat(counts, ignore_index=True), run)
    result.annotation = pd.concat(annotations, ignore_index=True)
    result.paths["clusters"] = write_parquet(
        result.clusters, run.clusters_path, schema=CLUSTERS,
        metadata={"n_clusters": n_clusters, "seed": seed, "xdim": xdim, "ydim": ydim,
                  "events_per_sample": result.events_per_sample})
    result.paths["annotation"] = write_csv(result.annotation, run.cluster_annotation_path,
                                           schema=ANNOTATION)
    if agreements:
        result.agreement = pd.concat(agreements, ignore_index=True)
        result.paths["agreement"] = write_csv(result.agreement, run.cluster_agreement_path,
                                              schema=AGREEMENT)
    return result


def _mapped(path: Path, pooled: ad.AnnData, per_sample: list[pd.DataFrame],
            crosses: list[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """A file's labels table a chunk of rows at a time (memory stays flat), each chunk's
    events per sample × cluster and cluster × deepest gate appended to ``per_sample`` and
    ``crosses`` as it is mapped."""
    for chunk in _chunks(path):
        flowsom_map(chunk, pooled, key=KEY)
        per_sample.append(cluster_abundance(chunk, KEY))
        if "population" in chunk.obs:
            crosses.append(pd.crosstab(chunk.obs[KEY], chunk.obs["population"].astype(str),
                                       dropna=False))
        yield _labels_table(chunk)


def _labels_table(adata: ad.AnnData) -> pd.DataFrame:
    """Each event's metacluster and SOM node (written beside its ``.h5ad``)."""
    return pd.DataFrame({"cell": adata.obs_names.astype(str),
                         KEY: adata.obs[KEY].astype(str).to_numpy(),
                         f"{KEY}_node": adata.obs[f"{KEY}_node"].to_numpy(np.int64)})


def _labels_meta(h5ad: Path, pooled: ad.AnnData) -> dict:
    """The labels file's metadata: its ``.h5ad``, the label column's categories and the
    model (as :func:`~immunoprofile.tl.flowsom_map` copies it)."""
    model = pooled.uns[KEY]
    return {"h5ad": h5ad.name, "categorical": [KEY],
            "categories": {KEY: [str(c) for c in pooled.obs[KEY].cat.categories]},
            "uns": {KEY: {"params": _plain(dict(model["params"])),
                          "codes": np.asarray(model["codes"], dtype=np.float64).tolist(),
                          "node_metacluster": np.asarray(model["node_metacluster"],
                                                         dtype=np.int64).tolist()}}}


def _plain(value):
    """JSON-ready copy of the model's parameters (numpy scalars and arrays as Python)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


#: The obs columns mapping reads: each event's sample and deepest gate.
_OBS_READ = ("sample_id", "population")
#: Rows of a timepoint file read at a time.
_CHUNK = 65_536


def _chunks(path: Path) -> Iterator[ad.AnnData]:
    """A timepoint file's ``X``, ``var``, ``uns`` and, of ``obs``, its names, samples and
    deepest gates, ``_CHUNK`` rows at a time. Mapping reads no layer and no gate column, and
    never a whole file."""
    with h5py.File(path, "r") as f:
        group, n = f["obs"], f["X"].shape[0]
        key = group.attrs["_index"]
        var, uns = read_elem(f["var"]), read_elem(f["uns"]) if "uns" in f else {}
        columns = {c: _column_reader(group[c]) for c in _OBS_READ if c in group}
        for a in range(0, max(n, 1), _CHUNK):  # an empty file still gives its columns
            b = min(n, a + _CHUNK)
            obs = pd.DataFrame({c: read(a, b) for c, read in columns.items()},
                               index=pd.Index(group[key].asstr()[a:b],
                                              name=None if key == "_index" else key))
            yield ad.AnnData(X=f["X"][a:b], obs=obs, var=var, uns=uns)


def _column_reader(node: h5py.Group | h5py.Dataset):
    """``read(a, b)``: an obs column's rows ``a:b`` (a categorical keeps every category, as
    anndata reads it)."""
    if node.attrs.get("encoding-type") == "categorical":
        categories = read_elem(node["categories"])
        ordered = bool(node.attrs.get("ordered", False))
        return lambda a, b: pd.Categorical.from_codes(node["codes"][a:b], categories=categories,
                                                      ordered=ordered)
    return lambda a, b: node[a:b]


def _pool(parts: list[tuple[Path, np.ndarray]]) -> ad.AnnData:
    """One panel's training pool: of each file the given rows in the given order, files in
    order. Fitting, thresholds and annotation read ``X`` (with ``var`` and ``uns``) and
    nothing else, so the pool holds only that, filled in place a chunk of rows at a time; its
    names are row numbers in an Arrow string index (~8 bytes an event; the files' names as
    Python strings cost ~75, and pooling them through ``anndata.concat`` held every value
    twice). Markers are those every file has, in the first file's order (as
    ``anndata.concat``'s inner join)."""
    with h5py.File(parts[0][0], "r") as f:
        var, uns = read_elem(f["var"]), read_elem(f["uns"]) if "uns" in f else {}
    markers, dtypes = [], []
    for path, _ in parts:
        with h5py.File(path, "r") as f:
            markers.append(pd.Index(read_elem(f["var"]).index))
            dtypes.append(f["X"].dtype)
    names = var.index
    for found in markers:
        names = names.intersection(found, sort=False)
    dtype = np.result_type(*dtypes)  # float32 files pool as float32, a float64 one widens all
    X = np.empty((sum(len(rows) for _, rows in parts), len(names)), dtype)
    start = 0
    for (path, rows), found in zip(parts, markers):
        # read in ascending row order, a chunk at a time; each value to its place in `rows`
        order = np.argsort(rows, kind="stable")
        ascending = rows[order]
        cols = found.get_indexer(names)
        with h5py.File(path, "r") as f:
            stored = f["X"]
            for a in range(0, stored.shape[0], _CHUNK):
                lo, hi = np.searchsorted(ascending, [a, a + _CHUNK])
                if lo < hi:
                    values = stored[a:min(a + _CHUNK, stored.shape[0])][ascending[lo:hi] - a]
                    X[start + order[lo:hi]] = values[:, cols]
        start += len(rows)
    index = pd.Index(pd.array(pa.array(np.arange(len(X))).cast(pa.string()),
                              dtype="string[pyarrow]"))
    return ad.AnnData(X=X, obs=pd.DataFrame(index=index), var=var.loc[names], uns=uns)


def _sample_counts(parts: list[pd.DataFrame], panel: str) -> pd.DataFrame:
    """One file's events per sample × cluster from its chunks' (:func:`cluster_abundance`
    tables): samples sorted, clusters in order, as one table of the whole file."""
    long = pd.concat(parts, ignore_index=True)
    long = long.groupby(["sample_id", "cluster"], sort=False, as_index=False)["count"].sum()
    long = long.iloc[np.argsort(long["sample_id"].to_numpy(str), kind="stable")]
    long = long.reset_index(drop=True)
    long["count"] = long["count"].astype(np.int64)
    long["parent_count"] = long["sample_id"].map(
        long.groupby("sample_id", sort=False)["count"].sum()).astype(np.int64)
    long["pct"] = 100 * long["count"] / long["parent_count"].replace(0, np.nan)
    long.insert(1, "panel", panel)
    return long


def _with_metadata(counts: pd.DataFrame, run: Run) -> pd.DataFrame:
    meta = run.samples()
    meta = meta.assign(sample_id=meta["sample_id"].astype(str))
    meta = meta.drop(columns=[c for c in ("panel",) if c in meta.columns])
    out = counts.merge(meta, on="sample_id", how="left", validate="many_to_one")
    first = ["sample_id", "panel", "cluster", "count", "parent_count", "pct"]
    return out[first + [c for c in out.columns if c not in first]]
