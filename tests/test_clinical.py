"""Clinical table, derived outcomes, censored cytokine models, correlations and the joint CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from statsmodels.regression.mixed_linear_model import MixedLM
from test_compare import _truth_subsets

import immunoprofile as ip
from immunoprofile.clinical import (
    ClinicalTableError,
    derive_outcomes,
    read_clinical,
    responders,
    validate_clinical,
)
from immunoprofile.tl._joint import tobit_fit
from immunoprofile.tl._models import RESULT_COLUMNS

GOOD = """\
patient_id,timepoint,week,arm,sledai,c3,c4,anti_dsdna,igg,iga,igm,proteinuria,prednisone_mg
P1,W0,0,TEL,12,0.70,0.10,200,15,2.8,1.1,0.3,10
P1,W12,12,TEL,6,0.85,0.14,110,13,2.2,0.7,0.2,7.5
P1,W2,2,TEL,,0.72,0.11,190,15,2.7,1.0,NA,10
P2,W0,0,SOC,10,0.80,0.12,90,14,3.0,1.2,0.5,5
P2,W12,12,SOC,8,0.79,0.12,95,14,3.1,1.2,0.4,5
"""


def test_read_clinical_types_units_and_visit_order(tmp_path: Path) -> None:
    path = tmp_path / "clinical.csv"
    path.write_text(GOOD)
    table = read_clinical(path)
    assert list(table["timepoint"].cat.categories) == ["W0", "W2", "W12"]  # by week
    assert table["sledai"].dtype == float and np.isnan(table.loc[2, "sledai"])
    assert np.isnan(table.loc[2, "proteinuria"])  # 'NA' is a missing value
    assert table.attrs["source"] == str(path)
    tsv = tmp_path / "clinical.tsv"
    tsv.write_text(GOOD.replace(",", "\t"))
    pd.testing.assert_frame_equal(read_clinical(tsv), table, check_like=True)


def test_read_clinical_reports_every_problem_with_rows(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(
        "patient_id,timepoint,week,sledai,c3,c4,anti_dsdna,prednisone_mg\n"
        "P1,W0,0,12,0.7,0.1,abc,10\n"  # row 1: non-numeric anti-dsDNA
        "P1,W0,0,120,-0.1,0.1,20,10\n"  # row 2: duplicate visit, SLEDAI > 105, C3 < 0
        "P2,,0,4.5,0.8,x,3,-5\n"  # row 3: empty visit, SLEDAI not whole, C4 text, dose < 0
        "P3,W12,12,-2,0.8,0.1,3,5\n"  # row 4: negative SLEDAI
        "P3,W12b,24,3,0.8,0.1,3,5\n")
    with pytest.raises(ClinicalTableError) as err:
        read_clinical(path)
    text = str(err.value)
    for expected in ("has 9 problem(s)",
                     "row 1 (line 2): anti_dsdna 'abc' is not a number",
                     "patient 'P1' at visit 'W0' appears more than once: row 1 (line 2), "
                     "row 2 (line 3)",
                     "row 2 (line 3): sledai 120 is outside 0–105",
                     "row 2 (line 3): c3 must not be negative (-0.1 g/L)",
                     "row 3 (line 4): empty timepoint",
                     "row 3 (line 4): sledai 4.5 is not a whole number",
                     "row 3 (line 4): c4 'x' is not a number",
                     "row 3 (line 4): prednisone_mg must not be negative (-5 mg/day)",
                     "row 4 (line 5): sledai must not be negative (-2"):
        assert expected in text, text
    assert isinstance(err.value, ip.SampleSheetError)  # a kind of sheet error
    missing = tmp_path / "missing.csv"
    missing.write_text("patient_id,visit,sledai\nP1,W0,3\n")
    with pytest.raises(ClinicalTableError, match=r"missing column\(s\) timepoint"):
        read_clinical(missing)


def _outcome_table() -> pd.DataFrame:
    rows = [  # patient, visit, SLEDAI, new BILAG A, new BILAG B, PGA
        ("A", "W0", 12, 0, 0, 1.5), ("A", "W24", 8, 0, 1, 1.7),  # SRI-4 responder
        ("B", "W0", 12, 0, 0, 1.5), ("B", "W24", 9, 0, 0, 1.0),  # fall of 3: neither
        ("C", "W0", 10, 0, 0, 1.0), ("C", "W24", 4, 1, 0, 0.5),  # new BILAG A
        ("D", "W0", 10, 0, 0, 1.0), ("D", "W24", 4, 0, 2, 0.5),  # two new BILAG B
        ("E", "W0", 10, 0, 0, 1.0), ("E", "W24", 4, 0, 0, 1.3),  # PGA up by 0.3
        ("F", "W0", 10, 0, 0, 1.0), ("F", "W24", None, 0, 0, 1.0),  # SLEDAI missing
    ]
    frame = pd.DataFrame(rows, columns=["patient_id", "timepoint", "sledai", "bilag_new_a",
                                        "bilag_new_b", "pga"])
    frame["arm"] = ["TEL"] * 6 + ["SOC"] * 6
    return validate_clinical(frame)


def test_sledai4_and_sri4() -> None:
    out = derive_outcomes(_outcome_table(), baseline="W0").set_index(["patient_id",
                                                                      "timepoint"])
    w24 = out.xs("W24", level="timepoint")
    assert w24["sledai_change"].tolist()[:5] == [-4, -3, -6, -6, -6]
    assert w24["sledai4_response"].tolist() == [True, False, True, True, True, pd.NA]
    assert w24["sri4_response"].tolist() == [True, False, False, False, False, pd.NA]
    assert out.xs("W0", level="timepoint")["sledai4_response"].isna().all()
    # Without BILAG and PGA there is no SRI-4, only the SLEDAI-4 response.
    plain = derive_outcomes(_outcome_table().drop(columns=["bilag_new_a", "bilag_new_b",
                                                           "pga"]))
    assert "sri4_response" not in plain.columns and "sledai4_response" in plain.columns


def test_responders_per_arm() -> None:
    table = _outcome_table()
    patients = pd.DataFrame({"patient_id": list("ABCDEF"), "arm": ["TEL"] * 3 + ["SOC"] * 3,
                             "timepoint": "W24", "population": "Treg",
                             "responder": [True, True, False, True, False, pd.NA]})
    both = responders(table, patients, rule="Treg>=1.5")
    assert list(both["analysis"].unique()) == ["itt", "completers"]
    # Intention to treat: F, randomised to SOC, has no week-24 verdict: a non-responder.
    itt = both[both["analysis"] == "itt"].set_index(["rule", "arm"])
    assert itt.loc[("SLEDAI-4", "SOC"), "n_patients"] == 3
    assert itt.loc[("SLEDAI-4", "SOC"), "n_without_verdict"] == 1
    assert itt.loc[("SLEDAI-4", "SOC"), "pct_responders"] == pytest.approx(
        100 * itt.loc[("SLEDAI-4", "SOC"), "n_responders"] / 3)
    completers = responders(table, patients, rule="Treg>=1.5", analysis="completers")
    assert completers.equals(both[both["analysis"] == "completers"].reset_index(drop=True))
    out = completers.set_index(["rule", "arm"])
    assert out.loc[("SLEDAI-4", "TEL"), "n_responders"] == 2
    assert out.loc[("SLEDAI-4", "SOC"), "n_patients"] == 2  # F has no verdict
    assert out.loc[("SRI-4", "TEL"), "n_responders"] == 1
    assert out.loc[("Treg>=1.5", "TEL"), "n_responders"] == 2
    assert out.loc[("SLEDAI-4 & Treg>=1.5", "TEL"), "n_responders"] == 1  # A only
    assert set(out["timepoint"]) == {"W24"}


# -- censored cytokines ------------------------------------------------------------------------
def _cytokines(seed: int, effect: float = -0.8, lloq: float = 6.0, patients: int = 40
               ) -> pd.DataFrame:
    """Log-normal concentrations around 6 pg/mL, LLOQ 6: about half the values censored."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(patients):
        arm = ("TEL", "SOC")[i % 2]
        level = np.log(6.0) + rng.normal(0, 0.7)
        for tp in ("W0", "W12", "W24"):
            shift = effect if (arm, tp) == ("TEL", "W24") else 0.0
            conc = float(np.exp(level + shift + rng.normal(0, 0.5)))
            rows.append({"sample_id": f"P{i}_{tp}", "patient_id": f"P{i}", "arm": arm,
                         "timepoint": tp, "analyte": "IL-6", "true": conc,
                         "conc_pg_ml": conc if conc >= lloq else np.nan,
                         "below_lloq": conc < lloq, "above_uloq": False, "lloq": lloq,
                         "uloq": 5000.0})
    return pd.DataFrame(rows)


def test_censored_model_is_closer_to_the_truth_than_lloq2() -> None:
    errors = {"tobit": [], "lloq2": []}
    for seed in range(6):
        table = _cytokines(seed, patients=80)
        assert 0.4 < table["below_lloq"].mean() < 0.75
        for method in errors:
            res = ip.tl.cytokine_comparison(table, control="SOC", baseline="W0", method=method)
            row = res[(res["contrast_type"] == "change_vs_control")
                      & (res["timepoint"] == "W24")].iloc[0]
            assert row["estimate"] < 0  # the direction is right either way
            errors[method].append(row["estimate"] + 0.8)
    bias = {m: float(np.mean(e)) for m, e in errors.items()}
    print(f"\nmean error of the W24 change vs control (truth −0.8): {bias}")
    assert abs(bias["tobit"]) < 0.1
    assert bias["lloq2"] > 0.12  # LLOQ/2 shrinks the fall towards 0
    assert abs(bias["tobit"]) < abs(bias["lloq2"])
    res = ip.tl.cytokine_comparison(_cytokines(0), control="SOC", baseline="W0")
    assert list(res.columns[:len(RESULT_COLUMNS)]) == RESULT_COLUMNS
    assert set(res["template"]) == {"cytokines"} and set(res["population"]) == {"IL-6"}
    assert res["model"].str.startswith("tobit_re").all()
    assert (res["n_below_lloq"] > 0).all()


def test_tobit_equals_the_mixed_model_without_censoring() -> None:
    rng = np.random.default_rng(3)
    n_pat, n_vis = 30, 4
    groups = np.repeat(np.arange(n_pat), n_vis)
    X = np.zeros((n_pat * n_vis, n_vis))
    X[np.arange(n_pat * n_vis), np.tile(np.arange(n_vis), n_pat)] = 1
    y = X @ [1, 0.5, 0.2, -0.3] + rng.normal(0, 0.6, n_pat)[groups] + rng.normal(0, 0.4, len(X))
    beta, cov, warning = tobit_fit(y, np.zeros(len(y), int), X, groups.astype(str))
    ml = MixedLM(y, X, groups).fit(reml=False)
    assert warning == ""
    assert np.allclose(beta, ml.fe_params, atol=1e-4)
    # ML's standard errors with the small-sample factor n/(n - k) (#20)
    factor = np.sqrt(len(y) / (len(y) - n_vis))
    assert np.allclose(np.sqrt(np.diag(cov)), ml.bse[:n_vis] * factor, rtol=1e-3)


def test_all_censored_cells_are_answered_on_ranks() -> None:
    table = _cytokines(1, effect=-6.0)  # TEL at W24 far below the LLOQ
    assert table.loc[(table["arm"] == "TEL") & (table["timepoint"] == "W24"),
                     "below_lloq"].all()
    res = ip.tl.cytokine_comparison(table, control="SOC", baseline="W0")
    blind = res[(res["arm"] == "TEL") & (res["timepoint"] == "W24")]
    # The Tobit has no cell mean there; the contrasts are answered on ranks, never left NaN.
    assert len(blind) == 3 and blind["pvalue"].notna().all()
    assert blind["warning"].str.contains("every value censored in TEL@W24").all()
    assert blind["warning"].str.contains("tested on ranks").all()
    assert blind["model"].str.startswith("rank_detectable").all()
    vs_control = blind[blind["contrast_type"] == "arm_vs_control"].iloc[0]
    assert vs_control["pvalue"] < 0.05 and vs_control["estimate"] < -20  # % detectable
    assert res.loc[res["timepoint"] == "W12", "estimate"].notna().all()
    assert res.loc[res["timepoint"] == "W12", "model"].str.startswith("tobit").all()


# -- correlations ------------------------------------------------------------------------------
def test_rmcorr_is_the_ancova_with_patient_as_factor() -> None:
    rng = np.random.default_rng(5)
    patients = np.repeat([f"P{i}" for i in range(12)], 4)
    x = rng.normal(size=48) + np.repeat(rng.normal(0, 3, 12), 4)
    y = 0.5 * x + np.repeat(rng.normal(0, 3, 12), 4) + rng.normal(size=48)
    r, lo, hi, p, n, k = ip.tl.rmcorr(x, y, patients)
    fit = smf.ols("y ~ C(p) + x", data=pd.DataFrame({"x": x, "y": y, "p": patients})).fit()
    table = fit.model.exog_names
    ss_x = fit.params["x"] ** 2 * np.sum((x - pd.Series(x).groupby(patients).transform("mean"))
                                         ** 2)
    assert "x" in table and n == 48 and k == 12
    assert np.isclose(r, np.sign(fit.params["x"]) * np.sqrt(ss_x / (ss_x + fit.ssr)))
    assert np.isclose(p, fit.pvalues["x"])
    assert lo < r < hi


def _small_joint() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Subsets (one linked, one unlinked) and a clinical table over 20 patients × 4 visits."""
    rng = np.random.default_rng(7)
    subsets, clinical = [], []
    for i in range(20):
        pb0, dna0 = rng.normal(0, 0.8), rng.normal(0, 0.8)
        for w in (0, 2, 12, 24):
            pb = pb0 + rng.normal(0, 0.4)
            for pop, value in (("Plasmablasts", np.exp(1 + pb)),
                               ("Treg", np.exp(1.5 + rng.normal(0, 0.3)))):
                subsets.append({"template": "bcell" if pop == "Plasmablasts" else "treg",
                                "population": pop, "patient_id": f"P{i}", "arm": "SOC",
                                "timepoint": f"W{w}", "pct_parent": value, "measured": True})
            clinical.append({"patient_id": f"P{i}", "arm": "SOC", "timepoint": f"W{w}",
                             "week": w, "sledai": int(rng.integers(2, 15)),
                             "anti_dsdna": float(np.exp(4 + dna0 + 0.8 * pb
                                                        + rng.normal(0, 0.2)))})
    return pd.DataFrame(subsets), validate_clinical(pd.DataFrame(clinical))


def test_correlations_find_the_linked_pair_only() -> None:
    subsets, clinical = _small_joint()
    out = ip.tl.correlations(subsets, clinical=clinical)
    assert {"subset", "variable", "kind", "method", "timepoint", "r", "ci_low", "ci_high",
            "pvalue", "fdr", "n_samples", "n_patients"} <= set(out.columns)
    rm = out[out["method"] == "rmcorr"].set_index(["population", "variable"])
    assert rm.loc[("Plasmablasts", "anti_dsdna"), "fdr"] < 0.05
    assert rm.loc[("Plasmablasts", "anti_dsdna"), "r"] > 0.5
    assert rm.loc[("Treg", "anti_dsdna"), "fdr"] > 0.05
    assert (rm["timepoint"] == "").all() and set(rm["transform"]) == {"log / log",
                                                                       "log / identity"}
    sp = out[out["method"] == "spearman"]
    assert list(dict.fromkeys(sp["timepoint"])) == ["W0", "W2", "W12", "W24"]
    assert (sp["n_samples"] == 20).all() and set(out["kind"]) == {"clinical"}


def test_clinical_plots(tmp_path: Path) -> None:
    subsets, clinical = _small_joint()
    fig = ip.pl.clinical_trajectories(clinical, "anti_dsdna", save=tmp_path / "dna.png")
    gids = {line.get_gid() for line in fig.axes[0].get_lines()}
    assert "median:SOC" in gids and "patient" in gids
    assert (tmp_path / "dna.png").stat().st_size > 5_000
    cyto = _cytokines(2)
    fig = ip.pl.clinical_trajectories(cyto, "IL-6", save=tmp_path / "il6.png")
    assert any(c.get_gid() == "censored" for c in fig.axes[0].collections)
    corr = ip.tl.correlations(subsets, clinical=clinical)
    fig = ip.pl.correlation_heatmap(corr, save=tmp_path / "heat.png")
    assert fig.axes[0].images[0].get_gid() == "correlations"
    assert (tmp_path / "heat.png").is_file()
    with pytest.raises(ip.ImmunoprofileError, match="not a column"):
        ip.pl.clinical_trajectories(clinical, "c3")


# -- the simulated trial -----------------------------------------------------------------------
@pytest.mark.slow
def test_planted_clinical_effects_and_links_on_the_default_cohort(default_cohort) -> None:
    clinical = read_clinical(default_cohort.out / "clinical.csv")
    assert len(clinical) == len(default_cohort.design) * 5
    res = ip.tl.clinical_comparison(clinical, control="SOC", baseline="W0")
    w24 = res[(res["contrast_type"] == "change_vs_control") & (res["timepoint"] == "W24")]
    tel = w24[w24["arm"] == "TEL"].set_index("population")
    print("\nTEL vs SOC, change from W0 at W24:\n"
          + tel[["estimate", "ci_low", "ci_high", "fdr"]].round(4).to_string())
    for variable, sign in (("igm", -1), ("anti_dsdna", -1), ("c4", +1)):
        assert tel.loc[variable, "fdr"] < 0.05, variable
        assert np.sign(tel.loc[variable, "estimate"]) == sign, variable
    # SLEDAI falls more than under standard of care in every treated arm (planted medians).
    sledai = w24[w24["population"] == "sledai"].set_index("arm")["estimate"]
    assert (sledai[["TEL", "IL2", "COMBO"]] < 0).all(), sledai
    assert set(res.loc[res["population"] == "sledai", "model"]) == {
        "lmm: value, arm×timepoint, patient random intercept"}

    corr = ip.tl.correlations(_truth_subsets(default_cohort), clinical=clinical)
    pb = corr[(corr["population"] == "Plasmablasts") & (corr["method"] == "rmcorr")]
    print("plasmablasts, rmcorr:\n" + pb[["subset", "variable", "r", "pvalue", "fdr"]]
          .round(5).to_string())
    linked = pb[pb["variable"] == "anti_dsdna"]
    assert (linked["fdr"] < 0.05).any() and (linked["r"] > 0).all()
    unlinked = corr[(corr["population"] == "Plasmablasts")
                    & (corr["variable"] == "proteinuria")]
    assert len(unlinked) and (unlinked["fdr"] >= 0.05).all()


@pytest.mark.slow
def test_compare_cli_with_clinical_table(sim_cohort, tmp_path: Path) -> None:
    from immunoprofile.batch import BatchSettings, gate_samples

    sheet = pd.read_csv(sim_cohort.out / "samplesheet.csv")
    bcell = sim_cohort.out / "samplesheet_bcell.csv"
    sheet[sheet["panel"] == "bcell"].to_csv(bcell, index=False)
    run = tmp_path / "run"
    gate_samples(bcell, ["bcell", "plasma"], run, workers=2,
                 settings=BatchSettings(plots=False))
    res = subprocess.run([sys.executable, "-m", "immunoprofile.cli", "compare", str(run),
                          "--control", "SOC", "--baseline", "W0", "--responder", "B cells<=0.8",
                          "--clinical", str(sim_cohort.out / "clinical.csv")],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert "clinical tests" in res.stdout
    out = run / "compare"
    clinical = pd.read_parquet(out / "clinical.parquet")
    assert list(clinical.columns[:len(RESULT_COLUMNS)]) == RESULT_COLUMNS
    assert set(clinical["template"]) == {"clinical"}
    assert {"sledai", "c3", "c4", "anti_dsdna", "igm"} <= set(clinical["population"])
    assert (out / "clinical.csv").is_file()
    corr = pd.read_parquet(out / "correlations.parquet")
    assert {"bcell", "plasma"} <= set(corr["template"])
    assert set(corr["method"]) == {"spearman", "rmcorr"}
    responders_csv = pd.read_csv(out / "responders.csv")
    assert {"SLEDAI-4", "SRI-4", "B cells<=0.8", "SLEDAI-4 & B cells<=0.8"} <= set(
        responders_csv["rule"])
    assert (out / "plots" / "clinical_sledai.png").is_file()
    assert (out / "plots" / "correlations_rmcorr.png").is_file()


def test_values_between_lod_and_lloq_enter_the_model_as_measured() -> None:
    """Serum levels under a 20 pg/mL LLOQ: with a LoD of 2 pg/mL the values in between are
    reported (flagged below_lloq) and observed in the Tobit, censored only below the LoD."""
    full = _cytokines(5, effect=-1.2, lloq=1e-9)  # around 6 pg/mL, nothing censored yet
    conc = full["conc_pg_ml"].to_numpy(float)
    table = full.assign(conc_pg_ml=np.where(conc >= 2.0, conc, np.nan), lloq=20.0,
                        below_lloq=conc < 20.0, lod=2.0, below_lod=conc < 2.0)
    assert table["below_lloq"].mean() > 0.8
    res = ip.tl.cytokine_comparison(table, control="SOC", baseline="W0")
    assert res["model"].str.startswith("tobit").all()  # not the >80%-censored rank fallback
    assert (res["n_below_lod"] < 0.3 * len(table)).all()
    assert (res["n_below_lloq"] > 0.8 * len(table)).all()
    assert res["pvalue"].notna().all()
    # the same table read as before the LoD existed is censored at the LLOQ: ranks only
    old = table.drop(columns=["lod", "below_lod"]).assign(
        conc_pg_ml=np.where(conc >= 20.0, conc, np.nan))
    res_old = ip.tl.cytokine_comparison(old, control="SOC", baseline="W0")
    assert res_old["model"].str.startswith("rank_detectable").all()


def test_a_blank_arm_is_no_arm() -> None:
    """A clinical row whose arm cell is blank (and no sheet gives one) belongs to no arm: it
    is dropped, not counted as an arm named ''."""
    from immunoprofile.clinical import attach_arms

    table = pd.DataFrame({"patient_id": ["A", "B", "C"], "timepoint": "W0",
                          "arm": ["TEL", "", "  "], "sledai": [8, 6, 10]})
    out = attach_arms(table)
    assert out["patient_id"].tolist() == ["A"]
    filled = attach_arms(table, {"B": "SOC"})
    assert sorted(filled["patient_id"]) == ["A", "B"]
