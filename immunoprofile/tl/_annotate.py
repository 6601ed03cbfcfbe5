"""Naming clusters: by the gated population they mostly hold and by a marker rule.

- :func:`cluster_agreement`: clusters × gated populations (the ``population`` label, the
  deepest gate each event reached), counts and both fractions, long format.
- :func:`marker_thresholds`: one positive/negative threshold per marker: the valley between
  the two main peaks of the marker's (log) density, or, with a single peak, where its bright
  flank falls to a tenth.
- :func:`annotate_clusters`: per cluster its size, dominant population, median of every marker
  and a phenotype such as ``CD3+ CD4+ CD25+ CD127- FOXP3+``: ``+`` when the cluster median is
  above the marker's threshold, ``-`` otherwise.
- :func:`cluster_f1`: FlowCAP-style agreement of clusters with any labelling (gates or truth).
- :func:`cluster_abundance`: events per sample × cluster (what ``clusters.parquet`` holds).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from immunoprofile.errors import ImmunoprofileError
from immunoprofile.tl._flowsom import marker_matrix

_BINS = 256
_SMOOTH = 2.0  # Gaussian smoothing of the histogram, in bins
_PROMINENCE = 0.3  # decades of log density a dip must reach to separate two peaks (2x)
_FALL = 1.0  # lone peak: the threshold is where its bright flank falls a decade (to 10%)


def marker_thresholds(adata: AnnData, markers: Sequence[str] | None = None) -> pd.Series:
    """Positive/negative threshold per marker, in the units of ``X``.

    On the smoothed log density of the marker's values (log, so that a population of 1% of
    the events still makes a visible peak): when there are two peaks or more separated by a
    dip of at least a factor 2, the threshold is the lowest point between the two most
    prominent (the bimodal valley). With a single peak (positives too few or too smeared to
    make one, such as CD25 on Treg and activated T cells), the peak is taken as the negative
    population and the threshold is where its bright flank has fallen to a tenth of its height.

    Parameters
    ----------
    adata
        Events × markers (transformed values in ``X``).
    markers
        Markers to threshold (default: the fluorescence markers, see
        :func:`fluorescence_markers`).

    Returns
    -------
    pandas.Series
        Threshold per marker (index ``marker``, name ``threshold``).

    Raises
    ------
    ImmunoprofileError
        A marker is not in ``var_names`` or has missing values.
    """
    markers, X = marker_matrix(adata, markers)
    return pd.Series([_threshold(col) for col in X.T], index=pd.Index(markers, name="marker"),
                     name="threshold")


def _threshold(values: np.ndarray) -> float:
    # start-up time: a heavy library, loaded on first use
    from scipy.ndimage import gaussian_filter1d
    from scipy.signal import find_peaks

    # The top 0.01% is dropped (outliers would stretch the bins), not the top 0.1%: rare
    # positives such as CD138+ plasma cells are ~0.2% of lymphocytes.
    lo, hi = np.quantile(values, [0.0005, 0.9999])
    if not hi > lo:
        return float(hi)
    hist, edges = np.histogram(values, bins=_BINS, range=(lo, hi))
    log_density = np.log10(gaussian_filter1d(hist.astype(float), _SMOOTH) + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    # Zero padding lets a peak in the first or last bin count.
    peaks, props = find_peaks(np.r_[0.0, log_density, 0.0], prominence=_PROMINENCE)
    peaks = peaks - 1
    if len(peaks) >= 2:
        a, b = sorted(peaks[np.argsort(props["prominences"])[-2:]])
        return float(centres[a + int(np.argmin(log_density[a:b + 1]))])
    top = int(np.argmax(log_density))
    fallen = np.flatnonzero(log_density[top:] <= log_density[top] - _FALL)
    return float(centres[top + fallen[0]] if fallen.size else centres[-1])


def cluster_agreement(adata: AnnData, cluster_key: str = "flowsom", *,
                      population_key: str = "population") -> pd.DataFrame:
    """Clusters × populations: ``cluster, population, count, frac_of_cluster,
    frac_of_population`` (one row per pair, zeros included).

    Parameters
    ----------
    adata
        Clustered events.
    cluster_key
        ``obs`` column of the clusters.
    population_key
        ``obs`` column of the gated populations.

    Returns
    -------
    pandas.DataFrame
        The long table of :func:`agreement_table`.

    Raises
    ------
    ImmunoprofileError
        A key is not an ``obs`` column.
    """
    _need_obs(adata, cluster_key, population_key)
    counts = pd.crosstab(adata.obs[cluster_key], adata.obs[population_key], dropna=False)
    return agreement_table(counts)


def agreement_table(counts: pd.DataFrame) -> pd.DataFrame:
    """Long agreement table from a clusters × populations count matrix.

    Parameters
    ----------
    counts
        Event counts, clusters as rows and populations as columns (e.g. ``pd.crosstab``).

    Returns
    -------
    pandas.DataFrame
        ``cluster, population, count, frac_of_cluster, frac_of_population`` (names as str;
        fractions NaN for an empty cluster or population).
    """
    counts = counts.astype(np.int64)
    counts.index = counts.index.astype(str)
    counts.columns = counts.columns.astype(str)
    by_cluster = counts.sum(axis=1).replace(0, np.nan)
    by_pop = counts.sum(axis=0).replace(0, np.nan)
    long = pd.DataFrame({
        "cluster": np.repeat(counts.index.to_numpy(), counts.shape[1]),
        "population": np.tile(counts.columns.to_numpy(), counts.shape[0]),
        "count": counts.to_numpy().ravel(),
    })
    long["frac_of_cluster"] = long["count"] / long["cluster"].map(by_cluster)
    long["frac_of_population"] = long["count"] / long["population"].map(by_pop)
    return long


def cluster_abundance(adata: AnnData, cluster_key: str = "flowsom", *,
                      sample_key: str = "sample_id",
                      metadata: Sequence[str] = ()) -> pd.DataFrame:
    """Events per sample × cluster, long, zeros included: ``<sample_key>, cluster, count,
    parent_count`` (the sample's events) ``, pct`` and the ``metadata`` obs columns.

    Parameters
    ----------
    adata
        Clustered events.
    cluster_key
        ``obs`` column of the clusters.
    sample_key
        ``obs`` column naming each event's sample (values compared as str).
    metadata
        Further ``obs`` columns copied per sample (from its first event), e.g. ``arm``,
        ``timepoint``.

    Returns
    -------
    pandas.DataFrame
        One row per sample × cluster; ``pct`` is ``100 * count / parent_count``.

    Raises
    ------
    ImmunoprofileError
        A key or metadata column is not an ``obs`` column.
    """
    _need_obs(adata, cluster_key, sample_key, *metadata)
    table = pd.crosstab(adata.obs[sample_key].astype(str), adata.obs[cluster_key],
                        dropna=False)
    long = pd.DataFrame({
        sample_key: np.repeat(table.index.to_numpy(), table.shape[1]),
        "cluster": np.tile(table.columns.astype(str).to_numpy(), table.shape[0]),
        "count": table.to_numpy(np.int64).ravel(),
    })
    long["parent_count"] = long[sample_key].map(table.sum(axis=1)).astype(np.int64)
    long["pct"] = 100 * long["count"] / long["parent_count"].replace(0, np.nan)
    if metadata:
        meta = adata.obs[[sample_key, *metadata]].drop_duplicates(sample_key)
        long = long.merge(meta.assign(**{sample_key: meta[sample_key].astype(str)}),
                          on=sample_key, how="left")
    return long


def annotate_clusters(
    adata: AnnData,
    cluster_key: str = "flowsom",
    *,
    markers: Sequence[str] | None = None,
    population_key: str | None = "population",
    thresholds: pd.Series | None = None,
    agreement: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per cluster: ``cluster, n_events, pct_events, population,
    population_fraction, phenotype, median_<marker>…``.

    Parameters
    ----------
    adata
        Clustered events.
    cluster_key
        The ``obs`` column holding the clusters.
    markers
        Markers of the phenotype and medians (default: the FlowSOM model's markers when
        ``uns[cluster_key]`` holds one, else the fluorescence markers).
    population_key
        The gated label per event (``None``: no dominant population columns).
    thresholds
        Per-marker thresholds (default: :func:`marker_thresholds` of ``adata``).
    agreement
        A :func:`cluster_agreement` table to take the dominant population from (e.g. counted
        over more events than ``adata`` holds); default: counted on ``adata``.
    """
    _need_obs(adata, cluster_key)
    if markers is None and isinstance(adata.uns.get(cluster_key), dict):
        markers = adata.uns[cluster_key].get("params", {}).get("markers")
    markers, X = marker_matrix(adata, markers)
    if thresholds is None:
        thresholds = marker_thresholds(adata, markers)
    clusters = adata.obs[cluster_key]
    categories = [str(c) for c in clusters.cat.categories] if isinstance(
        clusters.dtype, pd.CategoricalDtype) else sorted(map(str, clusters.unique()))
    frame = pd.DataFrame(X, columns=markers)
    frame["cluster"] = clusters.astype(str).to_numpy()
    medians = frame.groupby("cluster").median().reindex(categories)
    sizes = frame["cluster"].value_counts().reindex(categories, fill_value=0)
    table = pd.DataFrame({"cluster": categories, "n_events": sizes.to_numpy(np.int64)})
    table["pct_events"] = 100 * table["n_events"] / max(int(sizes.sum()), 1)
    if population_key is not None:
        if agreement is None:
            agreement = cluster_agreement(adata, cluster_key, population_key=population_key)
        top = (agreement.sort_values(["cluster", "count"], ascending=[True, False])
               .drop_duplicates("cluster").set_index("cluster"))
        table["population"] = table["cluster"].map(top["population"]).where(
            table["cluster"].map(top["count"]).fillna(0) > 0, "")
        table["population_fraction"] = table["cluster"].map(top["frac_of_cluster"])
    table["phenotype"] = [_phenotype(medians.loc[c], thresholds) for c in categories]
    for m in markers:
        table[f"median_{m}"] = medians[m].to_numpy()
    return table


def _phenotype(medians: pd.Series, thresholds: pd.Series) -> str:
    if medians.isna().all():
        return ""
    return " ".join(f"{m}{'+' if medians[m] > thresholds[m] else '-'}" for m in medians.index)


def cluster_f1(truth: Sequence | pd.Series, clusters: Sequence | pd.Series, *,
               classes: Sequence[str] | None = None) -> pd.DataFrame:
    """FlowCAP-style F1 of a clustering against a reference labelling.

    Every cluster is assigned to the reference class that holds most of its events; each class
    is then matched to the union of its clusters, and precision, recall and F1 are computed
    per class (a class no cluster is assigned to has F1 0).

    Parameters
    ----------
    truth
        Reference label per event (true labels, or gated populations).
    clusters
        Cluster per event.
    classes
        Classes to report (default: all reference classes).

    Returns
    -------
    pandas.DataFrame
        ``class, n_true, n_predicted, precision, recall, f1, clusters`` (the clusters
        assigned, ``;``-joined).
    """
    truth = pd.Series(np.asarray(truth, dtype=object)).astype(str)
    clusters = pd.Series(np.asarray(clusters, dtype=object)).astype(str)
    if len(truth) != len(clusters):
        raise ImmunoprofileError(f"{len(truth)} labels but {len(clusters)} cluster labels")
    table = pd.crosstab(truth.to_numpy(), clusters.to_numpy())
    assigned = table.idxmax(axis=0)
    rows = []
    for cls in classes if classes is not None else list(table.index):
        mine = list(assigned.index[assigned == cls])
        n_true = int(table.loc[cls].sum()) if cls in table.index else 0
        n_pred = int(table[mine].to_numpy().sum()) if mine else 0
        tp = int(table.loc[cls, mine].sum()) if mine and cls in table.index else 0
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_true if n_true else 0.0
        f1 = 2 * tp / (n_true + n_pred) if n_true + n_pred else 0.0
        rows.append({"class": cls, "n_true": n_true, "n_predicted": n_pred,
                     "precision": precision, "recall": recall, "f1": f1,
                     "clusters": ";".join(sorted(mine, key=_natural))})
    return pd.DataFrame(rows)


def _natural(text: str) -> tuple:
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


def _need_obs(adata: AnnData, *keys: str) -> None:
    missing = [k for k in keys if k not in adata.obs.columns]
    if missing:
        raise ImmunoprofileError(f"obs has no column(s) {missing}: cluster first "
                                 "(ip.tl.flowsom / ip.tl.leiden)")
