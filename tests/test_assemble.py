"""Timepoint AnnData from a run: what each sample contributes, and that values are the run's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import immunoprofile as ip
from immunoprofile.assemble import timepoint_anndata
from immunoprofile.batch import BatchSettings, gate_samples

KEEP = 800  # events the run keeps per sample: fewer than the files hold (re-gating is tested)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> ip.Run:
    from immunoprofile.datasets import simulate_cohort

    out = tmp_path_factory.mktemp("assemble")
    cohort = simulate_cohort(out / "cohort", patients_per_arm=1, n_events=5_000,
                             visits=(0, 12), seed=2)
    gate_samples(cohort.out / "samplesheet.csv", ["treg", "bcell", "plasma"], out / "run",
                 workers=1, settings=BatchSettings(keep_events=KEEP, plots=False, seed=0),
                 plotter=None)
    return ip.Run.open(out / "run")


def _parent_sizes(run: ip.Run, adata, column: str) -> pd.Series:
    sizes = {sid: int(run.events(sid)[0][column].sum())
             for sid in adata.obs["sample_id"].cat.categories}
    return pd.Series(sizes)


def test_default_draws_the_smallest_samples_size_from_each(small_run: ip.Run) -> None:
    adata = timepoint_anndata(small_run, "W0", panel="bcell")
    column = adata.uns["immunoprofile"]["population"]
    assert column == "bcell/Live lymphocytes"
    sizes = _parent_sizes(small_run, adata, column)
    per_sample = adata.obs["sample_id"].value_counts()
    assert (per_sample == sizes.min()).all() and len(per_sample) == 4
    assert adata.obs[column].all()
    # values are the run's kept events, event for event
    sid = sizes.index[0]
    kept = small_run.events(sid)[0].set_index("event_index")
    mine = adata[adata.obs["sample_id"] == sid]
    rows = kept.loc[mine.obs["event_index"].to_numpy()]
    for j, marker in enumerate(adata.var_names):
        np.testing.assert_array_equal(mine.X[:, j], rows[f"transformed/{marker}"]
                                      .to_numpy(np.float32))
        np.testing.assert_array_equal(mine.layers["compensated"][:, j],
                                      rows[f"compensated/{marker}"].to_numpy(np.float32))
    gates = [c for c in adata.obs.columns if c.startswith(("bcell/", "plasma/"))]
    assert gates and all(adata.obs[c].dtype == bool for c in gates)
    np.testing.assert_array_equal(mine.obs["plasma/B lineage"].to_numpy(),
                                  rows["plasma/B lineage"].to_numpy(bool))
    # the deepest gate reached: a naive B cell is labelled so, not "B cells"
    naive = adata.obs["bcell/Naive B"].to_numpy()
    assert naive.any() and (adata.obs["population"][naive] == "Naive B").all()
    assert adata.obs["arm"].dtype == "category" and adata.obs_names.is_unique


def test_fixed_and_proportional_numbers_per_sample(small_run: ip.Run) -> None:
    fixed = timepoint_anndata(small_run, "W12", panel="treg", n_per_sample=300)
    assert (fixed.obs["sample_id"].value_counts() == 300).all()
    share = timepoint_anndata(small_run, "W12", panel="treg", n_per_sample=300,
                              proportional=True)
    sizes = _parent_sizes(small_run, share, "treg/Live lymphocytes")
    expected = (sizes * 300 / sizes.min()).round().astype(int).clip(upper=sizes)
    got = share.obs["sample_id"].value_counts().reindex(expected.index)
    assert (got == expected).all()
    again = timepoint_anndata(small_run, "W12", panel="treg", n_per_sample=300)
    assert (again.obs_names == fixed.obs_names).all()  # seeded
    other = timepoint_anndata(small_run, "W12", panel="treg", n_per_sample=300,
                              random_state=1)
    assert not (other.obs_names == fixed.obs_names).all()


def test_another_population_and_more_events_than_the_run_kept(small_run: ip.Run) -> None:
    b = timepoint_anndata(small_run, "W0", panel="bcell", population="B cells")
    assert b.uns["immunoprofile"]["population"] == "bcell/B cells"
    assert b.obs["bcell/B cells"].all() and b.n_obs > 0
    # More than the run kept: the files are re-read and re-gated, the same events get the
    # same values, and each sample gives what its file holds up to the number asked.
    more = timepoint_anndata(small_run, "W0", panel="treg", n_per_sample=2 * KEEP)
    per_sample = more.obs["sample_id"].value_counts()
    assert (per_sample > KEEP).all() and (per_sample <= 2 * KEEP).all()
    sid = per_sample.index[0]
    kept = small_run.events(sid)[0].set_index("event_index")
    mine = more[more.obs["sample_id"] == sid]
    shared = np.intersect1d(mine.obs["event_index"].to_numpy(), kept.index.to_numpy())
    assert shared.size > 100
    at = pd.Index(mine.obs["event_index"]).get_indexer(shared)
    np.testing.assert_array_equal(mine.X[at, list(mine.var_names).index("CD25")],
                                  kept.loc[shared, "transformed/CD25"].to_numpy(np.float32))


def test_unknown_timepoint_population_and_panel_are_named(small_run: ip.Run) -> None:
    with pytest.raises(ip.ImmunoprofileError, match="no samples at timepoint 'W99'"):
        timepoint_anndata(small_run, "W99", panel="treg")
    with pytest.raises(ip.ImmunoprofileError, match="several panels"):
        timepoint_anndata(small_run, "W0")
    with pytest.raises(ip.ImmunoprofileError, match="'Nope' is not among the gated"):
        timepoint_anndata(small_run, "W0", panel="treg", population="Nope")


def test_written_file_reads_back(small_run: ip.Run, tmp_path: Path) -> None:
    import anndata as ad

    from immunoprofile.assemble import write_h5ad

    adata = timepoint_anndata(small_run, "W0", panel="treg", n_per_sample=200)
    back = ad.read_h5ad(write_h5ad(adata, tmp_path / "w0.h5ad"))
    np.testing.assert_array_equal(back.X, adata.X)
    pd.testing.assert_frame_equal(back.obs, adata.obs)


@pytest.mark.parametrize("options", [
    {"panel": "bcell"}, {"panel": "treg", "n_per_sample": 300, "proportional": True},
    {"panel": "bcell", "population": "plasma/B lineage", "random_state": 4},
    {"panel": "treg", "n_per_sample": 2 * KEEP}])
def test_the_file_written_a_sample_at_a_time_is_the_anndata(small_run: ip.Run, tmp_path: Path,
                                                            options: dict, monkeypatch) -> None:
    """`assemble` writes each timepoint without holding it (one sample's rows at a time,
    written a few samples at a time: here every 500 rows, so writes span samples);
    read back, the file is the AnnData `timepoint_anndata` builds in memory."""
    import anndata as ad

    from immunoprofile import assemble
    from immunoprofile.assemble import write_h5ad, write_timepoint_h5ad

    monkeypatch.setattr(assemble, "_WRITE_ROWS", 500)

    built = ad.read_h5ad(write_h5ad(timepoint_anndata(small_run, "W0", **options),
                                    tmp_path / "m.h5ad"))
    streamed = ad.read_h5ad(write_timepoint_h5ad(tmp_path / "s.h5ad", small_run, "W0",
                                                 **options))
    np.testing.assert_array_equal(streamed.X, built.X)
    np.testing.assert_array_equal(streamed.layers["compensated"], built.layers["compensated"])
    assert list(streamed.layers) == ["compensated"]
    pd.testing.assert_frame_equal(streamed.obs, built.obs)
    pd.testing.assert_frame_equal(streamed.var, built.var)
    assert streamed.uns["immunoprofile"] == built.uns["immunoprofile"]


def test_a_sample_a_template_failed_on_draws_from_its_own_reference(small_run: ip.Run,
                                                                    tmp_path: Path) -> None:
    """A sample whose `bcell` gating failed has only the `plasma` columns: its events come
    from its own reference population, and it lacks the bcell gates (not a member)."""
    import shutil

    import anndata as ad
    import pyarrow.parquet as pq

    from immunoprofile.assemble import write_timepoint_h5ad

    copy = Path(shutil.copytree(small_run.path, tmp_path / "run"))
    run = ip.Run.open(copy)
    sid = str(run.samples().query("panel == 'bcell' and timepoint == 'W0'")["sample_id"].iloc[0])
    table = pq.read_table(run.events_path(sid))
    pq.write_table(table.drop([c for c in table.column_names if c.startswith("bcell/")]),
                   run.events_path(sid))
    adata = timepoint_anndata(run, "W0", panel="bcell")
    mine = adata.obs["sample_id"] == sid
    assert mine.sum() == adata.obs["sample_id"].value_counts().min() > 0
    assert adata.obs.loc[mine, "plasma/Live lymphocytes"].all()
    assert not adata.obs.loc[mine, "bcell/Live lymphocytes"].any()
    assert adata.obs.loc[~mine, "bcell/Live lymphocytes"].all()
    streamed = ad.read_h5ad(write_timepoint_h5ad(tmp_path / "w0.h5ad", run, "W0",
                                                 panel="bcell"))
    pd.testing.assert_frame_equal(streamed.obs, adata.obs)
