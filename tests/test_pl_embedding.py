"""Cluster plots on the clustered simulated cohort of ``test_cluster`` (real files, no mocks)."""

from __future__ import annotations

import anndata as ad
import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from test_cluster import clustered_run, read

import immunoprofile as ip
import immunoprofile.pl
from immunoprofile.errors import ImmunoprofileError


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory):
    return clustered_run(tmp_path_factory)[1]


@pytest.fixture(scope="module")
def treg(run_dir) -> ad.AnnData:
    """Both visits of the Treg tube, clustered by the run."""
    return ad.concat([read(run_dir / "anndata" / f"{tp}_treg.h5ad") for tp in ("W0", "W12")],
                     uns_merge="first")


@pytest.fixture(scope="module")
def embedded(treg) -> ad.AnnData:
    pick = np.sort(np.random.default_rng(0).choice(treg.n_obs, 2000, replace=False))
    adata = treg[pick].copy()
    ip.tl.umap(adata)
    return adata


def _png(path) -> np.ndarray:
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100
    return image


def test_umap_by_cluster_marker_arm_and_visit(embedded, tmp_path):
    colors = ["flowsom", "CD25", "arm", "timepoint"]
    fig = ip.pl.umap(embedded, color=colors, save=tmp_path / "umap.png")
    assert isinstance(fig, Figure)
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in titled] == colors
    # The marker panel has a colour bar; the categorical panels have no extra axes.
    assert len(fig.axes) == len(colors) + 1
    for ax in titled:
        assert ax.collections[0].get_offsets().shape[0] == embedded.n_obs
    arm = titled[2]
    assert {t.get_text() for t in arm.get_legend().get_texts()} == set(
        embedded.obs["arm"].astype(str))
    _png(tmp_path / "umap.png")


def test_umap_errors(embedded, treg):
    with pytest.raises(ImmunoprofileError, match="neither an obs column nor a marker"):
        ip.pl.umap(embedded, color="CD999")
    with pytest.raises(ImmunoprofileError, match=r"run ip\.tl\.umap"):
        ip.pl.umap(treg, color="flowsom")


def test_cluster_heatmap(treg, run_dir, tmp_path):
    annotation = pd.read_csv(run_dir / "cluster_annotation.csv", dtype={"cluster": str})
    annotation = annotation[annotation["panel"] == "treg"]
    fig = ip.pl.cluster_heatmap(treg, annotation=annotation, save=tmp_path / "heat.png")
    heat = fig.axes[0]
    present = treg.obs["flowsom"].astype(str).unique()
    image = heat.images[0].get_array()
    assert image.shape == (len(present), 6)
    # Scaled 0-1 per marker: every marker column spans the full range.
    assert np.allclose(image.min(axis=0), 0) and np.allclose(image.max(axis=0), 1)
    labels = [t.get_text() for t in heat.get_yticklabels()]
    assert any(label.endswith("Treg") for label in labels)
    assert [t.get_text() for t in heat.get_xticklabels()] == list(
        treg.uns["flowsom"]["params"]["markers"])
    sizes = fig.axes[1]  # cluster sizes beside the rows
    assert sum(p.get_width() for p in sizes.patches) == pytest.approx(100)
    _png(tmp_path / "heat.png")


def test_abundance_bars_from_events_and_table(treg, run_dir, tmp_path):
    fig = ip.pl.abundance_bars(treg, save=tmp_path / "bars.png")
    groups = treg.obs[["arm", "timepoint"]].drop_duplicates()
    panels = [ax for ax in fig.axes if ax.patches]
    assert len(panels) == len(groups)
    # Stacked percentages reach 100 for every sample.
    for ax in panels:
        tops = {}
        for bar in ax.patches:
            x = round(bar.get_x(), 3)
            tops[x] = max(tops.get(x, 0), bar.get_y() + bar.get_height())
        assert np.allclose(list(tops.values()), 100)
    table = pd.read_parquet(run_dir / "clusters.parquet")
    fig2 = ip.pl.abundance_bars(table, panel="treg", group_by=["timepoint"])
    assert len([ax for ax in fig2.axes if ax.patches]) == 2
    with pytest.raises(ImmunoprofileError, match="several panels"):
        ip.pl.abundance_bars(table)
    _png(tmp_path / "bars.png")


def test_ridges(treg, tmp_path):
    fig = ip.pl.ridges(treg, markers=["CD4", "CD25", "FOXP3"], save=tmp_path / "ridges.png")
    assert [ax.get_title() for ax in fig.axes] == ["CD4", "CD25", "FOXP3"]
    n_present = treg.obs["flowsom"].nunique()
    assert len(fig.axes[0].collections) == n_present
    _png(tmp_path / "ridges.png")
