"""Count-aware abundance: the binomial GLMM, absolute counts, complements and FDR families."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import immunoprofile as ip
from immunoprofile.datasets import simulate_counts
from immunoprofile.errors import ImmunoprofileError
from immunoprofile.tl._glmm import fit_binomial_glmm


def test_glmm_recovers_the_simulated_model() -> None:
    """On data drawn from the model itself the fit gives back its parameters."""
    rng = np.random.default_rng(3)
    n_patients, n_cells = 40, 4
    patient = np.repeat(np.arange(n_patients), n_cells)
    cell = np.tile(np.arange(n_cells), n_patients)
    X = np.eye(n_cells)[cell]
    beta = np.array([-3.0, -2.5, -3.5, -1.0])
    eta = X @ beta + rng.normal(0, 0.5, n_patients)[patient] + rng.normal(0, 0.3, len(cell))
    trials = rng.integers(500, 3000, len(cell)).astype(float)
    successes = rng.binomial(trials.astype(int), 1 / (1 + np.exp(-eta))).astype(float)
    est, cov, warning, info = fit_binomial_glmm(successes, trials, X, patient)
    se = np.sqrt(np.diag(cov))
    assert warning == ""
    assert np.all(np.abs(est - beta) < 3 * se + 0.05)
    assert 0.3 < info["sd_patient"] < 0.7 and 0.2 < info["sd_sample"] < 0.4


def test_glmm_is_the_default_and_lmm_logit_stays_available() -> None:
    sim = simulate_counts(seed=2, effects={("Treg", "IL2", "W12"): np.log(1.5)})
    glmm = ip.tl.differential_abundance(sim.subsets, control="SOC", baseline="W0")
    lmm = ip.tl.differential_abundance(sim.subsets, control="SOC", baseline="W0",
                                       model="lmm_logit")
    assert glmm["model"].str.startswith("glmm_binomial").all()
    assert lmm["model"].str.startswith("lmm_logit").all()
    key = ["population", "contrast_type", "arm", "timepoint"]
    both = glmm.merge(lmm, on=key, suffixes=("", "_lmm"))
    # Same question, two models: the estimates agree closely on well-populated counts.
    assert np.corrcoef(both["estimate"], both["estimate_lmm"])[0, 1] > 0.95
    with pytest.raises(ImmunoprofileError, match="lmm_logit"):
        ip.tl.differential_abundance(sim.subsets, control="SOC", baseline="W0", model="glm")


def test_rare_counts_weigh_what_they_support() -> None:
    """A population at a handful of events per sample: the GLMM's interval is honest about
    it (wider than a well-counted population's), and zeros are counts, not log(½/n)."""
    sim = simulate_counts(seed=4, populations={"Plasma cells": 0.2, "B cells": 9.0},
                          parent_count=(1000, 3000))
    da = ip.tl.differential_abundance(sim.subsets, control="SOC", baseline="W0")
    width = (da["ci_high"] - da["ci_low"]).groupby(da["population"]).median()
    assert width["Plasma cells"] > 2 * width["B cells"]
    assert (sim.subsets["count"] == 0).any() or (sim.subsets["count"] < 5).any()
    assert da["pvalue"].notna().all()


def test_absolute_counts_are_modelled_where_given() -> None:
    sim = simulate_counts(seed=5, lymphocytes_per_ul=1500.0,
                          effects={("B cells", "TEL", "W12"): np.log(0.5)})
    da = ip.tl.differential_abundance(sim.subsets, control="SOC", baseline="W0",
                                      reference=("parent", "absolute"))
    absolute = da[da["reference"] == "absolute"]
    assert len(absolute) and absolute["model"].str.startswith("lmm_log_abs").all()
    row = absolute[(absolute["population"] == "B cells") & (absolute["arm"] == "TEL")
                   & (absolute["contrast_type"] == "change_vs_control")
                   & (absolute["timepoint"] == "W12")].iloc[0]
    # log OR −0.69 at 9% is a log fold change of about −0.64 in cells/µL
    assert row["ci_low"] < -0.64 < row["ci_high"] and row["estimate"] < -0.3
    # no absolute rows where the table has no absolute counts
    plain = ip.tl.differential_abundance(simulate_counts(seed=5).subsets, control="SOC",
                                         baseline="W0", reference=("parent", "absolute"))
    assert set(plain["reference"]) == {"parent"}


def _with_complement(subsets: pd.DataFrame) -> pd.DataFrame:
    """Treg and its complement within a parent (conventional CD4 = parent − Treg)."""
    treg = subsets[subsets["population"] == "Treg"].copy()
    treg["parent"] = "CD4+ T cells"
    conv = treg.copy()
    conv["population"] = "Conventional CD4"
    conv["count"] = treg["parent_count"] - treg["count"]
    conv["pct_parent"] = 100 * conv["count"] / conv["parent_count"]
    return pd.concat([treg, conv], ignore_index=True)


def test_complements_are_reported_once() -> None:
    sim = simulate_counts(seed=6, effects={("Treg", "IL2", "W12"): np.log(1.6)})
    table = _with_complement(sim.subsets)
    assert ip.tl.complements(table) == {("sim", "Conventional CD4"): "Treg"}
    da = ip.tl.differential_abundance(table, control="SOC", baseline="W0")
    treg, conv = (da[da["population"] == p].reset_index(drop=True)
                  for p in ("Treg", "Conventional CD4"))
    assert (treg["complement_of"] == "").all() and (conv["complement_of"] == "Treg").all()
    assert conv["fdr"].isna().all() and treg["fdr"].notna().all()
    assert conv["warning"].str.contains("complement of Treg").all()
    # the mirror image: same test, opposite sign
    np.testing.assert_allclose(conv["estimate"], -treg["estimate"], atol=1e-3)
    np.testing.assert_allclose(conv["pvalue"], treg["pvalue"], rtol=1e-2, atol=1e-4)


def test_fdr_families_are_template_by_contrast_type() -> None:
    sim = simulate_counts(seed=7)
    da = ip.tl.differential_abundance(sim.subsets, control="SOC", baseline="W0")
    from statsmodels.stats.multitest import multipletests

    for _, rows in da.groupby(["template", "contrast_type", "reference"]):
        np.testing.assert_allclose(rows["fdr"], multipletests(rows["pvalue"],
                                                              method="fdr_bh")[1])


def test_a_failed_model_still_names_its_contrasts() -> None:
    """Too few patients for a model: rows per contrast with the reason, never an empty
    contrast_type (issue #16)."""
    sim = simulate_counts(seed=8, patients_per_arm=1)
    da = ip.tl.differential_abundance(sim.subsets, control="SOC", baseline="W0")
    assert len(da) and (da["contrast_type"] != "").all()
    assert da["pvalue"].isna().all() and da["warning"].str.contains("too few").all()


def test_plots_draw_a_complement_once() -> None:
    """The effects heatmap shows Treg, not its mirror image as a second row."""
    import immunoprofile.pl  # noqa: F401  (plots load matplotlib only when asked for)

    sim = simulate_counts(seed=6, effects={("Treg", "IL2", "W12"): np.log(1.6)})
    da = ip.tl.differential_abundance(_with_complement(sim.subsets), control="SOC",
                                      baseline="W0")
    fig = ip.pl.effects_heatmap(da)
    rows = {t.get_text() for ax in fig.axes for t in ax.get_yticklabels()}
    assert any("Treg" in r for r in rows)
    assert not any("Conventional CD4" in r for r in rows)


def test_complements_need_the_same_samples_and_a_partner_in_the_table() -> None:
    sim = simulate_counts(seed=6)
    table = _with_complement(sim.subsets)
    # Treg missing at W12: conventional CD4 has samples Treg lacks, so it mirrors nothing
    partial = table[~((table["population"] == "Treg") & (table["timepoint"] == "W12"))]
    assert ip.tl.complements(partial) == {}
    # asked for conventional CD4 alone, it is the population reported, not a mirror
    alone = ip.tl.differential_abundance(table, control="SOC", baseline="W0",
                                         populations=["Conventional CD4"])
    assert (alone["complement_of"] == "").all() and alone["fdr"].notna().all()
    # a population at 0 everywhere beside one equal to the parent: nothing hidden
    empty = table[table["population"] == "Treg"].assign(population="Empty", count=0)
    whole = empty.assign(population="Whole", count=empty["parent_count"])
    assert ip.tl.complements(pd.concat([empty, whole])) == {}


def test_glmm_falls_back_when_a_covariate_separates() -> None:
    """A batch whose counts are all 0 has no finite log odds: the readout is still tested
    (empirical-logit LMM), said in the warning."""
    sim = simulate_counts(seed=9, populations={"Plasma cells": 0.3},
                          parent_count=(300, 600)).subsets
    sim["batch"] = np.where(sim.index % 7 == 0, "B2", "B1")
    sim.loc[sim["batch"] == "B2", "count"] = 0
    da = ip.tl.differential_abundance(sim, control="SOC", baseline="W0", covariates=["batch"])
    assert da["pvalue"].notna().all()
    assert da["warning"].str.contains("binomial GLMM failed").all()
    assert da["warning"].str.contains("fitted as the empirical-logit LMM").all()


def test_headlines_count_exploratory_findings_on_the_main_question() -> None:
    from immunoprofile.demo import headline_findings

    rows = [("NK cells", "change_vs_control", 0.001), ("Treg", "change_from_baseline", 0.01)]
    table = pd.DataFrame([{"template": "t", "population": p, "contrast_type": k, "arm": "IL2",
                           "reference_arm": "SOC" if k == "change_vs_control" else "",
                           "timepoint": "W2", "baseline": "W0", "estimate": 0.3, "fdr": q,
                           "pvalue": q / 2, "reference": "parent"} for p, k, q in rows])
    lines = headline_findings(table, endpoints=["Treg"])["IL2"]
    assert lines[0].startswith("Treg up") and "within the arm" in lines[0]
    assert lines[-1].startswith("1 other population")


def test_a_reference_the_template_quotes_is_tested_even_when_not_an_ancestor() -> None:
    """pct_of may name a non-ancestor (the plasma template's plasmablasts, gated from
    lymphocytes and blasts, per live lymphocyte): the frequency among it is tested when the
    table quotes it (`pct_of_<reference>`) and its counts are never below the population's;
    a population not quoted against it is not."""
    sim = simulate_counts(seed=2).subsets
    live = sim[sim["population"] == "Treg"].copy()
    live["population"], live["count"] = "Live lymphocytes", live["parent_count"] * 10
    live["parent_count"] = live["count"] * 2
    table = pd.concat([sim, live], ignore_index=True)
    pb = table["population"] == "Plasmablasts"
    table.loc[pb, "parent"] = "B lineage"
    by_sample = live.set_index("sample_id")["count"]
    table.loc[pb, "pct_of_live_lymphocytes"] = (
        100 * table.loc[pb, "count"] / table.loc[pb, "sample_id"].map(by_sample))
    da = ip.tl.differential_abundance(table, control="SOC", baseline="W0",
                                      reference=("parent", "Live lymphocytes"))
    among_live = set(da.loc[da["reference"] == "Live lymphocytes", "population"])
    assert among_live == {"Plasmablasts"}
    # counts above the reference's somewhere: no binomial frequency, no rows
    first = pb & (table["sample_id"] == table.loc[pb, "sample_id"].iloc[0])
    table.loc[first, "parent_count"] = 10**9
    table.loc[first, "count"] = 10**8
    da = ip.tl.differential_abundance(table, control="SOC", baseline="W0",
                                      reference=("parent", "Live lymphocytes"))
    assert "Live lymphocytes" not in set(da["reference"])
