"""Arm × time comparisons: calibration under the null, interval coverage, power, and the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import immunoprofile as ip
from immunoprofile.datasets import simulate_counts
from immunoprofile.tl._models import RESULT_COLUMNS

KEYS = ["population", "contrast_type", "arm", "reference_arm", "timepoint", "baseline"]


@pytest.fixture(scope="module")
def null_pvalues() -> tuple[np.ndarray, np.ndarray]:
    """p-values of every contrast on 8 null trials (4 arms × 8 patients × 3 visits)."""
    abundance, state = [], []
    for seed in range(8):
        sim = simulate_counts(seed=seed)
        abundance.append(ip.tl.differential_abundance(sim.subsets, control="SOC",
                                                      baseline="W0")["pvalue"].to_numpy())
        state.append(ip.tl.differential_state(sim.subsets, control="SOC",
                                              baseline="W0")["pvalue"].to_numpy())
    return np.concatenate(abundance), np.concatenate(state)


def test_calibrated_under_the_null(null_pvalues) -> None:
    abundance, state = null_pvalues
    assert len(abundance) >= 500 and len(state) >= 500
    for p in (abundance, state):
        assert np.isfinite(p).all()
        assert 0.02 <= (p < 0.05).mean() <= 0.08
        # Not just the tail: p-values are close to uniform.
        assert 0.40 <= np.mean(p) <= 0.60


def test_result_columns_are_the_public_interface() -> None:
    sim = simulate_counts(seed=1, patients_per_arm=4)
    da = ip.tl.differential_abundance(sim.subsets, control="SOC", baseline="W0",
                                      pairs=["COMBO:IL2"], covariates=["week"])
    assert list(da.columns[:len(RESULT_COLUMNS)]) == RESULT_COLUMNS
    assert da["warning"].str.contains("week confounded with arm×timepoint").all()
    assert set(da["contrast_type"]) == {"arm_vs_control", "change_from_baseline",
                                        "change_vs_control", "change_vs_arm"}
    pair = da[da["contrast_type"] == "change_vs_arm"]
    assert set(pair["arm"]) == {"COMBO"} and set(pair["reference_arm"]) == {"IL2"}
    ds = ip.tl.differential_state(sim.subsets, control="SOC", baseline="W0")
    assert "marker" in ds.columns and set(ds["marker"]) == {"CD25"}
    assert ds["model"].str.startswith("lmm_log_mfi").all()


def test_names_come_from_the_sheet() -> None:
    sim = simulate_counts(seed=2, arms=("Drug A", "placebo"), control="placebo",
                          timepoints=("day 1", "day 30"), patients_per_arm=5)
    da = ip.tl.differential_abundance(sim.subsets, control="placebo", baseline="day 1")
    assert set(da["arm"]) == {"Drug A", "placebo"}
    with pytest.raises(ip.ImmunoprofileError, match="control arm 'SOC' is not in the data"):
        ip.tl.differential_abundance(sim.subsets, control="SOC", baseline="day 1")


@pytest.mark.slow
def test_confidence_intervals_cover_the_planted_effect() -> None:
    """200 count-level trials of the 4-arm design; every contrast's 95% CI against its true
    log odds ratio (IL-2 and combination effects planted, telitacicept and control flat)."""
    effects = {("Treg", "IL2", "W2"): 0.59, ("Treg", "IL2", "W12"): 0.34,
               ("Treg", "COMBO", "W2"): 0.59, ("Treg", "COMBO", "W12"): 0.34}
    covered = []
    for seed in range(200):
        sim = simulate_counts(seed=10_000 + seed, populations={"Treg": 4.5}, effects=effects,
                              patients_per_arm=8)
        da = ip.tl.differential_abundance(sim.subsets, control="SOC", baseline="W0")
        truth = sim.expected[sim.expected["readout"] == "abundance"]
        merged = da.merge(truth, on=KEYS)
        assert len(merged) == len(truth)
        covered.append(((merged["ci_low"] <= merged["expected"])
                        & (merged["expected"] <= merged["ci_high"])).to_numpy())
    rate = np.concatenate(covered).mean()
    print(f"\n95% CI coverage over 200 trials: {rate:.3f}")
    assert 0.90 <= rate <= 0.98


def _truth_subsets(cohort) -> pd.DataFrame:
    """The cohort's true per-sample counts in the subset-table shape (template = tube)."""
    truth = cohort.truth.copy()
    truth["template"] = truth["panel"]
    truth["timepoint"] = pd.Categorical(truth["timepoint"], ordered=True, categories=list(
        truth.sort_values("week")["timepoint"].unique()))
    return truth


@pytest.mark.slow
def test_planted_effects_are_found_on_the_default_cohort(default_cohort) -> None:
    subsets = _truth_subsets(default_cohort)
    assert subsets.groupby("arm", observed=True)["patient_id"].nunique().min() >= 8
    da = ip.tl.differential_abundance(subsets, control="SOC", baseline="W0",
                                      reference=("parent", "Live lymphocytes"))
    hits = da[da["fdr"] < 0.05]

    def found(population: str, arms: list[str], sign: int, reference: str, weeks: list[str],
              kind: str = "change_vs_control") -> None:
        for arm in arms:
            rows = hits[(hits["population"] == population) & (hits["arm"] == arm)
                        & (hits["reference"] == reference) & (hits["contrast_type"] == kind)
                        & hits["timepoint"].isin(weeks)]
            assert len(rows), f"{population} not found in {arm} ({kind}, {reference})"
            assert (np.sign(rows["estimate"]) == sign).all()

    found("Treg", ["IL2", "COMBO"], +1, "parent", ["W2"])
    found("B cells", ["TEL", "COMBO"], -1, "parent", ["W12", "W24"])  # parent: live lymphs
    found("Plasmablasts", ["TEL", "COMBO"], -1, "Live lymphocytes", ["W12", "W24"])
    control = hits[(hits["arm"] == "SOC") & (hits["contrast_type"] == "change_from_baseline")
                   & hits["population"].isin(["Treg", "B cells", "Plasmablasts"])]
    assert control.empty, control


@pytest.mark.slow
def test_null_fcs_cohort_is_calibrated(tmp_path: Path) -> None:
    """One full FCS-level trial with no treatment effect: simulate → gate → compare."""
    from immunoprofile.batch import BatchSettings, gate_samples
    from immunoprofile.datasets import simulate_cohort

    cohort = simulate_cohort(tmp_path / "null", arms=("PBO", "SOC"), patients_per_arm=5,
                             n_events=15_000, visits=(0, 12), seed=5)
    run = gate_samples(cohort.out / "samplesheet.csv", ["treg", "bcell"], tmp_path / "run",
                       workers=2, settings=BatchSettings(plots=False))
    assert run.exit_code == 0
    da = ip.tl.differential_abundance(run.subsets, control="SOC", baseline="W0")
    p = da["pvalue"].dropna()
    print(f"\nnull FCS cohort: {len(p)} tests, {(p < 0.05).mean():.3f} with p < 0.05")
    assert len(p) >= 50
    assert (p < 0.05).mean() <= 0.12  # a single small trial: a loose band


def test_response_tracking() -> None:
    sim = simulate_counts(seed=3, effects={("Treg", "IL2", "W2"): 1.2},
                          arms=("IL2", "SOC"), patients_per_arm=8)
    patients, summary = ip.tl.response(sim.subsets, baseline="W0", responder="Treg>=1.5")
    base = patients[patients["timepoint"] == "W0"]
    assert np.allclose(base["fold_change"], 1.0)
    il2 = summary[(summary["arm"] == "IL2") & (summary["population"] == "Treg")
                  & (summary["timepoint"] == "W2")].iloc[0]
    soc = summary[(summary["arm"] == "SOC") & (summary["population"] == "Treg")
                  & (summary["timepoint"] == "W2")].iloc[0]
    assert il2["fold_change"] > 1.5 > soc["fold_change"]
    assert il2["ci_low"] < il2["fold_change"] < il2["ci_high"]
    assert il2["n_responders"] > soc["n_responders"]
    row = patients[(patients["population"] == "Treg") & (patients["timepoint"] == "W2")]
    assert (row["responder"] == (row["fold_change"] >= 1.5)).all()
    with pytest.raises(ip.ImmunoprofileError, match="POPULATION>=FOLD"):
        ip.tl.response(sim.subsets, baseline="W0", responder="Treg 1.5")


def test_compare_cli_on_a_run(sim_cohort, tmp_path: Path) -> None:
    from immunoprofile.batch import BatchSettings, gate_samples

    run = tmp_path / "run"
    gate_samples(sim_cohort.out / "samplesheet.csv", ["treg", "bcell", "plasma"], run,
                 workers=2, settings=BatchSettings(plots=False))
    res = subprocess.run([sys.executable, "-m", "immunoprofile.cli", "compare", str(run),
                          "--control", "SOC", "--baseline", "W0", "--pair", "COMBO:IL2",
                          "--covariate", "batch", "--no-plots"],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    out = run / "compare"
    da = pd.read_parquet(out / "differential_abundance.parquet")
    ds = pd.read_parquet(out / "differential_state.parquet")
    assert {"treg", "bcell", "plasma"} <= set(da["template"])
    assert (out / "differential_abundance.csv").is_file()
    assert set(ds["marker"]) >= {"CD25", "FOXP3"}
    assert (out / "response.parquet").is_file() and (out / "response_summary.parquet").is_file()
    schema = subprocess.run([sys.executable, "-m", "immunoprofile.cli", "schema"],
                            capture_output=True, text=True, check=True).stdout
    assert "differential_abundance" in schema and "`reference`" in schema
    assert "`complement_of`" in schema
    # the default is the count model, cells/µL beside it (the sheet gives lymphocyte counts)
    proportions = da[da["reference"] != "absolute"]
    assert proportions["model"].str.startswith("glmm_binomial").all()
    assert da.loc[da["reference"] == "absolute", "model"].str.startswith("lmm_log_abs").any()
    logit = subprocess.run([sys.executable, "-m", "immunoprofile.cli", "compare", str(run),
                            "--control", "SOC", "--baseline", "W0", "--no-plots", "--model",
                            "lmm_logit", "--out", str(tmp_path / "logit")],
                           capture_output=True, text=True, check=False)
    assert logit.returncode == 0, logit.stderr
    again = pd.read_parquet(tmp_path / "logit" / "differential_abundance.parquet")
    assert again.loc[again["reference"] != "absolute", "model"].str.startswith(
        "lmm_logit").all()
