"""Arm-comparison plots on a simulated trial with planted effects (real tables, no mocks)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

import immunoprofile as ip
import immunoprofile.pl
import immunoprofile.tl
from immunoprofile.datasets import simulate_counts
from immunoprofile.errors import ImmunoprofileError

ARMS = ["TEL", "IL2", "COMBO", "SOC"]
PLANTED = {("Treg", "IL2", "W2"): 0.6, ("B cells", "TEL", "W12"): -0.5}


@pytest.fixture(scope="session")
def trial():
    """Counts with an IL2 Treg expansion at W2 and a TEL B-cell depletion at W12, and the
    tables the tl functions make of them."""
    sim = simulate_counts(effects=PLANTED, seed=0)
    da = ip.tl.differential_abundance(sim.subsets, control="SOC", baseline="W0")
    patients, _ = ip.tl.response(sim.subsets, baseline="W0", responder="Treg>=1.5")
    return sim.subsets, da, patients


def _texts(fig: Figure, gid: str) -> list:
    return [t for ax in fig.axes for t in ax.texts if t.get_gid() == gid]


def _check_png(path: Path) -> None:
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    assert float(image[..., :3].std()) > 0.05  # drawn, not blank
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left


def test_trajectories_mean_line_per_arm(trial):
    _, _, patients = trial
    fig = ip.pl.trajectories(patients, population="Treg")
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    means = {ln.get_gid(): ln for ln in ax.lines if str(ln.get_gid()).startswith("mean:")}
    assert sorted(means) == sorted(f"mean:{a}" for a in ARMS)
    assert sum(ln.get_gid() == "patient" for ln in ax.lines) == patients["patient_id"].nunique()
    assert ax.get_yscale() == "log"
    assert "fold change from W0" in ax.get_title() and "geometric mean" in ax.get_title()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["W0", "W2", "W12"]
    # The planted IL2 expansion at W2 (log OR 0.6, ~1.7×) shows in the IL2 mean only.
    w2 = {arm: ln.get_ydata()[1] for arm, ln in means.items()}
    assert w2["mean:IL2"] > 1.4 and all(0.8 < v < 1.25 for a, v in w2.items() if a != "mean:IL2")
    assert any(ln.get_ydata()[0] == 1 for ln in ax.lines if ln.get_gid() is None)  # line at 1


def test_trajectories_arms_keep_their_colours_and_values(trial):
    _, _, patients = trial
    full = ip.pl.trajectories(patients, population="sim/B cells")
    two = ip.pl.trajectories(patients, population="B cells", template="sim",
                             arms=["SOC", "TEL"], measure="value")
    colours = {ln.get_gid(): ln.get_color() for ln in full.axes[0].lines}
    lines = {ln.get_gid(): ln for ln in two.axes[0].lines if str(ln.get_gid()).startswith("mean")}
    assert sorted(lines) == ["mean:SOC", "mean:TEL"]
    assert all(colours[g] == ln.get_color() for g, ln in lines.items())
    assert two.axes[0].get_yscale() == "linear"
    rows = patients[(patients["population"] == "B cells") & (patients["arm"] == "TEL")]
    expected = rows.groupby("timepoint", observed=True)["value"].mean().to_numpy()
    np.testing.assert_allclose(lines["mean:TEL"].get_ydata(), expected)


def test_boxplots_annotate_fdr(trial):
    subsets, da, _ = trial
    fig = ip.pl.boxplots(subsets, population="B cells", results=da,
                         contrast_type="change_vs_control")
    assert [ax.get_title() for ax in fig.axes] == ["W0 (baseline)", "W2", "W12"]
    q = _texts(fig, "q")
    assert len(q) == 3 * 2 and all("q=" in t.get_text() for t in q)
    w12 = [t.get_text() for t in fig.axes[2].texts if t.get_text()]
    # The planted TEL depletion (first arm at W12): three stars, q in scientific notation.
    assert w12[0].startswith("***\nq=") and "e-0" in w12[0]
    assert "ref." in w12 and "FDR of change vs control" in fig.get_suptitle()
    # Each arm's box holds its patients: 8 points per arm and visit.
    assert [len(c.get_offsets()) for c in fig.axes[1].collections] == [8] * 4

    fig = ip.pl.boxplots(subsets, population="Treg", results=da)  # arm_vs_control at W0 too
    assert len(_texts(fig, "q")) == 3 * 3
    assert any(t.get_text().startswith("q=") for t in _texts(fig, "q"))


def test_boxplots_of_fold_changes_skip_baseline(trial):
    _, da, patients = trial
    fig = ip.pl.boxplots(patients, population="Treg", value="fold_change", results=da,
                         contrast_type="change_vs_control")
    assert [ax.get_title() for ax in fig.axes] == ["W2", "W12"]
    assert fig.axes[0].get_yscale() == "log"
    assert "fold change from W0" in fig.axes[0].get_ylabel()


def test_volcano_labels_planted_populations(trial):
    _, da, _ = trial
    fig = ip.pl.volcano(da, contrast_type="change_vs_control")
    assert len(fig.axes) == 3 * 2  # arms × visits after baseline
    labelled = {(t.axes.get_title(), t.get_text()) for t in _texts(fig, "label")}
    assert ("IL2 · W2", "Treg") in labelled and ("TEL · W12", "B cells") in labelled
    significant = da[(da["contrast_type"] == "change_vs_control") & (da["fdr"] < 0.05)]
    assert len(labelled) == len(significant)
    assert "log odds ratio" in fig.get_suptitle() and "vs SOC" in fig.get_suptitle()

    one = ip.pl.volcano(da, contrast_type="arm_vs_control", arm="TEL", timepoint="W12", label=0)
    assert len(one.axes) == 1 and not _texts(one, "label")


def test_heatmap_shape_and_marks(trial):
    _, da, _ = trial
    fig = ip.pl.effects_heatmap(da)
    ax = fig.axes[0]
    assert ax.images[0].get_array().shape == (3, 6)  # populations × arm@visit
    assert [t.get_text() for t in ax.get_xticklabels()][:2] == ["TEL@W2", "TEL@W12"]
    cvc = da[da["contrast_type"] == "change_vs_control"]
    assert len(_texts(fig, "significant")) == int((cvc["fdr"] < 0.05).sum()) >= 2
    vmin, vmax = ax.images[0].get_clim()
    assert vmin == -vmax  # centred at 0
    assert "change from W0 vs SOC" in fig.get_suptitle()


def test_heatmap_of_state_table_names_markers(trial):
    subsets, _, _ = trial
    ds = ip.tl.differential_state(subsets, control="SOC", baseline="W0")
    fig = ip.pl.effects_heatmap(ds, contrast_type="arm_vs_control")
    names = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert names == ["sim/Treg · CD25", "sim/B cells · CD25", "sim/Plasmablasts · CD25"]
    assert "MFI" in fig.get_suptitle()


@pytest.mark.parametrize("kind", ["trajectories", "boxplots", "volcano", "effects_heatmap"])
def test_save_writes_png(trial, tmp_path: Path, kind: str):
    subsets, da, patients = trial
    path = tmp_path / "out" / f"{kind}.png"
    calls = {
        "trajectories": lambda: ip.pl.trajectories(patients, population="Treg", save=path),
        "boxplots": lambda: ip.pl.boxplots(subsets, population="Treg", results=da, save=path),
        "volcano": lambda: ip.pl.volcano(da, contrast_type="arm_vs_control", save=path),
        "effects_heatmap": lambda: ip.pl.effects_heatmap(da, save=path),
    }
    assert isinstance(calls[kind](), Figure)
    _check_png(path)


def test_empty_and_unknown_inputs_raise_clear_errors(trial):
    subsets, da, patients = trial
    empty = da.iloc[:0]
    with pytest.raises(ImmunoprofileError, match="empty"):
        ip.pl.volcano(empty, contrast_type="arm_vs_control")
    with pytest.raises(ImmunoprofileError, match="empty"):
        ip.pl.effects_heatmap(empty)
    with pytest.raises(ImmunoprofileError, match="empty"):
        ip.pl.trajectories(patients.iloc[:0], population="Treg")
    with pytest.raises(ImmunoprofileError, match="empty"):
        ip.pl.boxplots(pd.DataFrame(), population="Treg")
    with pytest.raises(ImmunoprofileError, match=r"no population 'NK'.*sim/Treg"):
        ip.pl.trajectories(patients, population="NK")
    with pytest.raises(ImmunoprofileError, match="arm_vs_control, change_from_baseline"):
        ip.pl.volcano(da, contrast_type="change_vs_arm")
    with pytest.raises(ImmunoprofileError, match="no 'change_vs_control' rows with reference"):
        ip.pl.effects_heatmap(da, reference="Live lymphocytes")
    with pytest.raises(ImmunoprofileError, match="timepoint='W9'"):
        ip.pl.volcano(da, contrast_type="arm_vs_control", timepoint="W9")
    with pytest.raises(ImmunoprofileError, match=r"arms \['PBO'\]"):
        ip.pl.trajectories(patients, population="Treg", arms=["PBO"])
    with pytest.raises(ImmunoprofileError, match="no change_vs_control row for sim/Treg"):
        ip.pl.boxplots(subsets, population="Treg", contrast_type="change_vs_control",
                       results=da[da["population"] != "Treg"])
    with pytest.raises(ImmunoprofileError, match="measure"):
        ip.pl.trajectories(patients, population="Treg", measure="pct")
