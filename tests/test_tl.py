"""Tools: FlowSOM, Leiden and UMAP on real assembled events; annotation helpers on known data.

Events come from the small simulated cohort that ``test_cluster`` builds once per session.
UMAP and Leiden run on a 2,500-event subsample to stay quick.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from test_cluster import clustered_run, read

import immunoprofile as ip
from immunoprofile.assemble import write_h5ad
from immunoprofile.errors import ImmunoprofileError

TREG_MARKERS = ["CD3", "CD4", "CD25", "CD127", "FOXP3", "CD45RA"]


@pytest.fixture(scope="module")
def treg(tmp_path_factory: pytest.TempPathFactory) -> ad.AnnData:
    """Week-0 Treg-tube events as assembled, without the run's clustering."""
    _, run_dir = clustered_run(tmp_path_factory)
    adata = read(run_dir / "anndata" / "W0_treg.h5ad")
    for key in ("flowsom", "flowsom_node"):
        del adata.obs[key]
    del adata.uns["flowsom"]
    return adata


@pytest.fixture(scope="module")
def small(treg) -> ad.AnnData:
    pick = np.sort(np.random.default_rng(0).choice(treg.n_obs, 2500, replace=False))
    return treg[pick].copy()


def test_default_markers_are_fluorescence(treg):
    markers = ip.tl.fluorescence_markers(treg)
    assert markers == [m for m in treg.var_names if m in TREG_MARKERS]
    assert not {"FSC-A", "SSC-A", "FSC-H", "viability"} & set(markers)


def test_flowsom_slots_and_model(treg, tmp_path):
    adata = treg.copy()
    assert ip.tl.flowsom(adata, n_clusters=12, seed=3) is None
    labels = adata.obs["flowsom"]
    assert isinstance(labels.dtype, pd.CategoricalDtype)
    assert list(labels.cat.categories) == [str(i) for i in range(12)]
    nodes = adata.obs["flowsom_node"].to_numpy()
    assert nodes.min() >= 0 and nodes.max() < ip.tl.SOM_GRID ** 2
    model = adata.uns["flowsom"]
    assert model["codes"].shape == (ip.tl.SOM_GRID ** 2, len(TREG_MARKERS))
    assert model["params"]["markers"] == ip.tl.fluorescence_markers(treg)
    # An event's metacluster is its node's metacluster.
    assert (labels.astype(int).to_numpy() == model["node_metacluster"][nodes]).all()
    # Same seed, same clusters; the model survives an h5ad round trip and maps the same.
    again = ip.tl.flowsom(treg, n_clusters=12, seed=3, copy=True)
    assert (again.obs["flowsom"] == labels).all()
    assert "flowsom" not in treg.obs  # copy=True left the input alone
    write_h5ad(adata, tmp_path / "model.h5ad")
    mapped = ip.tl.flowsom_map(treg, read(tmp_path / "model.h5ad"), copy=True)
    assert (mapped.obs["flowsom"] == labels).all()
    assert (mapped.obs["flowsom_node"] == adata.obs["flowsom_node"]).all()


def test_flowsom_map_under_another_key(treg, small):
    fitted = ip.tl.flowsom(treg, n_clusters=8, seed=1, key_added="fs8", copy=True)
    ip.tl.flowsom_map(small, fitted.uns["fs8"], key_added="fs8")
    expected = fitted.obs.loc[small.obs_names, "fs8"]
    assert (small.obs["fs8"] == expected).all()
    assert small.uns["fs8"]["params"]["n_clusters"] == 8


def test_flowsom_refuses_bad_input(treg):
    with pytest.raises(ImmunoprofileError, match="not in var_names"):
        ip.tl.flowsom(treg, markers=["CD4", "CD999"], copy=True)
    with pytest.raises(ImmunoprofileError, match="n_clusters"):
        ip.tl.flowsom(treg, n_clusters=1, copy=True)
    gappy = treg[:500].copy()
    gappy.X[:10, list(gappy.var_names).index("CD25")] = np.nan
    assert "CD25" not in ip.tl.fluorescence_markers(gappy)
    with pytest.raises(ImmunoprofileError, match="missing or infinite values"):
        ip.tl.flowsom(gappy, markers=["CD4", "CD25"], xdim=3, ydim=3, n_clusters=3)
    # an infinite value has no finite distance to any SOM code: refused by name, not mapped
    # to an arbitrary node
    endless = treg[:500].copy()
    endless.X[3, list(endless.var_names).index("CD4")] = np.inf
    with pytest.raises(ImmunoprofileError, match=r"\['CD4'\].*infinite"):
        ip.tl.flowsom(endless, markers=["CD4", "CD3"], xdim=3, ydim=3, n_clusters=3)
    with pytest.raises(ImmunoprofileError, match="no markers"):
        ip.tl.flowsom(treg, markers=[], xdim=3, ydim=3, n_clusters=3)
    with pytest.raises(ImmunoprofileError, match="no FlowSOM model"):
        ip.tl.flowsom_map(treg, treg)


def test_marker_matrix_is_a_copy_in_marker_order(treg):
    """Columns come in the order asked, as float64 by default or float32 kept with dtype=None
    (then without a copy when nothing moves: the AnnData's own matrix)."""
    from immunoprofile.tl._flowsom import marker_matrix

    names = list(treg.var_names)
    small = treg[:200].copy()
    small.X = np.ascontiguousarray(small.X, dtype=np.float32)
    _, same = marker_matrix(small, names, dtype=None)
    assert same.dtype == np.float32 and np.shares_memory(same, small.X)
    np.testing.assert_array_equal(same, small.X)
    order = [names[2], names[0]]
    _, two = marker_matrix(small, order)
    assert two.dtype == np.float64 and two.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(two, small[:, order].X.astype(np.float64))


def test_leiden_then_umap_share_the_graph(small):
    import scanpy as sc

    adata = small.copy()
    assert ip.tl.leiden(adata, resolution=0.5) is None
    clusters = adata.obs["leiden"]
    assert isinstance(clusters.dtype, pd.CategoricalDtype)
    assert 3 <= clusters.nunique() <= 40
    assert adata.uns["leiden"]["params"]["resolution"] == 0.5
    assert adata.uns["neighbors"]["params"]["markers"] == ip.tl.fluorescence_markers(small)
    graph = adata.obsp["connectivities"]
    # Leiden recovers the gated T-cell lineages: CD4 and non-CD4 T cells rarely share a cluster.
    t_cells = adata.obs["population"].isin(["T cells", "Conventional CD4", "FOXP3+ Treg"])
    table = pd.crosstab(adata.obs["population"][t_cells].astype(str), clusters[t_cells])
    purity = table.max(axis=0).sum() / table.to_numpy().sum()
    assert purity > 0.9, table

    ip.tl.umap(adata)
    assert adata.obsp["connectivities"] is graph  # same markers and k: the graph is reused
    assert adata.obsm["X_umap"].shape == (small.n_obs, 2)
    assert adata.uns["umap"]["params"]["min_dist"] == 0.3
    # scanpy reads the slots as its own.
    sc.tl.leiden(adata, key_added="sc_leiden", flavor="igraph", n_iterations=2,
                 directed=False)
    assert adata.obs["sc_leiden"].nunique() > 1


def test_copy_returns_new_objects(small):
    leiden = ip.tl.leiden(small, markers=["CD3", "CD4"], n_neighbors=10, copy=True)
    assert "leiden" in leiden.obs and "leiden" not in small.obs
    emb = ip.tl.umap(small, markers=["CD3", "CD4"], n_neighbors=10, key_added="X_cd34",
                     copy=True)
    assert emb.obsm["X_cd34"].shape == (small.n_obs, 2) and "X_cd34" not in small.obsm
    assert emb.uns["X_cd34"]["params"]["markers"] == ["CD3", "CD4"]


def test_cluster_f1_flowcap_matching():
    truth = ["a"] * 6 + ["b"] * 3 + ["c"]
    clusters = ["1", "1", "1", "2", "2", "3", "3", "3", "3", "3"]
    scores = ip.tl.cluster_f1(truth, clusters).set_index("class")
    # Clusters 1 and 2 are mostly a, cluster 3 mostly b; c gets none.
    assert scores.loc["a", "clusters"] == "1;2"
    assert scores.loc["a", "f1"] == pytest.approx(2 * 5 / (6 + 5))
    assert scores.loc["b", "precision"] == pytest.approx(3 / 5)
    assert scores.loc["b", "recall"] == 1.0
    assert scores.loc["c", "f1"] == 0.0
    with pytest.raises(ImmunoprofileError):
        ip.tl.cluster_f1(["a"], ["1", "2"])


def test_marker_thresholds_and_phenotypes():
    rng = np.random.default_rng(0)
    bimodal = np.r_[rng.normal(0.5, 0.4, 9000), rng.normal(4.0, 0.4, 1000)]
    rare = np.r_[rng.normal(0.5, 0.4, 9950), rng.normal(4.0, 0.3, 50)]
    X = np.c_[bimodal, rare].astype(np.float32)
    clusters = np.where(bimodal > 2.5, "pos", "neg").astype(object)
    clusters[9950:] = "rare"
    adata = ad.AnnData(X=X, obs=pd.DataFrame({"k": pd.Categorical(clusters),
                                              "population": clusters},
                                             index=[str(i) for i in range(len(X))]))
    adata.var_names = ["A", "B"]
    thresholds = ip.tl.marker_thresholds(adata)
    assert 1.5 < thresholds["A"] < 3.0  # the valley between the peaks
    assert 1.0 < thresholds["B"] < 3.5  # a lone peak's flank: rare positives stay above it
    table = ip.tl.annotate_clusters(adata, "k").set_index("cluster")
    assert table.loc["neg", "phenotype"] == "A- B-"
    assert table.loc["pos", "phenotype"] == "A+ B-"
    assert table.loc["rare", "phenotype"] == "A+ B+"
    assert table.loc["rare", "population"] == "rare"
    assert table["n_events"].sum() == len(X)
    agreement = ip.tl.cluster_agreement(adata, "k")
    assert agreement["count"].sum() == len(X)
    assert set(agreement.columns) == {"cluster", "population", "count", "frac_of_cluster",
                                      "frac_of_population"}
    pos = agreement.set_index(["cluster", "population"]).loc[("pos", "pos")]
    assert pos["frac_of_cluster"] == 1.0


def test_cluster_abundance_counts_every_sample_and_cluster():
    obs = pd.DataFrame({"sample_id": ["s1"] * 3 + ["s2"],
                        "arm": ["A", "A", "A", "B"],
                        "k": pd.Categorical(["0", "0", "1", "1"], categories=["0", "1", "2"])},
                       index=list("abcd"))
    adata = ad.AnnData(X=np.zeros((4, 1), np.float32), obs=obs)
    table = ip.tl.cluster_abundance(adata, "k", metadata=["arm"]).set_index(
        ["sample_id", "cluster"])
    assert len(table) == 6  # 2 samples × 3 clusters, the empty cluster included
    assert table.loc[("s1", "0"), "count"] == 2 and table.loc[("s1", "0"), "parent_count"] == 3
    assert table.loc[("s2", "1"), "pct"] == 100 and table.loc[("s2", "2"), "count"] == 0
    assert table.loc[("s2", "0"), "arm"] == "B"


def test_flowsom_trains_on_a_subsample_and_maps_every_event() -> None:
    """#15: n_train events train the SOM (seeded), every event gets a node and a cluster."""
    import anndata as ad

    rng = np.random.default_rng(1)
    centers = rng.normal(0, 3, (5, 6))
    labels = rng.integers(0, 5, 20_000)
    X = (centers[labels] + rng.normal(0, 0.3, (20_000, 6))).astype(np.float32)
    adata = ad.AnnData(X=X, var=pd.DataFrame(index=[f"M{i}" for i in range(6)]))
    ip.tl.flowsom(adata, markers=list(adata.var_names), n_train=3_000, xdim=8, ydim=8,
                  n_clusters=5)
    assert adata.uns["flowsom"]["params"]["n_train"] == 3_000
    assert adata.obs["flowsom"].notna().all() and adata.obs["flowsom_node"].max() < 64
    # well-separated populations: each lands in one cluster almost entirely
    purity = pd.crosstab(labels, adata.obs["flowsom"].to_numpy()).max(axis=1) / np.bincount(
        labels)
    assert (purity > 0.95).all()
    again = ip.tl.flowsom(adata, markers=list(adata.var_names), n_train=3_000, xdim=8,
                          ydim=8, n_clusters=5, copy=True)
    assert (again.obs["flowsom"] == adata.obs["flowsom"]).all()  # seeded
    with pytest.raises(ImmunoprofileError, match="n_train"):
        ip.tl.flowsom(adata, markers=list(adata.var_names), n_train=10, xdim=8, ydim=8)
