"""Cluster and embedding plots: UMAP, median-expression heatmap, abundances, marker ridges.

What an immunologist expects from CATALYST: a UMAP coloured by marker, cluster, arm or
visit; clusters × markers medians scaled 0–1 per marker with cluster sizes beside them; stacked
cluster percentages per sample grouped by arm and visit; marker densities per cluster.
Categories keep scanpy's colours (``uns['<key>_colors']`` when present, else scanpy's default
palettes), so a cluster has the same colour in every plot. Figures are built on an Agg canvas
without ``pyplot`` (see :mod:`immunoprofile.pl._gating`); ``save=`` writes a PNG atomically
and the figure is returned either way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from immunoprofile.errors import ImmunoprofileError
from immunoprofile.pl._figures import save_png
from immunoprofile.tl import cluster_abundance, fluorescence_markers


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _done(fig: Figure, save: str | Path | None, dpi: int) -> Figure:
    if save is not None:
        save_png(fig, Path(save), dpi)
    return fig


def category_colors(adata: AnnData | None, key: str, categories: Sequence[str]) -> list[str]:
    """Colours of an obs column's categories: ``uns['<key>_colors']`` or scanpy's palettes."""
    stored = adata.uns.get(f"{key}_colors") if adata is not None else None
    if stored is not None and len(stored) >= len(categories):
        return [to_hex(c) for c in list(stored)[: len(categories)]]
    # start-up time: a heavy library, loaded on first use
    from scanpy.plotting import palettes

    n = len(categories)
    palette = (palettes.default_20 if n <= 20 else palettes.default_28 if n <= 28
               else palettes.default_102)
    return [to_hex(palette[i % len(palette)]) for i in range(n)]


def _categories(values: pd.Series) -> list[str]:
    if isinstance(values.dtype, pd.CategoricalDtype):
        return [str(c) for c in values.cat.categories]
    # Natural order, so that cluster "10" comes after "9".
    return sorted(map(str, values.dropna().unique()),
                  key=lambda t: (0, int(t), "") if t.isdigit() else (1, 0, t))


def _clustered(adata: AnnData, key: str, markers: Sequence[str] | None) -> list[str]:
    """Check the cluster column; default markers: the FlowSOM model's, else fluorescence."""
    if key not in adata.obs:
        raise ImmunoprofileError(f"obs has no {key!r}: cluster first (ip.tl.flowsom)")
    if markers is not None:
        return list(markers)
    model = adata.uns.get(key)
    if isinstance(model, dict) and "params" in model:
        return list(map(str, model["params"]["markers"]))
    return fluorescence_markers(adata)


def _values(adata: AnnData, markers: Sequence[str], layer: str | None) -> np.ndarray:
    sub = adata[:, list(markers)]
    return np.asarray(sub.layers[layer] if layer else sub.X, dtype=float)


def umap(
    adata: AnnData,
    color: str | Sequence[str] | None = None,
    *,
    basis: str = "X_umap",
    layer: str | None = None,
    max_events: int = 50_000,
    random_state: int = 0,
    ncols: int = 3,
    point_size: float | None = None,
    cmap: str = "viridis",
    save: str | Path | None = None,
    dpi: int = 110,
    seed: int | None = None,
) -> Figure:
    """The embedding coloured by markers (values of ``X`` or ``layer``) or obs columns.

    Parameters
    ----------
    adata
        Events with ``obsm[basis]`` (:func:`immunoprofile.tl.umap`).
    color
        Markers and/or obs columns (cluster, arm, timepoint, …); one panel each. Default: the
        FlowSOM clusters when present, else no colour.
    basis
        The ``obsm`` key of the 2-D coordinates.
    layer
        Take marker values from this layer instead of ``X``.
    max_events
        At most this many events drawn (a seeded subsample), in random order so that no
        category is painted over the others.
    random_state
        Seed of the subsample and drawing order.
    ncols
        Panels per row.
    point_size
        Marker area (default shrinks with the number of events).
    cmap
        Colour map of continuous values (clipped to their 1st–99th percentiles).
    save, dpi
        Write a PNG here (atomically) at this resolution.
    seed
        Former name of ``random_state`` (kept as an alias).

    Returns
    -------
    matplotlib.figure.Figure
        The figure (also when saved).
    """
    seed = random_state if seed is None else seed
    if basis not in adata.obsm:
        raise ImmunoprofileError(f"obsm has no {basis!r}: run ip.tl.umap(adata) first")
    if color is None:
        color = ["flowsom"] if "flowsom" in adata.obs else [None]
    colors = [color] if isinstance(color, str) else list(color)
    for c in colors:
        if c is not None and c not in adata.obs and c not in adata.var_names:
            raise ImmunoprofileError(f"{c!r} is neither an obs column nor a marker "
                                     f"({', '.join(map(str, adata.var_names))})")
    rng = np.random.default_rng(seed)
    order = rng.permutation(adata.n_obs)[: max_events]
    xy = np.asarray(adata.obsm[basis])[order, :2]
    size = point_size or max(0.5, min(20.0, 12_000 / max(len(order), 1)))
    ncols = max(1, min(ncols, len(colors)))
    nrows = math.ceil(len(colors) / ncols)
    fig = _figure(4.6 * ncols, 3.9 * nrows)
    for i, c in enumerate(colors):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"{basis.removeprefix('X_').upper()}1")
        ax.set_ylabel(f"{basis.removeprefix('X_').upper()}2")
        if c is None:
            ax.scatter(xy[:, 0], xy[:, 1], s=size, c="0.4", linewidths=0, rasterized=True)
            continue
        ax.set_title(str(c))
        if c in adata.obs and not pd.api.types.is_numeric_dtype(adata.obs[c]):
            _categorical(fig, ax, adata, c, order, xy, size)
        else:
            values = (adata.obs[c].to_numpy(float) if c in adata.obs else
                      _values(adata, [c], layer).ravel())[order]
            lo, hi = np.nanquantile(values, [0.01, 0.99])
            draw = np.argsort(values, kind="stable")  # bright events on top
            points = ax.scatter(xy[draw, 0], xy[draw, 1], s=size, c=values[draw], cmap=cmap,
                                vmin=lo, vmax=hi, linewidths=0, rasterized=True)
            fig.colorbar(points, ax=ax, fraction=0.046, pad=0.02)
    fig.tight_layout()
    return _done(fig, save, dpi)


def _categorical(fig: Figure, ax, adata: AnnData, key: str, order: np.ndarray,
                 xy: np.ndarray, size: float) -> None:
    values = adata.obs[key]
    cats = _categories(values)
    colours = dict(zip(cats, category_colors(adata, key, cats)))
    labels = values.astype(str).to_numpy()[order]
    ax.scatter(xy[:, 0], xy[:, 1], s=size, linewidths=0, rasterized=True,
               c=[colours.get(v, "#bbbbbb") for v in labels])
    present = [c for c in cats if (labels == c).any()]
    if len(present) > 12:  # many clusters: label them on the map instead of a long legend
        for cat in present:
            cx, cy = np.median(xy[labels == cat], axis=0)
            ax.text(cx, cy, cat, ha="center", va="center", fontsize=8, weight="bold")
    else:
        ax.legend(handles=[Patch(color=colours[c], label=c) for c in present],
                  loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8)


def cluster_heatmap(
    adata: AnnData,
    *,
    cluster_key: str = "flowsom",
    markers: Sequence[str] | None = None,
    layer: str | None = None,
    annotation: pd.DataFrame | None = None,
    order: str = "hierarchical",
    cmap: str = "RdYlBu_r",
    save: str | Path | None = None,
    dpi: int = 110,
) -> Figure:
    """Median expression of every marker in every cluster, scaled 0–1 per marker.

    As CATALYST draws it: rows are clusters (ordered by hierarchical clustering of their
    medians, or by name), columns markers; each marker's cluster medians are rescaled to 0–1
    (lowest to highest cluster) and the raw median is written in the cell; a bar on the right
    gives each cluster's size (events and %).

    Parameters
    ----------
    adata
        Clustered events.
    cluster_key
        The ``obs`` column with the clusters.
    markers
        Columns (default: the markers the FlowSOM model used, else the fluorescence markers).
    layer
        Take values from this layer instead of ``X``.
    annotation
        A table with ``cluster`` and ``population`` (e.g. :func:`immunoprofile.tl.
        annotate_clusters`): rows are labelled ``"<cluster> <population>"``.
    order
        ``"hierarchical"`` or ``"cluster"`` (by name).
    cmap
        Colour map of the scaled medians.
    save, dpi
        Write a PNG here (atomically) at this resolution.
    """
    markers = _clustered(adata, cluster_key, markers)
    frame = pd.DataFrame(_values(adata, markers, layer), columns=markers)
    frame["cluster"] = adata.obs[cluster_key].astype(str).to_numpy()
    cats = [c for c in _categories(adata.obs[cluster_key]) if (frame["cluster"] == c).any()]
    medians = frame.groupby("cluster").median().reindex(cats)
    sizes = frame["cluster"].value_counts().reindex(cats)
    span = (medians.max() - medians.min()).replace(0, np.nan)
    scaled = ((medians - medians.min()) / span).fillna(0.0)
    if order == "hierarchical" and len(cats) > 2:
        # start-up time: a heavy library, loaded on first use
        from scipy.cluster.hierarchy import leaves_list, linkage

        rows = [cats[i] for i in leaves_list(linkage(scaled.to_numpy(), "average"))]
    elif order in ("hierarchical", "cluster"):
        rows = cats
    else:
        raise ImmunoprofileError(f"order must be 'hierarchical' or 'cluster', not {order!r}")
    scaled, medians, sizes = scaled.loc[rows], medians.loc[rows], sizes.loc[rows]
    names = dict(zip(annotation["cluster"].astype(str), annotation["population"].fillna("")
                     .astype(str))) if annotation is not None else {}
    labels = [f"{c} {names.get(c, '')}".strip() for c in rows]

    fig = _figure(2.2 + 0.62 * len(markers) + 2.2, 1.2 + 0.3 * len(rows))
    grid = fig.add_gridspec(1, 3, width_ratios=[len(markers), 2.6, 0.25], wspace=0.05)
    ax = fig.add_subplot(grid[0])
    image = ax.imshow(scaled.to_numpy(), aspect="auto", cmap=cmap, vmin=0, vmax=1,
                      interpolation="nearest")
    ax.set_xticks(range(len(markers)), labels=list(markers), rotation=60, ha="right")
    ax.set_yticks(range(len(rows)), labels=labels, fontsize=8)
    for (i, j), v in np.ndenumerate(medians.to_numpy()):
        ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=6,
                color="black" if 0.2 < scaled.iloc[i, j] < 0.8 else "white")
    ax.set_title(f"median expression per {cluster_key} cluster (scaled 0–1 per marker)",
                 fontsize=9, loc="left")
    bars = fig.add_subplot(grid[1], sharey=ax)
    share = 100 * sizes.to_numpy() / max(int(sizes.sum()), 1)
    bars.barh(range(len(rows)), share, color="0.6")
    for i, (n, pct) in enumerate(zip(sizes.to_numpy(), share)):
        bars.text(pct, i, f" {n:,} ({pct:.1f}%)", va="center", fontsize=7)
    bars.set_xlim(0, max(share.max() * 1.9, 1))
    bars.set_xlabel("% of events")
    bars.tick_params(labelleft=False)
    for side in ("top", "right"):
        bars.spines[side].set_visible(False)
    fig.colorbar(image, cax=fig.add_subplot(grid[2]), label="scaled median")
    width, height = fig.get_size_inches()
    # Margins in inches (marker names below, cluster labels left), whatever the row count.
    fig.subplots_adjust(left=min(0.45, 1.9 / width), right=1 - 0.7 / width,
                        bottom=0.75 / height, top=1 - 0.4 / height)
    return _done(fig, save, dpi)


def _abundance_table(data: AnnData | pd.DataFrame, cluster_key: str, sample_key: str,
                     group_by: Sequence[str], panel: str | None) -> pd.DataFrame:
    if isinstance(data, AnnData):
        _clustered(data, cluster_key, [])
        return cluster_abundance(data, cluster_key, sample_key=sample_key, metadata=group_by)
    table = data
    if "panel" in table and panel is not None:
        table = table[table["panel"].astype(str) == panel]
    elif "panel" in table and table["panel"].astype(str).nunique() > 1:
        raise ImmunoprofileError("the clusters table holds several panels: choose one "
                                 "(panel=)")
    missing = [c for c in (sample_key, "cluster", "pct", *group_by) if c not in table]
    if missing:
        raise ImmunoprofileError(f"the clusters table lacks columns {missing}")
    return table


def abundance_bars(
    data: AnnData | pd.DataFrame,
    *,
    cluster_key: str = "flowsom",
    group_by: Sequence[str] = ("arm", "timepoint"),
    sample_key: str = "sample_id",
    panel: str | None = None,
    save: str | Path | None = None,
    dpi: int = 110,
) -> Figure:
    """Stacked cluster percentages per sample, samples grouped by arm and visit.

    Parameters
    ----------
    data
        Clustered events (counted here), or the ``clusters.parquet`` table of
        ``immunoprofile cluster`` (its ``pct`` column).
    cluster_key
        The ``obs`` column with the clusters (AnnData input).
    group_by
        Sample columns defining the groups; one panel per group, in category order.
    sample_key
        The sample column.
    panel
        Which panel of a several-panel clusters table.
    save, dpi
        Write a PNG here (atomically) at this resolution.
    """
    group_by = list(group_by)
    table = _abundance_table(data, cluster_key, sample_key, group_by, panel)
    cats = _categories(table["cluster"].astype(str) if not isinstance(
        table["cluster"].dtype, pd.CategoricalDtype) else table["cluster"])
    adata = data if isinstance(data, AnnData) else None
    colours = dict(zip(cats, category_colors(adata, cluster_key, cats)))
    wide = table.pivot_table(index=sample_key, columns=table["cluster"].astype(str),
                             values="pct", aggfunc="first", observed=False).reindex(
                                 columns=cats).fillna(0.0)
    meta = table.drop_duplicates(sample_key).set_index(sample_key)[group_by]
    groups = meta.groupby(group_by, observed=True, sort=True).groups if group_by else {
        "all": meta.index}
    keys = list(groups)
    fig = _figure(2.5 + 0.32 * len(wide) + 0.4 * len(keys), 4.6)
    grid = fig.add_gridspec(1, len(keys), width_ratios=[len(groups[k]) for k in keys],
                            wspace=0.08)
    first = None
    for i, key in enumerate(keys):
        ax = fig.add_subplot(grid[i], sharey=first)
        first = first or ax
        samples = sorted(map(str, groups[key]))
        bottom = np.zeros(len(samples))
        for cat in cats:
            heights = wide.loc[samples, cat].to_numpy()
            ax.bar(range(len(samples)), heights, bottom=bottom, color=colours[cat], width=0.85,
                   label=cat)
            bottom += heights
        ax.set_xticks(range(len(samples)), labels=samples, rotation=90, fontsize=7)
        ax.set_title(" ".join(map(str, key if isinstance(key, tuple) else (key,))),
                     fontsize=8)
        ax.set_ylim(0, 100)
        if i:
            ax.tick_params(labelleft=False)
        else:
            ax.set_ylabel(f"% of events per sample ({cluster_key})")
    fig.legend(handles=[Patch(color=colours[c], label=c) for c in cats], loc="center right",
               frameon=False, fontsize=7, ncols=1 + len(cats) // 25, title=cluster_key)
    fig.subplots_adjust(left=0.08, right=0.84, bottom=0.3, top=0.9)
    return _done(fig, save, dpi)


def ridges(
    adata: AnnData,
    *,
    cluster_key: str = "flowsom",
    markers: Sequence[str] | None = None,
    layer: str | None = None,
    bins: int = 100,
    save: str | Path | None = None,
    dpi: int = 110,
) -> Figure:
    """Density of each marker in each cluster, stacked as ridges (one column per marker).

    Each ridge is the cluster's histogram smoothed and scaled to its own peak, so a small
    cluster is as readable as a large one; the x range is the marker's 0.05–99.95 percentile
    over all events (a population of 1% of the events stays inside it).

    Parameters
    ----------
    adata
        Clustered events.
    cluster_key
        The ``obs`` column with the clusters (empty clusters are left out).
    markers
        Columns (default: the markers the FlowSOM model used, else the fluorescence markers).
    layer
        Take values from this layer instead of ``X``.
    bins
        Histogram bins per marker.
    save, dpi
        Write a PNG here (atomically) at this resolution.
    """
    # start-up time: a heavy library, loaded on first use
    from scipy.ndimage import gaussian_filter1d

    markers = _clustered(adata, cluster_key, markers)
    labels = adata.obs[cluster_key].astype(str).to_numpy()
    all_cats = _categories(adata.obs[cluster_key])
    colours = dict(zip(all_cats, category_colors(adata, cluster_key, all_cats)))
    cats = [c for c in all_cats if (labels == c).any()]
    values = _values(adata, markers, layer)
    fig = _figure(1.2 + 1.7 * len(markers), 0.8 + 0.3 * len(cats))
    for j, marker in enumerate(markers):
        ax = fig.add_subplot(1, len(markers), j + 1)
        lo, hi = np.nanquantile(values[:, j], [0.0005, 0.9995])
        edges = np.linspace(lo, hi, bins + 1)
        centres = (edges[:-1] + edges[1:]) / 2
        for k, cat in enumerate(reversed(cats)):
            hist, _ = np.histogram(values[labels == cat, j], bins=edges)
            density = gaussian_filter1d(hist.astype(float), 1.5)
            density = 1.6 * density / density.max() if density.max() > 0 else density
            ax.fill_between(centres, k, k + density, color=colours[cat], alpha=0.85,
                            linewidth=0.4, edgecolor="0.2", zorder=len(cats) - k)
        ax.set_title(str(marker), fontsize=9)
        ax.set_ylim(0, len(cats) + 1)
        ax.set_yticks(np.arange(len(cats)) + 0.3,
                      labels=list(reversed(cats)) if j == 0 else [], fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
    fig.supylabel(cluster_key, fontsize=9)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.1, top=0.93, wspace=0.08)
    return _done(fig, save, dpi)
