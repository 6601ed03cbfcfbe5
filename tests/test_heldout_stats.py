"""The count-aware default on held-out cohorts: data the GLMM was not written for.

This generator shares nothing with ``immunoprofile.datasets.simulate_counts`` (whose logit-
normal model *is* the GLMM): overdispersion is beta-binomial, patients differ with heavy
tails (t, 4 df), parent counts are log-normal, 10% of visits are missing, and arms are
unbalanced. Planted effects must still be found, and null populations must not be.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit

import immunoprofile as ip

ARMS = {"TEL": 9, "IL2": 7, "COMBO": 8, "SOC": 8}
VISITS = ("W0", "W4", "W12")
# (baseline share, patient scale, beta-binomial precision, parent-count median)
POPS = {"Treg": (0.05, 0.35, 400.0, 9000), "B cells": (0.10, 0.5, 250.0, 20000),
        "Plasmablasts": (0.03, 0.8, 500.0, 1500), "NK cells": (0.12, 0.4, 300.0, 20000),
        "Naive B": (0.55, 0.45, 150.0, 2000)}
# log odds ratios at W4 and W12 (not the simulator's figures)
PLANTED = {("Treg", "IL2"): (0.35, 0.55), ("Treg", "COMBO"): (0.35, 0.55),
           ("B cells", "TEL"): (-0.3, -0.6), ("B cells", "COMBO"): (-0.3, -0.6),
           ("Plasmablasts", "TEL"): (-0.5, -0.9), ("Plasmablasts", "COMBO"): (-0.5, -0.9)}


def heldout_trial(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for arm, n in ARMS.items():
        for k in range(n):
            pid = f"{arm}{k:02d}"
            level = {p: s * rng.standard_t(4) for p, (_, s, _, _) in POPS.items()}
            for v, tp in enumerate(VISITS):
                if v and rng.random() < 0.1:
                    continue  # a missed visit
                for pop, (p0, _, precision, median_n) in POPS.items():
                    effect = PLANTED.get((pop, arm), (0.0, 0.0))
                    eta = logit(p0) + level[pop] + (effect[v - 1] if v else 0.0)
                    p = rng.beta(expit(eta) * precision, (1 - expit(eta)) * precision)
                    parent = int(np.exp(rng.normal(np.log(median_n), 0.4)))
                    count = int(rng.binomial(parent, p))
                    rows.append({"sample_id": f"{pid}_{tp}", "patient_id": pid, "arm": arm,
                                 "timepoint": tp, "template": "heldout", "population": pop,
                                 "parent": "", "count": count, "parent_count": parent})
    table = pd.DataFrame(rows)
    table["timepoint"] = pd.Categorical(table["timepoint"], categories=list(VISITS),
                                        ordered=True)
    return table


@pytest.fixture(scope="module")
def heldout_results() -> pd.DataFrame:
    out = []
    for seed in range(12):
        da = ip.tl.differential_abundance(heldout_trial(seed), control="SOC", baseline="W0")
        out.append(da.assign(seed=seed))
    return pd.concat(out, ignore_index=True)


def test_planted_effects_are_found_on_heldout_cohorts(heldout_results) -> None:
    da = heldout_results
    assert da["model"].str.startswith("glmm_binomial").all()
    w12 = da[(da["contrast_type"] == "change_vs_control") & (da["timepoint"] == "W12")]
    by_fdr = []
    for (pop, arm), (_, effect) in PLANTED.items():
        rows = w12[(w12["population"] == pop) & (w12["arm"] == arm)]
        right_way = np.sign(rows["estimate"]) == np.sign(effect)
        found = ((rows["pvalue"] < 0.05) & right_way).mean()
        assert found >= 0.75, (pop, arm, found)
        by_fdr.append(((rows["fdr"] < 0.05) & right_way).mean())
        # the interval holds the planted value in most trials
        held = ((rows["ci_low"] <= effect) & (effect <= rows["ci_high"])).mean()
        assert held >= 0.75, (pop, arm, held)
    # after FDR control over the family (5 populations × 3 arms × 2 visits)
    assert np.mean(by_fdr) >= 0.6, by_fdr


def test_no_effect_where_none_was_planted(heldout_results) -> None:
    da = heldout_results
    planted_keys = set(PLANTED)
    # populations no drug moved in that arm (every arm's own change from baseline, and its
    # change beyond the control's)
    unmoved = [(p, a) not in planted_keys for p, a in zip(da["population"], da["arm"])]
    null = da[da["contrast_type"].isin(["change_vs_control", "change_from_baseline"])
              & np.array(unmoved)]
    assert len(null) >= 300
    share = float((null["pvalue"] < 0.05).mean())
    assert 0.01 <= share <= 0.08, share
    assert float((null["fdr"] < 0.05).mean()) <= 0.03
