"""Trial statistics: calibration, interval coverage and power of the abundance models, and the
binomial GLMM against R's lme4 / glmmTMB on the same data.

1. Calibration: null trials (4 arms × 8 patients × 3 visits, no effect), share of p < 0.05
   per model and contrast type (goal 3–7%) and the mean p-value.
2. Coverage: trials with planted effects (IL-2 Treg ×1.5, telitacicept B cells ×0.7 and
   plasmablasts ×0.6 at W12), share of 95% intervals holding the true value of every
   contrast (goal 93–97%).
3. Power: ``ip.tl.power`` for the same effects at 8 and 12 patients per arm, both models.
4. Realistic simulator (``--realistic``): null event-level cohorts in the realistic mode (PBO
   vs SOC, neither treated; 8 patients per arm, 3 visits, shipped templates) gated and
   compared with both models: share of p < 0.05 per model and contrast type; the variability
   measured on them (``ip.tl.estimate_variability``) then sets the power simulation.
5. R: the binomial GLMM of ``immunoprofile.tl._glmm`` and ``lme4::glmer`` (maximum likelihood,
   ``nAGQ = 0``, the same approximation) and ``glmmTMB(REML = TRUE)`` (the restricted form the
   package uses by default) on the same simulated data sets: cell means, standard errors,
   variance components and contrast p-values. Skipped with a note when Rscript or the R
   packages are missing (Debian: ``apt-get install r-cran-lme4 r-cran-glmmtmb``); R is never a
   runtime dependency.

Run: ``python benchmarks/bench_stats.py [--trials 40] [--power-trials 200] [--r-sets 20]
[--realistic 2]``
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

import immunoprofile as ip
from immunoprofile.datasets import simulate_counts
from immunoprofile.tl._glmm import fit_binomial_glmm

MODELS = ("glmm_binomial", "lmm_logit")
PLANTED = {("Treg", "IL2", "W12"): np.log(1.5), ("B cells", "TEL", "W12"): np.log(0.7),
           ("Plasmablasts", "TEL", "W12"): np.log(0.6)}
POPULATIONS = {"Treg": 4.5, "B cells": 9.0, "Plasmablasts": 4.0}
SD_PATIENT = {"Treg": 0.4, "B cells": 0.6, "Plasmablasts": 0.9}


def _trial(seed: int, effects: dict, n: int = 8, parent=(1000, 6000)) -> pd.DataFrame:
    return simulate_counts(seed=seed, patients_per_arm=n, effects=effects,
                           populations=POPULATIONS, sd_patient=SD_PATIENT, sd_visit=0.19,
                           parent_count=parent, lymphocytes_per_ul=1100.0)


def _null_pvalues(subsets: pd.DataFrame, references: tuple[str, ...]) -> list[pd.DataFrame]:
    """p-values of every contrast under each model: the proportion models for every
    reference but ``absolute``, whose log cells/µL model is the same for both (fitted once)."""
    out = []
    for model in MODELS:
        da = ip.tl.differential_abundance(subsets, control="SOC", baseline="W0", model=model,
                                          reference=references)
        da["model"] = np.where(da["reference"] == "absolute", "lmm_log_abs", model)
        if model != MODELS[0]:
            da = da[da["reference"] != "absolute"]
        out.append(da[["model", "contrast_type", "pvalue"]])
    return out


def _share_below(table: pd.DataFrame) -> pd.DataFrame:
    return (table.groupby(["model", "contrast_type"])["pvalue"]
            .agg(tests="count", p_below_005=lambda p: float((p < 0.05).mean()),
                 mean_p="mean").reset_index())


def calibration(trials: int) -> pd.DataFrame:
    rows = []
    for seed in range(trials):
        rows += _null_pvalues(_trial(10_000 + seed, {}).subsets, ("parent", "absolute"))
    return _share_below(pd.concat(rows))


def coverage(trials: int) -> pd.DataFrame:
    rows = []
    for seed in range(trials):
        sim = _trial(20_000 + seed, PLANTED)
        truth = sim.expected[sim.expected["readout"] == "abundance"]
        for model in MODELS:
            da = ip.tl.differential_abundance(sim.subsets, control="SOC", baseline="W0",
                                              model=model)
            both = da.merge(truth, on=["population", "contrast_type", "arm", "reference_arm",
                                       "timepoint", "baseline"])
            both["covered"] = (both["ci_low"] <= both["expected"]) & (
                both["expected"] <= both["ci_high"])
            both["model"] = model
            rows.append(both[["model", "contrast_type", "covered"]])
    table = pd.concat(rows)
    return (table.groupby(["model", "contrast_type"])["covered"]
            .agg(intervals="count", coverage="mean").reset_index())


def realistic_null(cohorts: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Calibration on gated realistic cohorts, and the variability they show."""
    from immunoprofile.batch import BatchSettings, gate_samples
    from immunoprofile.datasets import simulate_cohort

    rows, tables = [], []
    for k in range(cohorts):
        tmp = Path(tempfile.mkdtemp())
        cohort = simulate_cohort(tmp / "null", arms=("PBO", "SOC"), patients_per_arm=8,
                                 n_events=20_000, visits=(0, 2, 12), seed=100 + k,
                                 realistic=True)
        run = gate_samples(cohort.out / "samplesheet.csv", ["treg", "bcell", "plasma"],
                           tmp / "run", settings=BatchSettings(plots=False))
        subsets = run.subsets
        tables.append(subsets.assign(patient_id=subsets["patient_id"].astype(str) + f"-{k}"))
        rows += _null_pvalues(subsets, ("parent", "Live lymphocytes", "absolute"))
        shutil.rmtree(tmp, ignore_errors=True)
    calib = _share_below(pd.concat(rows))
    variability = ip.tl.estimate_variability(pd.concat(tables), baseline="W0")
    return calib, variability


def power(trials: int, variability: pd.DataFrame | None = None) -> pd.DataFrame:
    effects = {f"{arm}:{pop}": float(np.exp(v)) for (pop, arm, _), v in PLANTED.items()}
    if variability is None:
        variability = pd.DataFrame(
            [(p, POPULATIONS[p], 3500.0, SD_PATIENT[p], 0.19) for p in POPULATIONS],
            columns=["population", "baseline_pct", "parent_count", "sd_patient", "sd_visit"]
        ).set_index("population")
    out = []
    for model in MODELS:
        out.append(ip.tl.power(effects, patients_per_arm=(8, 12), variability=variability,
                               model=model, n_trials=trials, n_jobs=-1))
    return pd.concat(out, ignore_index=True)


R_SCRIPT = r"""
suppressMessages({library(lme4); have_tmb <- requireNamespace("glmmTMB", quietly = TRUE)})
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1])
did <- function(cells, b, V, arm) {
  L <- setNames(rep(0, length(cells)), cells)
  L[paste0(arm, "@W12")] <- 1; L[paste0(arm, "@W0")] <- -1
  L["SOC@W12"] <- -1; L["SOC@W0"] <- 1
  c(sum(L * b), sqrt(drop(t(L) %*% V %*% L)))
}
out <- list()
add <- function(s, fit, cells, b, V, sdp, sdo) {
  rows <- data.frame(set = s, fit = fit, term = cells, estimate = b, se = sqrt(diag(V)),
                     sd_patient = sdp, sd_sample = sdo)
  for (arm in c("TEL", "IL2", "COMBO")) {
    e <- did(cells, b, V, arm)
    rows <- rbind(rows, data.frame(set = s, fit = fit, term = paste0("did:", arm),
                                   estimate = e[1], se = e[2], sd_patient = sdp,
                                   sd_sample = sdo))
  }
  rows
}
for (s in unique(d$set)) {
  x <- d[d$set == s, ]
  x$cell <- factor(x$cell); x$obs <- factor(seq_len(nrow(x)))
  cells <- paste0(levels(x$cell))
  f <- cbind(count, parent_count - count) ~ 0 + cell + (1 | patient_id) + (1 | obs)
  m <- glmer(f, data = x, family = binomial, nAGQ = 0)
  vc <- as.data.frame(VarCorr(m))
  b <- setNames(fixef(m), cells); V <- as.matrix(vcov(m)); dimnames(V) <- list(cells, cells)
  out[[length(out) + 1]] <- add(s, "lme4_nAGQ0", cells, b, V,
                                vc$sdcor[vc$grp == "patient_id"], vc$sdcor[vc$grp == "obs"])
  if (have_tmb) {
    t <- glmmTMB::glmmTMB(f, data = x, family = binomial, REML = TRUE)
    v <- glmmTMB::VarCorr(t)$cond
    k <- length(cells)
    b <- setNames(glmmTMB::fixef(t)$cond, cells)
    V <- as.matrix(vcov(t, full = TRUE))[1:k, 1:k]; dimnames(V) <- list(cells, cells)
    out[[length(out) + 1]] <- add(s, "glmmTMB_REML", cells, b, V,
                                  attr(v$patient_id, "stddev"), attr(v$obs, "stddev"))
  }
}
write.csv(do.call(rbind, out), args[2], row.names = FALSE)
"""


def _did(cells: list[str], beta: np.ndarray, cov: np.ndarray, arm: str) -> tuple[float, float]:
    L = np.zeros(len(cells))
    for cell, w in ((f"{arm}@W12", 1), (f"{arm}@W0", -1), ("SOC@W12", -1), ("SOC@W0", 1)):
        L[cells.index(cell)] += w
    return float(L @ beta), float(np.sqrt(L @ cov @ L))


def against_r(sets: int) -> tuple[pd.DataFrame | None, str]:
    if shutil.which("Rscript") is None:
        return None, "Rscript not found: R comparison skipped (apt-get install r-cran-lme4)"
    check = subprocess.run(["Rscript", "-e", "library(lme4)"], capture_output=True)
    if check.returncode != 0:
        return None, "R package lme4 not installed: R comparison skipped"
    frames = []
    for s in range(sets):
        # alternate a common population and a rare one (plasmablasts at tens of events)
        pop = "Plasmablasts" if s % 2 else "Treg"
        sim = simulate_counts(seed=30_000 + s, patients_per_arm=8, effects=PLANTED,
                              populations={pop: POPULATIONS[pop] / (4 if s % 2 else 1)},
                              sd_patient=SD_PATIENT[pop], sd_visit=0.19,
                              parent_count=(300, 2000) if s % 2 else (1000, 6000)).subsets
        sim = sim.assign(set=s, cell=sim["arm"].astype(str) + "@" + sim["timepoint"].astype(str))
        frames.append(sim[["set", "patient_id", "cell", "count", "parent_count"]])
    data = pd.concat(frames, ignore_index=True)
    tmp = Path(tempfile.mkdtemp())
    data.to_csv(tmp / "data.csv", index=False)
    (tmp / "fit.R").write_text(R_SCRIPT)
    t0 = time.perf_counter()
    res = subprocess.run(["Rscript", str(tmp / "fit.R"), str(tmp / "data.csv"),
                          str(tmp / "r.csv")], capture_output=True, text=True)
    r_seconds = time.perf_counter() - t0
    if res.returncode != 0:
        return None, f"R failed: {res.stderr[-500:]}"
    r = pd.read_csv(tmp / "r.csv")
    ours, py_seconds = [], 0.0
    for s, x in data.groupby("set"):
        cells = sorted(x["cell"].unique())
        X = pd.get_dummies(x["cell"]).reindex(columns=cells).to_numpy(float)
        for reml, name in ((False, "lme4_nAGQ0"), (True, "glmmTMB_REML")):
            t0 = time.perf_counter()
            beta, cov, _, info = fit_binomial_glmm(x["count"].to_numpy(float),
                                                   x["parent_count"].to_numpy(float), X,
                                                   x["patient_id"].to_numpy(), reml=reml)
            py_seconds += time.perf_counter() - t0
            terms = [*cells, *(f"did:{a}" for a in ("TEL", "IL2", "COMBO"))]
            est = [*beta, *(_did(cells, beta, cov, a)[0] for a in ("TEL", "IL2", "COMBO"))]
            se = [*np.sqrt(np.diag(cov)),
                  *(_did(cells, beta, cov, a)[1] for a in ("TEL", "IL2", "COMBO"))]
            ours.append(pd.DataFrame({"set": s, "fit": name, "term": terms, "ours": est,
                                      "ours_se": se, "ours_sd_patient": info["sd_patient"],
                                      "ours_sd_sample": info["sd_sample"]}))
    both = r.merge(pd.concat(ours), on=["set", "fit", "term"])
    rows = []
    for fit, g in both.groupby("fit"):
        cellwise = g[~g["term"].str.startswith("did:")]
        did = g[g["term"].str.startswith("did:")]
        p_r = 2 * stats.norm.sf(np.abs(did["estimate"] / did["se"]))
        p_o = 2 * stats.norm.sf(np.abs(did["ours"] / did["ours_se"]))
        per_set = g.drop_duplicates("set")
        ratio = cellwise["ours_se"] / cellwise["se"]
        rows.append({
            "R fit": fit, "cell means": len(cellwise),
            "max abs Δ cell mean": float((cellwise["estimate"] - cellwise["ours"]).abs().max()),
            "max abs Δ contrast": float((did["estimate"] - did["ours"]).abs().max()),
            "SE ratio ours/R (median, 5–95%)": "{:.3f} ({:.3f}–{:.3f})".format(
                ratio.median(), *np.quantile(ratio, [0.05, 0.95])),
            "max abs Δ SD patient": float((per_set["sd_patient"]
                                         - per_set["ours_sd_patient"]).abs().max()),
            "max abs Δ SD sample": float((per_set["sd_sample"]
                                        - per_set["ours_sd_sample"]).abs().max()),
            "contrast p: max abs Δ": float(np.max(np.abs(p_r - p_o))),
            "same call at 0.05": f"{int(((p_r < 0.05) == (p_o < 0.05)).sum())}/{len(p_r)}",
        })
    note = (f"{sets} data sets (alternately Treg-like and plasmablast-like counts); R "
            f"{r_seconds:.1f} s incl. start-up, immunoprofile {py_seconds:.1f} s")
    return pd.DataFrame(rows), note


def _md(table: pd.DataFrame, fmt: str) -> str:
    """A Markdown table (pandas' own needs the optional tabulate package)."""
    def cell(v) -> str:
        return format(v, fmt) if isinstance(v, (float, np.floating)) else str(v)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |",
             "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |"
              for row in table.itertuples(index=False)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40, help="null and coverage trials")
    parser.add_argument("--power-trials", type=int, default=200)
    parser.add_argument("--r-sets", type=int, default=20)
    parser.add_argument("--realistic", type=int, default=0,
                        help="null realistic event-level cohorts to gate (0: skip)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    measured = None
    if args.realistic:
        calib, measured = realistic_null(args.realistic)
        print("## Realistic simulator: gated null cohorts (PBO vs SOC), share of p < 0.05\n")
        print(_md(calib, ".3f"))
        print("\nvariability measured on them (logit scale):\n")
        print(_md(measured.loc[[p for p in POPULATIONS if p in measured.index]]
              .reset_index(), ".3g"))
        print()
    print("## Calibration under the null (share of p < 0.05; goal 3–7%)\n")
    print(_md(calibration(args.trials), ".3f"))
    print("\n## Coverage of 95% intervals (goal 93–97%)\n")
    print(_md(coverage(args.trials), ".3f"))
    print("\n## Power (change vs control at W12, p < 0.05 in the planted direction)\n")
    if measured is not None:
        print("(variability as measured on the realistic cohorts)\n")
    pw = power(args.power_trials, measured)
    print(_md(pw[["model", "arm", "population", "fold_change", "patients_per_arm", "power",
                  "power_ci_low", "power_ci_high", "coverage"]], ".3f"))
    print("\n## The binomial GLMM against R\n")
    table, note = against_r(args.r_sets)
    if table is not None:
        print(_md(table, ".4f"))
    print(f"\n{note}\n\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
