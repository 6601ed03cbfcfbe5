"""Run-level clustering (``immunoprofile cluster``) on a small simulated cohort, end to end.

The cohort (2 patients × 2 visits × 2 tubes, 20k events) is simulated, gated and clustered
once per session by :func:`clustered_run`, which ``test_tl`` and ``test_pl_embedding`` share.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import immunoprofile as ip
from immunoprofile.cli import main
from immunoprofile.datasets import population_members
from immunoprofile.tables import read_parquet_with_meta

_BUILT: dict[str, tuple[Path, Path]] = {}
N_CLUSTERS = 20


def clustered_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(cohort_dir, run_dir)``: a simulated cohort gated with the shipped templates and
    clustered by the CLI (which assembles the AnnData first). Built once per session."""
    if "run" not in _BUILT:
        from immunoprofile.batch import BatchSettings, gate_samples, resolve_templates
        from immunoprofile.datasets import simulate_cohort
        from immunoprofile.io.samplesheet import read_samplesheet

        root = tmp_path_factory.mktemp("cluster_cohort")
        # Tidy mode: recovery of per-event truth by clusters needs populations that differ in
        # phenotype. In the realistic default, switched and unswitched memory B cells share a
        # continuum of IgD (a shoulder): no clustering and no gate separates them event for
        # event, so an F1 against those labels would measure the simulator, not FlowSOM.
        simulate_cohort(root / "cohort", patients_per_arm=1, n_events=20_000, visits=(0, 12),
                        arms=("IL2", "SOC"), seed=5, realistic=False)
        sheet = read_samplesheet(root / "cohort" / "samplesheet.csv")
        gate_samples(sheet, resolve_templates(["treg", "bcell", "plasma"]), root / "run",
                     workers=2, settings=BatchSettings(plots=False))
        result = CliRunner().invoke(main, ["cluster", str(root / "run"), "--n-clusters",
                                           str(N_CLUSTERS)])
        assert result.exit_code == 0, result.output
        _BUILT["run"] = (root / "cohort", root / "run")
        _BUILT["output"] = result.output  # type: ignore[assignment]
    return _BUILT["run"]


def read(path: Path) -> ad.AnnData:
    """A timepoint file with its cluster labels joined (``Run.timepoint``), or any other
    ``.h5ad`` as written."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if path.parent.name == "anndata" and path.name != "samples.h5ad":
            return ip.Run(path.parent.parent).timepoint(path)
        return ad.read_h5ad(path)


def truth_labels(cohort: Path, adata: ad.AnnData) -> np.ndarray:
    """The simulator's label of every event (``obs['event_index']`` indexes its file)."""
    out = np.empty(adata.n_obs, dtype=object)
    for sid, idx in adata.obs.groupby("sample_id", observed=True).indices.items():
        labels = pd.read_parquet(cohort / "fcs" / f"{sid}.labels.parquet")["label"].to_numpy()
        out[idx] = labels[adata.obs["event_index"].to_numpy()[idx]]
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return clustered_run(tmp_path_factory)


@pytest.fixture(scope="module")
def panels(run) -> dict[str, ad.AnnData]:
    """All clustered events of each panel (both visits)."""
    _, run_dir = run
    out = {}
    for panel in ("treg", "bcell"):
        out[panel] = ad.concat([read(run_dir / "anndata" / f"{tp}_{panel}.h5ad")
                                for tp in ("W0", "W12")], uns_merge="first")
    return out


def test_cli_assembles_then_writes_everything(run):
    _, run_dir = run
    for name in ("W0_treg", "W12_treg", "W0_bcell", "W12_bcell", "samples"):
        assert (run_dir / "anndata" / f"{name}.h5ad").is_file()
    for name in ("clusters.parquet", "cluster_annotation.csv", "cluster_agreement.csv"):
        assert (run_dir / name).is_file()
    assert "fitted on" in _BUILT["output"]  # type: ignore[operator]


def test_clusters_table(run):
    _, run_dir = run
    table = pd.read_parquet(run_dir / "clusters.parquet")
    assert list(table.columns[:6]) == ["sample_id", "panel", "cluster", "count",
                                       "parent_count", "pct"]
    assert {"patient_id", "arm", "timepoint", "week"} <= set(table.columns)
    assert set(table["panel"]) == {"treg", "bcell"}
    assert table["sample_id"].nunique() == 8
    # Every sample × every cluster, zeros included, so a later test sees absent clusters.
    assert (table.groupby("sample_id").size() == N_CLUSTERS).all()
    per_sample = table.groupby("sample_id").agg(n=("count", "sum"), parent=("parent_count",
                                                                            "first"),
                                                pct=("pct", "sum"))
    assert (per_sample["n"] == per_sample["parent"]).all()
    assert np.allclose(per_sample["pct"], 100)
    # parent_count is the sample's events in its timepoint's AnnData.
    adata = read(run_dir / "anndata" / "W12_bcell.h5ad")
    sizes = adata.obs["sample_id"].astype(str).value_counts()
    assert (per_sample.loc[sizes.index, "parent"] == sizes).all()
    assert "clusters.parquet (one row per sample × cluster)" in ip.tables.TABLES


def test_one_model_maps_every_timepoint(run):
    """Cluster 7 at week 0 is cluster 7 at week 12: both files carry the same model, and
    re-mapping week 12 with week 0's model reproduces its labels."""
    _, run_dir = run
    w0, w12 = (read(run_dir / "anndata" / f"{tp}_treg.h5ad") for tp in ("W0", "W12"))
    np.testing.assert_array_equal(w0.uns["flowsom"]["codes"], w12.uns["flowsom"]["codes"])
    np.testing.assert_array_equal(w0.uns["flowsom"]["node_metacluster"],
                                  w12.uns["flowsom"]["node_metacluster"])
    again = ip.tl.flowsom_map(w12, w0, copy=True)
    assert (again.obs["flowsom"] == w12.obs["flowsom"]).all()
    assert (again.obs["flowsom_node"] == w12.obs["flowsom_node"]).all()
    assert list(w12.obs["flowsom"].cat.categories) == [str(i) for i in range(N_CLUSTERS)]


def test_h5ad_round_trip(run, tmp_path):
    _, run_dir = run
    adata = read(run_dir / "anndata" / "W0_bcell.h5ad")
    from immunoprofile.assemble import write_h5ad

    write_h5ad(adata, tmp_path / "copy.h5ad")
    back = read(tmp_path / "copy.h5ad")
    pd.testing.assert_frame_equal(back.obs, adata.obs)
    pd.testing.assert_frame_equal(back.var, adata.var)
    np.testing.assert_array_equal(back.X, adata.X)
    np.testing.assert_array_equal(back.layers["compensated"], adata.layers["compensated"])
    def plain(params: dict) -> dict:  # lists come back from HDF5 as arrays
        return {k: np.asarray(v).tolist() for k, v in params.items()}

    assert plain(back.uns["flowsom"]["params"]) == plain(adata.uns["flowsom"]["params"])
    assert plain(back.uns["immunoprofile"]) == plain(adata.uns["immunoprofile"])
    np.testing.assert_array_equal(back.uns["flowsom"]["codes"], adata.uns["flowsom"]["codes"])


# mudata (under flowsom) announces a change of its own defaults: not ours to act on.
@pytest.mark.filterwarnings("ignore:From 0.4 .update:FutureWarning")
def test_scanpy_and_flowsom_read_the_files(run):
    """The written files need no conversion: scanpy's neighbors/UMAP and the flowsom package
    run on what anndata reads back."""
    import flowsom as fs
    import scanpy as sc

    _, run_dir = run
    adata = read(run_dir / "anndata" / "W0_treg.h5ad")
    markers = list(adata.uns["flowsom"]["params"]["markers"])
    small = adata[np.random.default_rng(0).choice(adata.n_obs, 1500, replace=False),
                  markers].copy()
    sc.pp.neighbors(small, n_neighbors=10, use_rep="X")
    sc.tl.umap(small, maxiter=50)
    assert small.obsm["X_umap"].shape == (1500, 2)

    sub = adata[np.random.default_rng(1).choice(adata.n_obs, 3000, replace=False)].copy()
    fsom = fs.FlowSOM(sub, cols_to_use=markers, n_clusters=8, xdim=6, ydim=6, seed=1)
    labels = fsom.get_cell_data().obs["metaclustering"]
    assert len(labels) == 3000 and labels.nunique() <= 8


F1_CLASSES = {
    "treg": {"Treg": "Treg", "Conventional CD4": "Conventional CD4",
             "CD8/other T": ["cd8_other_t"]},
    "bcell": {"Naive B": ["b_naive"], "Transitional B": ["b_transitional"],
              "Unswitched memory B": ["b_unswitched"], "Switched memory B": ["b_switched"],
              "Double negative B": ["b_double_negative"], "Plasmablasts": "Plasmablasts"},
}


def _classes(panel: str) -> dict[str, str]:
    """Leaf label → class: the evaluated populations, every other leaf its own class."""
    members = population_members(panel)
    out = {}
    for name, spec in F1_CLASSES[panel].items():
        for leaf in members[spec] if isinstance(spec, str) else spec:
            out[leaf] = name
    return out


@pytest.mark.parametrize("panel", ["treg", "bcell"])
def test_flowsom_recovers_true_populations(run, panels, panel):
    """Mean F1 of FlowSOM metaclusters against the simulator's per-event truth ≥ 0.85.

    Matching (FlowCAP style): each metacluster is assigned to the true class holding most of
    its events; each class is matched to the union of its metaclusters and scored by F1.
    Classes are the populations the tube stains (Treg tube: Treg, conventional CD4 —
    including CD25−FOXP3+ CD4 — and CD8/other T; B tube: naive, transitional, unswitched,
    switched and double-negative B, and plasmablasts including CD138+ plasma cells); every
    other leaf (B/NK cells in the Treg tube, T and NK cells in the B tube, the odd monocyte
    or debris event the lymphocyte gate lets through) is its own class, so metaclusters of
    those cannot be credited to an evaluated population. Events are the clustered data:
    live singlet lymphocytes (the default parent), all events of both visits.
    """
    cohort, _ = run
    adata = panels[panel]
    classes = _classes(panel)
    truth = [classes.get(t, t) for t in truth_labels(cohort, adata)]
    scores = ip.tl.cluster_f1(truth, adata.obs["flowsom"], classes=list(F1_CLASSES[panel]))
    print(f"\n{panel}:\n{scores.round(3).to_string(index=False)}")
    assert scores["f1"].mean() >= 0.85, scores
    assert (scores["f1"] >= 0.7).all(), scores


def test_agreement_table_shows_gates_recovered(run, panels):
    """cluster_agreement.csv: its counts add up to the events, and matching clusters to gated
    populations the same FlowCAP way recovers the main gated populations."""
    _, run_dir = run
    agreement = pd.read_csv(run_dir / "cluster_agreement.csv", dtype={"cluster": str})
    annotation = pd.read_csv(run_dir / "cluster_annotation.csv", dtype={"cluster": str})
    treg_family = {"Treg", "FOXP3+ Treg", "Naive Treg", "Memory Treg"}
    for panel, adata in panels.items():
        table = agreement[agreement["panel"] == panel]
        assert table["count"].sum() == adata.n_obs
        counts = table.pivot_table(index="population", columns="cluster", values="count",
                                   aggfunc="sum")
        counts = counts.rename(index=lambda p: "Treg" if p in treg_family else p)
        counts = counts.groupby(level=0).sum()
        rows = [(pop, cl, n) for pop in counts.index for cl, n in counts.loc[pop].items()]
        labels = np.repeat([r[0] for r in rows], [int(r[2]) for r in rows])
        clusters = np.repeat([r[1] for r in rows], [int(r[2]) for r in rows])
        wanted = (["Treg", "Conventional CD4", "T cells"] if panel == "treg" else
                  ["Naive B", "Switched memory B", "Unswitched memory B", "Double negative B"])
        scores = ip.tl.cluster_f1(labels, clusters, classes=wanted).set_index("class")
        print(f"\n{panel} vs gates:\n{scores.round(3).to_string()}")
        assert (scores["f1"] >= 0.8).all(), scores
        # The annotation names each cluster after its most frequent gated population.
        ann = annotation[(annotation["panel"] == panel) & (annotation["n_events"] > 0)]
        top = table.sort_values("count").drop_duplicates("cluster", keep="last")
        top = top.set_index("cluster")["population"]
        assert (ann.set_index("cluster")["population"] == top.reindex(ann["cluster"])).all()


def test_annotation_phenotypes(run):
    _, run_dir = run
    ann = pd.read_csv(run_dir / "cluster_annotation.csv", dtype={"cluster": str})
    big = ann[ann["n_events"] >= 100]
    treg = big[(big["panel"] == "treg") & big["population"].isin(["FOXP3+ Treg",
                                                                    "Memory Treg"])]
    assert len(treg)
    for phenotype in treg["phenotype"]:
        assert {"CD4+", "CD25+", "CD127-"} <= set(phenotype.split()), phenotype
    # B subsets are a few dozen events each in this small cohort.
    b = ann[(ann["n_events"] >= 50) & (ann["panel"] == "bcell")
            & ann["population"].fillna("").str.endswith(" B")]
    assert len(b) >= 4
    for phenotype in b["phenotype"]:
        assert {"CD3-", "CD19+"} <= set(phenotype.split()), phenotype
    tconv = big[(big["panel"] == "treg") & (big["population"] == "Conventional CD4")]
    assert all({"CD3+", "CD4+"} <= set(p.split()) for p in tconv["phenotype"])
    assert {"threshold_CD25", "median_CD25"} <= set(ann.columns)


def test_som_equals_flowsoms_estimator() -> None:
    """Our cached SOM loops follow flowsom's SOMEstimator step for step: same codes, same
    nodes, same metaclusters for the same seed (they replace it only to cache the compiled
    code across processes)."""
    from flowsom.models import FlowSOMEstimator

    rng = np.random.default_rng(3)
    X = np.vstack([rng.normal(m, 0.7, size=(800, 5)) for m in (0.0, 2.0, 4.0, 6.0)])
    adata = ad.AnnData(X=X, var=pd.DataFrame(index=[f"M{i}" for i in range(5)]))
    # grids of 36, 9 (one code beyond the four lanes), 400 and 28 codes (4 × 7: rows and
    # columns of the neighbourhood differ); 3,197 events × 4 passes are not a whole number
    # of the events fetched ahead (256 at a time)
    # One thread and two (every other grid row each, odd row counts too), the same codes.
    for seed, xdim, ydim, n in ((0, 6, 6, 3200), (11, 6, 6, 3197), (5, 3, 3, 3200),
                                (2, 20, 20, 3200), (4, 4, 7, 3200), (6, 7, 4, 3200)):
        reference = FlowSOMEstimator(xdim=xdim, ydim=ydim, rlen=4, seed=seed, n_clusters=5)
        labels = reference.fit_predict(X[:n])
        for n_jobs in (1, 2):
            part = adata[:n].copy()
            ip.tl.flowsom(part, xdim=xdim, ydim=ydim, rlen=4, n_clusters=5, random_state=seed,
                          n_jobs=n_jobs)
            assert np.array_equal(part.uns["flowsom"]["codes"], reference.cluster_model.codes)
            assert np.array_equal(part.obs["flowsom_node"].to_numpy(),
                                  reference.cluster_model.labels_.astype(int))
            assert np.array_equal(part.obs["flowsom"].astype(int).to_numpy(), labels)
    # float32 events (as assembled) are used without a float64 copy: they widen exactly
    single = ad.AnnData(X=X.astype(np.float32), var=adata.var)
    ip.tl.flowsom(single, xdim=6, ydim=6, rlen=4, n_clusters=5, random_state=0)
    reference = FlowSOMEstimator(xdim=6, ydim=6, rlen=4, seed=0, n_clusters=5)
    reference.fit_predict(X.astype(np.float32).astype(np.float64))
    assert np.array_equal(single.uns["flowsom"]["codes"], reference.cluster_model.codes)


def test_two_threads_pick_the_nearest_code_a_single_search_picks() -> None:
    """Each thread's nearest code, combined, is the one FlowSOM's search over all codes
    picks: the smaller root distance, the lower code of equal ones, none (NaN) loses."""
    from immunoprofile.tl._som import first_of_two

    nan = float("nan")
    assert first_of_two(1.0, 7, 2.0, 3) == 7
    assert first_of_two(2.0, 3, 1.0, 7) == 7
    assert first_of_two(1.5, 7, 1.5, 3) == 3 and first_of_two(1.5, 3, 1.5, 7) == 3
    assert first_of_two(nan, 0, 4.0, 9) == 9 and first_of_two(4.0, 9, nan, 0) == 9
    assert first_of_two(nan, 0, nan, 1) == 0
    assert first_of_two(np.inf, 5, np.inf, 2) == 2 and first_of_two(np.inf, 5, 3.0, 8) == 8


def test_som_threads_follow_n_jobs_and_the_machine(monkeypatch, tmp_path) -> None:
    """n_jobs=None or 1: one thread; 2 or more: two; -1 (0 or below, as every n_jobs here):
    two only for grids of 200 codes or more where the process may use two cores, and one
    inside a pool worker (one core each). The cores usable are the affinity's, capped by a
    container's CPU quota (cgroup v2 cpu.max)."""
    from immunoprofile import _pool
    from immunoprofile.tl._flowsom import _som_threads

    # (dask's nanny leaves OMP_NUM_THREADS=1 in a process that started a LocalCluster)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(_pool, "_CPU_MAX", str(tmp_path / "absent"))
    free = _pool.usable_cores()
    assert free == (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                    else os.cpu_count())
    assert _som_threads(None, 400) == 1 and _som_threads(1, 400) == 1
    assert _som_threads(2, 36) == 2 and _som_threads(8, 400) == 2
    assert _som_threads(-1, 100) == 1
    for n_jobs in (-1, 0, -5):
        assert _som_threads(n_jobs, 400) == min(free, 2)
    quota = tmp_path / "cpu.max"
    for text, cores in (("max 100000\n", free), ("100000 100000\n", 1),
                        ("250000 100000\n", min(free, 2)), ("50000 100000\n", 1)):
        quota.write_text(text)
        monkeypatch.setattr(_pool, "_CPU_MAX", str(quota))
        assert _pool.usable_cores() == cores, text
    assert _som_threads(-1, 400) == 1  # a quota of half a core
    monkeypatch.setattr(_pool, "_CPU_MAX", str(tmp_path / "absent"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert _som_threads(-1, 400) == 1 and _pool.in_pool_worker()


def test_two_threads_on_a_busy_machine_give_the_same_codes() -> None:
    """Two 2-thread trainings at once (four threads on this machine's cores): a thread
    waiting for its partner gives its core away, and the codes stay those of one thread."""
    from concurrent.futures import ThreadPoolExecutor

    from immunoprofile.tl._som import train_codes

    rng = np.random.default_rng(8)
    X = np.vstack([rng.normal(m, 0.7, size=(1500, 6)) for m in (0.0, 3.0)])
    start = X[rng.choice(len(X), 400, replace=False)]

    def train(threads: int, seed: int) -> np.ndarray:
        return train_codes(X, start.copy(), 20, 20, 0.05, 0.01, 7.0, 0.0, 2, seed,
                           threads=threads)

    single = [train(1, seed) for seed in (0, 1)]
    with ThreadPoolExecutor(2) as pool:
        shared = list(pool.map(lambda seed: train(2, seed), (0, 1)))
    assert all(np.array_equal(a, b) for a, b in zip(single, shared))


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs os.sched_setaffinity "
                    "(Linux) to give the process one core")
def test_two_threads_on_one_core_hand_over_to_one() -> None:
    """Two threads on one core (the other busy, as it were): every step waits for the other
    thread to be scheduled, so after three windows of waiting the second stops and the first
    finishes alone, with one thread's codes."""
    import subprocess
    import sys

    script = (
        "import os, numpy as np\n"
        "from immunoprofile.tl._som import _train, train_codes\n"
        "os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})\n"
        "rng = np.random.default_rng(1)\n"
        "X = rng.normal(size=(40_000, 4))\n"
        "start = X[:400].copy()\n"
        "codes = start.copy()\n"
        "alone = _train(X, codes, 20, 20, 0.05, 0.01, 4.0, 0.0, 4, 0, 2, -1)\n"
        "single = train_codes(X, start.copy(), 20, 20, 0.05, 0.01, 4.0, 0.0, 4, 0)\n"
        "print(alone, np.array_equal(codes, single))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=300).stdout.split()
    alone, same = int(out[0]), out[1]
    assert 3 * 32_768 <= alone < 160_000 and same == "True", out


def test_the_first_thread_finishes_alone_with_the_same_codes() -> None:
    """When the threads keep waiting for each other the second stops and the first goes on
    with both halves of the grid: asked at the first, a middle, a pass's first (where the
    pass's movement is summed over both halves) and the last step, the codes are one
    thread's (the second stops wherever it is then; the hand-over is tested whatever the
    step). A radius that is no finite grid distance is refused."""
    from immunoprofile.tl._som import _train, train_codes

    rng = np.random.default_rng(4)
    X = np.vstack([rng.normal(m, 0.7, size=(700, 5)) for m in (0.0, 3.0)])
    start = X[rng.choice(len(X), 7 * 6, replace=False)]
    single = train_codes(X, start.copy(), 7, 6, 0.05, 0.01, 3.0, 0.0, 3, 2)
    for alone_at in (0, 1, 999, len(X), 3 * len(X) - 1):
        codes = start.copy()
        stopped = _train(X, codes, 7, 6, 0.05, 0.01, 3.0, 0.0, 3, 2, 2, alone_at)
        # the second stops before this step or, a step ahead, before the next (after the
        # last step there is none: -1)
        after = alone_at + 1 if alone_at + 1 < 3 * len(X) else -1
        assert stopped in (alone_at, after), stopped
        assert np.array_equal(codes, single), alone_at
    for radius in (np.inf, np.nan, 2.0**70, -1.0):
        with pytest.raises(ValueError, match="radius_start"):
            train_codes(X, start.copy(), 7, 6, 0.05, 0.01, radius, 0.0, 1, 0)


def test_nearest_code_is_the_first_of_equal_square_roots() -> None:
    """FlowSOM compares square roots: of two squared distances one rounding step apart with the
    same root, the first code wins even when the smaller square comes later."""
    from immunoprofile.tl._som import _first_nearest

    rng = np.random.default_rng(0)
    pairs = [(np.nextafter(a, np.inf), a) for a in rng.uniform(1.0, 50.0, 2000)
             if np.sqrt(np.nextafter(a, np.inf)) == np.sqrt(a)]
    assert len(pairs) > 100
    for bigger, smaller in pairs[:50]:
        for n_codes in (5, 7, 40, 42):  # four lanes, and the codes left over from them
            squared = rng.uniform(60.0, 90.0, n_codes)
            squared[[1, n_codes - 2]] = bigger, smaller
            assert _first_nearest(squared) == 1
            squared[1] = smaller + 1.0
            assert _first_nearest(squared) == n_codes - 2
    # a code gone NaN is passed over, in either search, and hides no other code
    for n_codes, nan_at, smallest in ((40, 3, 11), (5, 0, 3), (42, 41, 40), (7, 1, 6)):
        squared = rng.uniform(60.0, 90.0, n_codes)
        squared[nan_at], squared[smallest] = np.nan, 1.0
        assert _first_nearest(squared) == smallest


def test_som_code_is_compiled_once_across_processes(tmp_path) -> None:
    """A second process loads the SOM loops from numba's on-disk cache instead of compiling
    them again (flowsom's own loops recompiled in every process)."""
    import os
    import subprocess
    import sys

    script = ("import numpy as np\n"
              "from immunoprofile.tl._som import train_codes, nearest_codes\n"
              "X = np.random.default_rng(0).normal(size=(500, 3))\n"
              "c = train_codes(X, X[:9].copy(), 3, 3, 0.05, 0.01, 2.0, 0.0, 2, 0)\n"
              "nearest_codes(X, c)\n")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "NUMBA_DEBUG_CACHE": "1"}
    logs = [subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                           text=True, check=True).stdout for _ in range(2)]
    assert "data saved" in logs[0]
    assert "data saved" not in logs[1] and "data loaded" in logs[1], logs[1]


def test_a_second_clustering_gives_the_same_labels(run, tmp_path, monkeypatch) -> None:
    """The panels' SOMs train at once in threads; each is seeded on its own, so clustering the
    run again (in a copy) gives every event the same label and the same tables. The copy is
    read and mapped 997 rows at a time (files are never read whole; samples straddle the
    chunks): the same again."""
    import shutil

    from immunoprofile import cluster
    from immunoprofile.cluster import cluster_run

    copy = tmp_path / "run"
    shutil.copytree(run[1], copy)
    monkeypatch.setattr(cluster, "_CHUNK", 997)
    cluster_run(copy, n_clusters=N_CLUSTERS)
    first = pd.read_parquet(run[1] / "clusters.parquet")
    again = pd.read_parquet(copy / "clusters.parquet")
    pd.testing.assert_frame_equal(first, again)
    for name in ("cluster_annotation.csv", "cluster_agreement.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(run[1] / name), pd.read_csv(copy / name))
    for labels in sorted((run[1] / "clusters").glob("*.parquet")):
        pd.testing.assert_frame_equal(pd.read_parquet(labels),
                                      pd.read_parquet(copy / "clusters" / labels.name))


def test_max_events_caps_the_pooled_fitting_events(run, tmp_path) -> None:
    """``cluster --max-events`` bounds each panel's pool (its memory and SOM time): every
    sample gives max_events // samples events; the stored parameters say so."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run[1], copy)
    result = CliRunner().invoke(main, ["cluster", str(copy), "--n-clusters", str(N_CLUSTERS),
                                       "--max-events", "1000"])
    assert result.exit_code == 0, result.output
    table, meta = read_parquet_with_meta(copy / "clusters.parquet")
    n_samples = table.groupby("panel")["sample_id"].nunique()
    per_sample = meta["events_per_sample"]
    for panel, n in n_samples.items():
        assert per_sample[panel] == 1000 // n
        assert f"panel {panel}: fitted on {1000 // n} events per sample" in result.output


def test_the_pool_holds_the_files_rows_a_chunk_at_a_time(run, monkeypatch, tmp_path) -> None:
    """The training pool reads its events 997 rows at a time, in any order asked: each file's
    rows as the whole file read and indexed, files one after another; only X (names are row
    numbers); markers every file has, in the first file's order, widened to the widest dtype."""
    from immunoprofile import cluster

    monkeypatch.setattr(cluster, "_CHUNK", 997)
    paths = sorted((run[1] / "anndata").glob("W*_treg.h5ad"))[:2]
    wholes = [ad.read_h5ad(p) for p in paths]
    rng = np.random.default_rng(2)
    rows = [rng.permutation(w.n_obs)[: w.n_obs // 3] for w in wholes]
    pooled = cluster._pool(list(zip(paths, rows)))
    np.testing.assert_array_equal(pooled.X, np.vstack([w.X[r] for w, r in zip(wholes, rows)]))
    assert pooled.X.dtype == wholes[0].X.dtype and list(pooled.var_names) == list(
        wholes[0].var_names)
    assert list(pooled.obs_names[:3]) == ["0", "1", "2"] and pooled.obs.shape[1] == 0
    assert pooled.uns.keys() == wholes[0].uns.keys()

    values = np.arange(12.0).reshape(4, 3)
    first = ad.AnnData(X=values.astype(np.float32), var=pd.DataFrame(index=["a", "b", "c"]))
    second = ad.AnnData(X=values[:, :2] + 100, var=pd.DataFrame(index=["c", "a"]))
    first.write_h5ad(tmp_path / "first.h5ad")
    second.write_h5ad(tmp_path / "second.h5ad")
    pooled = cluster._pool([(tmp_path / "first.h5ad", np.array([3, 0])),
                            (tmp_path / "second.h5ad", np.array([1]))])
    assert list(pooled.var_names) == ["a", "c"] and pooled.X.dtype == np.float64
    np.testing.assert_array_equal(pooled.X, [[9, 11], [0, 2], [104, 103]])


def test_a_table_written_in_pieces_reads_back_whole(tmp_path) -> None:
    """write_parquet_chunks: one row group per piece, the metadata stamped once, the table
    read back equal to the pieces joined; no piece at all is an error naming the file."""
    import pyarrow.parquet as pq

    from immunoprofile.tables import write_parquet_chunks

    pieces = [pd.DataFrame({"cell": [f"c{i}" for i in range(a, a + 5)], "n": range(a, a + 5)},
                           index=range(100 + a, 105 + a)) for a in (0, 5, 10)]
    path = write_parquet_chunks(iter(pieces), tmp_path / "t.parquet", metadata={"k": 1})
    table, meta = read_parquet_with_meta(path)
    pd.testing.assert_frame_equal(table, pd.concat(pieces, ignore_index=True))
    assert meta["k"] == 1 and "schema_version" in meta
    assert pq.ParquetFile(path).num_row_groups == 3
    with pytest.raises(ValueError, match=r"empty\.parquet: no table"):
        write_parquet_chunks(iter([]), tmp_path / "empty.parquet")
    assert not (tmp_path / "empty.parquet").exists()
