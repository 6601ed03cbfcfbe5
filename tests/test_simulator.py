"""The simulated trial cohort: files FlowKit can read, truth that matches the labels, planted
effects, determinism and the accuracy of the canonical default gates on compensated data."""

from __future__ import annotations

import filecmp
import math
import subprocess
import sys
import time
from pathlib import Path

import flowkit as fk
import numpy as np
import pandas as pd
import pytest

from immunoprofile.datasets import (
    POPULATIONS,
    days_since_last_il2_dose,
    population_members,
    simulate_cohort,
    simulate_tube,
    tube_labels,
)
from immunoprofile.io.fcs_write import write_fcs

SHEET_COLUMNS = ["sample_id", "path", "patient_id", "arm", "timepoint", "week", "batch", "panel",
                 "lymphocytes_per_ul", "days_since_last_il2_dose"]


@pytest.fixture(scope="session")
def gating_cohort(tmp_path_factory):
    """Few samples with enough events for per-sample gate accuracy (and every file checked)."""
    return simulate_cohort(tmp_path_factory.mktemp("gating"), patients_per_arm=2,
                           n_events=60_000, visits=(0, 12), seed=7)


@pytest.fixture(scope="session")
def effect_cohort(tmp_path_factory):
    """Many patients with modest event counts, for arm-level effects."""
    return simulate_cohort(tmp_path_factory.mktemp("effects"), patients_per_arm=10,
                           n_events=20_000, visits=(0, 2, 12), seed=3)


def _sample(cohort, sample_id: str) -> fk.Sample:
    return fk.Sample(cohort.out / "fcs" / f"{sample_id}.fcs")


def _labels(cohort, sample_id: str) -> pd.DataFrame:
    return pd.read_parquet(cohort.out / "fcs" / f"{sample_id}.labels.parquet")


# --- files and tables -----------------------------------------------------------------------

def test_samplesheet_layout(gating_cohort):
    ss = pd.read_csv(gating_cohort.out / "samplesheet.csv")
    assert list(ss.columns) == SHEET_COLUMNS
    assert ss["sample_id"].is_unique
    assert len(ss) == 4 * 2 * 2 * 2  # arms × patients × visits × tubes
    assert set(ss["panel"]) == {"treg", "bcell"}
    assert set(ss["timepoint"]) == {"W0", "W12"}
    assert ss["sample_id"].str.fullmatch(r"P\d{3}_W\d+_(treg|bcell)").all()
    for path in ss["path"]:
        assert (gating_cohort.out / path).is_file()
    # Each visit's two tubes share batch and blood count; batches hold 4-8 files.
    visit = ss.groupby(["patient_id", "week"])
    assert (visit["batch"].nunique() == 1).all()
    assert (visit["lymphocytes_per_ul"].nunique() == 1).all()
    assert ss.groupby("batch").size().between(4, 8).all()
    assert ss["lymphocytes_per_ul"].between(100, 10_000).all()


def test_il2_schedule_is_recorded(effect_cohort):
    assert math.isnan(days_since_last_il2_dose(0))
    assert [days_since_last_il2_dose(w) for w in (2, 4, 12, 24)] == [2, 16, 16, 100]
    ss = effect_cohort.samplesheet
    il2 = ss[ss["arm"].isin(["IL2", "COMBO"]) & (ss["week"] > 0)]
    assert il2["days_since_last_il2_dose"].notna().all()
    assert ss[ss["arm"].isin(["TEL", "SOC"])]["days_since_last_il2_dose"].isna().all()


def test_population_hierarchy_is_consistent():
    for tube, pops in POPULATIONS.items():
        members = population_members(tube)
        vocab = set(tube_labels(tube))
        assert set(members) == {name for name, _ in pops}
        for name, parent in pops:
            assert set(members[name]) <= vocab
            if parent:
                assert set(members[name]) <= set(members[parent]), (tube, name)
    b = population_members("bcell")
    subsets = ("Naive B", "Unswitched memory B", "Switched memory B", "Double negative B")
    assert sorted(leaf for s in subsets for leaf in b[s]) == sorted(b["Mature B cells"])
    assert set(b["Transitional B"]) <= set(b["Naive B"])
    t = population_members("treg")
    assert sorted(t["Treg"] + t["Conventional CD4"]) == sorted(t["CD4+ T cells"])


def test_flowkit_reads_every_file(gating_cohort):
    for sid in gating_cohort.samplesheet["sample_id"]:
        sample = _sample(gating_cohort, sid)
        assert sample.version == "3.1"
        assert sample.event_count == 60_000
        assert "spillover" in sample.metadata
        assert sample.pnn_labels[:3] == ["FSC-A", "FSC-H", "SSC-A"]
        assert sample.pnn_labels[-1] == "Time"
        assert sample.pns_labels[0] == "" and sample.pns_labels[-1] == ""
        assert float(sample.metadata["p4r"]) == 262144
        assert len(_labels(gating_cohort, sid)) == sample.event_count


def test_compensation_recovers_true_fluorescence(tmp_path):
    tube = simulate_tube("bcell", 5000, seed=11)
    path = write_fcs(tmp_path / "one.fcs", tube.events, tube.pnn, tube.pns,
                     spillover=tube.spillover, metadata={"$DATE": "02-JAN-2024"})
    sample = fk.Sample(path)
    assert sample.pns_labels[3:-1] == tube.pns[3:-1]
    spill = tube.spillover.to_numpy()
    off = spill[~np.eye(len(spill), dtype=bool)]
    assert np.all(np.diag(spill) == 1) and off.min() >= 0 and 0 < off.max() <= 0.3
    sample.apply_compensation(sample.metadata["spillover"])
    comp = sample.get_events(source="comp")
    cols = [sample.pnn_labels.index(c) for c in tube.fluorescence_channels]
    ok = ~tube.clipped
    assert ok.mean() > 0.99
    np.testing.assert_allclose(comp[ok][:, cols], tube.compensated[ok], rtol=1e-5, atol=0.05)
    # ... and the raw data really are mixed: compensation changes values.
    raw = sample.get_events(source="raw")
    assert np.abs(raw[:, cols] - comp[:, cols]).max() > 100


def test_truth_matches_per_event_labels(gating_cohort):
    truth = pd.read_csv(gating_cohort.out / "truth.csv")
    for sid, panel in gating_cohort.samplesheet[["sample_id", "panel"]].itertuples(index=False):
        lab = _labels(gating_cohort, sid)
        assert isinstance(lab["label"].dtype, pd.CategoricalDtype)
        good = lab.loc[~lab["artefact"], "label"].value_counts()
        rows = truth[truth["sample_id"] == sid].set_index("population")
        assert list(rows.index) == [name for name, _ in POPULATIONS[panel]]
        for pop, leaves in population_members(panel).items():
            assert rows.loc[pop, "count"] == good.reindex(leaves, fill_value=0).sum(), (sid, pop)
        live = rows.loc["Live lymphocytes", "count"]
        assert rows["pct_of_live"].to_numpy() == pytest.approx(100 * rows["count"] / live)
        lym_ul = gating_cohort.samplesheet.set_index("sample_id").loc[sid, "lymphocytes_per_ul"]
        assert rows.loc["Live lymphocytes", "true_per_ul"] == pytest.approx(lym_ul)


def test_artefacts_are_time_windows(effect_cohort):
    qc = pd.read_csv(effect_cohort.out / "qc_truth.csv").fillna("")
    share = (qc["artefact"] != "").mean()
    assert 0.07 < share < 0.25
    for sid in qc.loc[qc["artefact"] == "clog", "sample_id"][:5]:
        lab = _labels(effect_cohort, sid)
        time_ch = _sample(effect_cohort, sid).get_events(source="raw")[:, -1]
        assert np.all(np.diff(time_ch) >= 0)
        flagged = np.flatnonzero(lab["artefact"].to_numpy())
        assert 0 < flagged.size < 0.2 * len(lab)
        # One contiguous window in acquisition order, with a slower event rate inside it.
        assert flagged[-1] - flagged[0] + 1 == flagged.size
        window = time_ch[flagged[-1]] - time_ch[flagged[0]]
        rate_in = flagged.size / window
        rate_all = len(lab) / (time_ch[-1] - time_ch[0])
        assert rate_in < 0.5 * rate_all


# --- planted effects ------------------------------------------------------------------------

def _arm_log_ratio(truth: pd.DataFrame, population: str, week: int) -> pd.Series:
    """log(mean % at week / mean % at week 0) per arm, percentages as quoted in DOMAIN."""
    m = (truth[truth["population"] == population]
         .groupby(["arm", "week"])["pct_of_reference"].mean().unstack())
    return np.log(m[week] / m[0])


def test_planted_effects_are_visible(effect_cohort):
    truth = effect_cohort.truth
    treg = _arm_log_ratio(truth, "Treg", 2)
    b = _arm_log_ratio(truth, "B cells", 12)
    pb = _arm_log_ratio(truth, "Plasmablasts", 12)
    assert treg["IL2"] > 0.15 and treg["COMBO"] > 0.15  # IL-2 on-block: ×1.8 in responders
    assert b["TEL"] < -0.10 and b["COMBO"] < -0.10  # telitacicept: B ×0.65 at week 12
    # Plasmablasts fall a little faster than B cells (×0.55 vs ×0.65), so PB % of B dips.
    assert pb["TEL"] < 0 and pb["COMBO"] < 0 and (pb["TEL"] + pb["COMBO"]) / 2 < -0.05
    assert abs(treg["SOC"]) < 0.15 and abs(b["SOC"]) < 0.15 and abs(pb["SOC"]) < 0.2
    assert abs(treg["TEL"]) < 0.15 and abs(b["IL2"]) < 0.15


def test_effects_table(effect_cohort):
    eff = pd.read_csv(effect_cohort.out / "effects.csv")
    assert {"population", "arm", "week", "expected_fold_change"} <= set(eff.columns)
    idx = eff.set_index(["panel", "population", "readout", "arm", "week"]).sort_index()
    assert idx.index.is_unique
    full = idx["full_response_fold_change"]
    assert full[("treg", "Treg", "count", "IL2", 2)] == pytest.approx(1.8)
    assert full[("treg", "Treg", "CD25 MFI", "COMBO", 2)] == pytest.approx(1.8)
    assert full[("bcell", "B cells", "count", "TEL", 12)] < 0.7
    # The geometric mean over patients is smaller: 35% of them get a quarter of the effect.
    assert 1.3 < idx["expected_fold_change"][("treg", "Treg", "count", "IL2", 2)] < 1.8
    assert (idx.xs("SOC", level="arm")["expected_fold_change"] == 1.0).all()


# --- determinism and CLI --------------------------------------------------------------------

def test_same_seed_same_bytes_different_seed_differs(tmp_path):
    kw = {"patients_per_arm": 1, "n_events": 2000, "visits": (0, 2)}
    a = simulate_cohort(tmp_path / "a", seed=5, **kw)
    b = simulate_cohort(tmp_path / "b", seed=5, **kw)
    c = simulate_cohort(tmp_path / "c", seed=6, **kw)
    files = sorted(p.relative_to(a.out) for p in a.out.rglob("*") if p.is_file())
    # FCS + labels per file and five cell tables (serology adds its own files beside them).
    assert len([f for f in files if f.parts[0] == "fcs" and f.suffix == ".fcs"]) == 16
    assert len([f for f in files if f.name.endswith(".labels.parquet")]) == 16
    assert {Path(f"{t}.csv") for t in ("samplesheet", "truth", "effects", "design",
                                       "qc_truth")} <= set(files)
    for rel in files:
        assert filecmp.cmp(a.out / rel, b.out / rel, shallow=False), rel
    assert not filecmp.cmp(a.out / "truth.csv", c.out / "truth.csv", shallow=False)
    assert not filecmp.cmp(a.out / "fcs/P001_W0_treg.fcs", c.out / "fcs/P001_W0_treg.fcs",
                           shallow=False)


def test_events_per_tube(tmp_path):
    """A tube of rare populations acquires more events: ``n_events`` per tube name; the same
    count for both tubes gives the same bytes as one number; a missing tube is an error that
    names the tubes."""
    kw = {"patients_per_arm": 1, "visits": (0,), "arms": ("TEL",), "seed": 2}
    cohort = simulate_cohort(tmp_path / "a", n_events={"treg": 2000, "bcell": 5000}, **kw)
    sheet = pd.read_csv(cohort.out / "samplesheet.csv")
    sizes = {row.panel: fk.Sample(cohort.out / row.path).event_count
             for row in sheet.itertuples()}
    assert sizes == {"treg": 2000, "bcell": 5000}
    same = simulate_cohort(tmp_path / "b", n_events={"treg": 2000, "bcell": 2000}, **kw)
    one = simulate_cohort(tmp_path / "c", n_events=2000, **kw)
    for f in (same.out / "fcs").glob("*.fcs"):
        assert filecmp.cmp(f, one.out / "fcs" / f.name, shallow=False), f.name
    with pytest.raises(ValueError, match=r"treg.*bcell|bcell.*treg"):
        simulate_cohort(tmp_path / "d", n_events={"bcell": 5000}, **kw)


def test_cli_simulate(tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "immunoprofile.cli", "simulate", "--out", str(out),
         "--patients-per-arm", "2", "--events", "2000", "--visits", "0,12"],
        capture_output=True, text=True, check=True, timeout=300)
    assert "Treg % CD4" in proc.stdout and "32 FCS" in proc.stdout
    ss = pd.read_csv(out / "samplesheet.csv")
    assert len(ss) == 4 * 2 * 2 * 2 and sorted(ss["week"].unique()) == [0, 12]
    assert (out / "truth.csv").is_file() and (out / "effects.csv").is_file()
    assert all((out / p).is_file() for p in ss["path"])


# --- the canonical default gates recover the truth --------------------------------------------

def _default_gate_readouts(sample: fk.Sample, artefact: np.ndarray) -> dict[str, float]:
    """DOMAIN §2 starting cut points on compensated arcsinh(x/150) data, plain numpy."""
    sample.apply_compensation(sample.metadata["spillover"])
    ev = sample.get_events(source="comp")[~artefact]
    a = {pns.upper(): np.arcsinh(ev[:, i] / 150) for i, pns in enumerate(sample.pns_labels)
         if pns}
    fsc, fsc_h, ssc = ev[:, 0], ev[:, 1], ev[:, 2]
    lym = (fsc > 35_000) & (fsc < 95_000) & (ssc > 3_000) & (ssc < 35_000)
    live = lym & (fsc_h / fsc > 0.75) & (a["VIABILITY"] < 2.0)
    if "FOXP3" in a:
        cd4 = live & (a["CD3"] > 2.5) & (a["CD4"] > 2.8)
        treg = cd4 & (a["CD25"] > 3.3) & (a["CD127"] < 2.2)
        return {"Treg": 100 * treg.sum() / cd4.sum()}
    b = live & (a["CD3"] < 2.5) & (a["CD19"] > 2.8)
    pb = b & (a["CD20"] < 2.5) & (a["CD27"] > 4.2) & (a["CD38"] > 5.0)
    return {"B cells": 100 * b.sum() / live.sum(), "Plasmablasts": 100 * pb.sum() / b.sum()}


def _default_gate_errors(cohort) -> pd.DataFrame:
    truth = cohort.truth.set_index(["sample_id", "population"])
    rows = []
    for sid in cohort.samplesheet["sample_id"]:
        artefact = _labels(cohort, sid)["artefact"].to_numpy()
        for pop, gated in _default_gate_readouts(_sample(cohort, sid), artefact).items():
            true = truth.loc[(sid, pop)]
            rows.append({"sample_id": sid, "population": pop, "count": true["count"],
                         "rel_err": abs(gated - true["pct_of_reference"])
                         / true["pct_of_reference"]})
    return pd.DataFrame(rows)


@pytest.fixture(scope="session")
def tidy_cohort(tmp_path_factory):
    """The same design in the tidy mode (cleanly separated populations)."""
    return simulate_cohort(tmp_path_factory.mktemp("tidy"), patients_per_arm=2,
                           n_events=60_000, visits=(0, 12), seed=7, realistic=False)


def test_fixed_cuts_fail_on_the_realistic_default_as_on_real_files(gating_cohort):
    # DOMAIN's starting cut points are absolute: on the realistic default they miss most
    # CD20-intermediate plasmablasts and many Treg of the CD25/CD127 continua, as they do on
    # real files. A simulator on which they worked would prove nothing about real files.
    summary = _default_gate_errors(gating_cohort).groupby("population")["rel_err"].median()
    print("\nDOMAIN fixed cuts on the realistic default:\n" + summary.round(3).to_string())
    assert summary["Plasmablasts"] > 0.5 and summary["Treg"] > 0.1
    assert summary["B cells"] < 0.05  # CD3/CD19 stay bimodal


def test_default_gates_recover_truth_in_tidy_mode(tidy_cohort):
    err = _default_gate_errors(tidy_cohort)
    summary = err.groupby("population")["rel_err"].agg(["median", "max", "size"])
    print("\ndefault-gate relative error vs truth:\n" + summary.round(4).to_string())
    assert set(summary.index) == {"Treg", "B cells", "Plasmablasts"}
    assert (summary["median"] < 0.05).all(), summary
    # Per-sample ceiling where the count is large enough to mean something (DOMAIN §5 flags
    # fewer than 50 plasmablasts as rare: one misplaced cell among 20 is already 5%).
    counted = err[err["count"] >= 50]
    assert counted.groupby("population").size().min() >= 8
    assert (counted["rel_err"] < 0.20).all(), counted.sort_values("rel_err").tail()


@pytest.mark.slow
def test_million_event_tube_is_fast():
    start = time.perf_counter()
    tube = simulate_tube("bcell", 1_000_000, seed=0)
    elapsed = time.perf_counter() - start
    assert tube.events.shape == (1_000_000, 13) and tube.events.dtype == np.float32
    assert elapsed < 10, f"1M events took {elapsed:.1f} s"


def test_summary_mentions_arms_and_readouts(gating_cohort):
    text = gating_cohort.summary()
    for word in ("TEL 2", "IL2 2", "COMBO 2", "SOC 2", "32 FCS", "1,920,000 events",
                 "Treg % CD4", "B % live lym", "PB % B"):
        assert word in text, word
    assert isinstance(gating_cohort.out, Path)
