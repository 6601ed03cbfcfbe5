"""Null calibration of the comparison models, with a generator of its own.

Every scenario simulates a randomised trial with **no** arm or time effect (4 arms × 8 patients
× 3 visits by default) and feeds it through the public tools (``differential_abundance``,
``differential_state``, ``cytokine_comparison``). Under the null the p-values are uniform: the
share below 0.05 should be 3–7% and their mean 0.45–0.55.

The data do not come from the fitted model (that would make the check unable to fail for the
reasons it exists): counts are beta-binomial with zero, small or large patient variance
(overdispersion the logit-normal model only approximates), parent counts vary 100-fold between
samples, rare populations have ≈ 15 events, MFIs are log-normal with or without patient
variance, and cytokines are log-normal with 30%, 60% or 85% of values below the LLOQ.

Run: ``python benchmarks/bench_calibration.py [--sims 40] [--seed 0]``; prints one row per
scenario and model. ``tests/test_calibration.py`` runs a small version.
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

ARMS = ("TEL", "IL2", "COMBO", "SOC")
VISITS = ("W0", "W2", "W12")


@dataclass(frozen=True)
class Scenario:
    """One null scenario: what is simulated and which tool tests it."""

    name: str
    kind: str  # "abundance", "state" or "cytokine"
    patient_sd: float = 0.0  # between-patient SD (logit, log MFI or log concentration)
    overdispersion: float = 0.0  # beta-binomial rho within a sample (abundance)
    mean_count: float | None = None  # rare populations: events per sample
    censored: float = 0.0  # share below the LLOQ (cytokines)


SCENARIOS = (
    Scenario("abundance, no patient variance", "abundance", 0.0, 0.002),
    Scenario("abundance, small patient variance", "abundance", 0.15, 0.002),
    Scenario("abundance, large patient variance", "abundance", 0.6, 0.005),
    Scenario("abundance, rare (~15 events)", "abundance", 0.2, 0.0, mean_count=15),
    Scenario("state, no patient variance", "state", 0.0),
    Scenario("state, patient variance", "state", 0.3),
    Scenario("cytokine, 30% below LLOQ", "cytokine", 0.5, censored=0.30),
    Scenario("cytokine, 60% below LLOQ", "cytokine", 0.5, censored=0.60),
    Scenario("cytokine, 85% below LLOQ", "cytokine", 0.5, censored=0.85),
)


def _design(n_per_arm: int) -> pd.DataFrame:
    rows = []
    for a, arm in enumerate(ARMS):
        for p in range(n_per_arm):
            pid = f"P{a}{p:02d}"
            for v, visit in enumerate(VISITS):
                rows.append({"sample_id": f"{pid}_{visit}", "patient_id": pid, "arm": arm,
                             "timepoint": visit, "week": (0, 2, 12)[v]})
    table = pd.DataFrame(rows)
    table["timepoint"] = pd.Categorical(table["timepoint"], categories=list(VISITS),
                                        ordered=True)
    return table


def simulate(scenario: Scenario, rng: np.random.Generator, *, n_per_arm: int = 8,
             n_readouts: int = 10) -> pd.DataFrame:
    """One null trial: ``n_readouts`` independent readouts in the shape its tool reads."""
    design = _design(n_per_arm)
    patients = design["patient_id"].unique()
    out = []
    for r in range(n_readouts):
        effect = dict(zip(patients, rng.normal(0, scenario.patient_sd, len(patients))))
        u = design["patient_id"].map(effect).to_numpy()
        n = len(design)
        if scenario.kind == "abundance":
            parent = np.exp(rng.uniform(np.log(300), np.log(30_000), n)).round().astype(int)
            if scenario.mean_count is not None:
                base = np.log(scenario.mean_count / parent)  # ~15 events whatever the parent
                p = 1 / (1 + np.exp(-(base - np.log1p(-np.exp(base)) + u)))
            else:
                logit = np.log(0.05 / 0.95) + u
                p = 1 / (1 + np.exp(-logit))
            if scenario.overdispersion > 0:  # beta-binomial within the sample
                k = (1 - scenario.overdispersion) / scenario.overdispersion
                p = rng.beta(p * k, (1 - p) * k)
            count = rng.binomial(parent, p)
            out.append(design.assign(template="t", population=f"pop{r}", parent="Parent",
                                     count=count, parent_count=parent, measured=True))
        elif scenario.kind == "state":
            mfi = np.exp(np.log(2000) + u + rng.normal(0, 0.25, n))
            out.append(design.assign(template="t", population=f"pop{r}", parent="Parent",
                                     count=1000, parent_count=5000, measured=True,
                                     mfi_median_CD25=mfi))
        else:
            log_conc = np.log(10) + u + rng.normal(0, 0.6, n)
            total_sd = np.sqrt(scenario.patient_sd ** 2 + 0.36)
            lloq = float(np.exp(np.log(10) + total_sd * _norm_ppf(scenario.censored)))
            conc = np.exp(log_conc)
            low = conc < lloq
            out.append(design.assign(analyte=f"IL{r}", conc_pg_ml=np.where(low, np.nan, conc),
                                     below_lloq=low, above_uloq=False, lloq=lloq,
                                     uloq=1e6))
    return pd.concat(out, ignore_index=True)


def _norm_ppf(q: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(q))


def pvalues(scenario: Scenario, table: pd.DataFrame) -> np.ndarray:
    """The p-values of every contrast of every readout, by the scenario's tool."""
    import immunoprofile as ip

    kwargs = {"control": "SOC", "baseline": "W0"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if scenario.kind == "abundance":
            res = ip.tl.differential_abundance(table, **kwargs)
        elif scenario.kind == "state":
            res = ip.tl.differential_state(table, **kwargs)
        else:
            res = ip.tl.cytokine_comparison(table, **kwargs)
    return res["pvalue"].to_numpy(float)


def calibrate(scenarios=SCENARIOS, *, sims: int = 40, seed: int = 0, n_per_arm: int = 8,
              n_readouts: int = 10) -> pd.DataFrame:
    """Share of p < 0.05, mean p and share not estimable, per scenario."""
    rows = []
    for i, scenario in enumerate(scenarios):
        rng = np.random.default_rng([seed, i])
        ps, t0 = [], time.perf_counter()
        for _ in range(sims):
            ps.append(pvalues(scenario, simulate(scenario, rng, n_per_arm=n_per_arm,
                                                 n_readouts=n_readouts)))
        p = np.concatenate(ps)
        ok = p[np.isfinite(p)]
        rows.append({"scenario": scenario.name, "kind": scenario.kind, "n_p": int(ok.size),
                     "share_p<0.05": float((ok < 0.05).mean()) if ok.size else np.nan,
                     "mean_p": float(ok.mean()) if ok.size else np.nan,
                     "share_not_estimable": float(1 - ok.size / max(p.size, 1)),
                     "seconds": round(time.perf_counter() - t0, 1)})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sims", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    table = calibrate(sims=args.sims, seed=args.seed)
    with pd.option_context("display.width", 140, "display.max_columns", 10):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    bad = table[(table["share_p<0.05"] < 0.03) | (table["share_p<0.05"] > 0.07)
                | (table["mean_p"] < 0.45) | (table["mean_p"] > 0.55)]
    print(f"\n{len(table) - len(bad)}/{len(table)} scenarios within 3–7% and mean p 0.45–0.55")


if __name__ == "__main__":
    main()
