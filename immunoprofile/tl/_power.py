"""Power and sample size for the next trial, by simulating it with the models of this one.

A trial is drawn at the sample level (:func:`~immunoprofile.datasets.simulate_counts`):
per patient and visit a population's share of its parent on the logit scale is the baseline
level, plus the patient's own level (between-patient SD), plus the planted effect at the
visit tested, plus visit-to-visit noise, and the count is binomial out of the parent's count.
Each simulated trial is analysed with the same model and contrast as the real one
(:func:`~immunoprofile.tl.differential_abundance`), so the power accounts for the model's
small-sample degrees of freedom and for how many events stand behind each proportion.

Variability comes from a run (:func:`estimate_variability` on its subset table: baseline
share, typical parent count, between-patient and visit-to-visit SD per population) or from
DOMAIN.md's SLE figures (:data:`DEFAULT_VARIABILITY`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from statsmodels.stats.proportion import proportion_confint

from immunoprofile._pool import one_thread, pool_context, worker_init

# the module, not the package: the package also holds the event simulator, which draws
# plots (pl), and pl draws on tl
from immunoprofile.datasets.counts import simulate_counts
from immunoprofile.errors import ImmunoprofileError
from immunoprofile.tl._differential import differential_abundance
from immunoprofile.tl._glmm import fit_binomial_glmm
from immunoprofile.tl._models import subset_table
from immunoprofile.tl._parallel import resolve_jobs

#: DOMAIN.md §3 (SLE): baseline % of parent, typical parent count in a 50k-event tube,
#: between-patient SD and visit-to-visit SD on the logit scale.
DEFAULT_VARIABILITY = pd.DataFrame(
    [("Treg", 4.5, 12_000, 0.40, 0.19), ("B cells", 9.0, 25_000, 0.60, 0.19),
     ("Plasmablasts", 4.0, 2_000, 0.90, 0.25), ("Plasma cells", 45.0, 80, 0.50, 0.25),
     ("Naive B", 57.0, 2_000, 0.50, 0.19), ("Transitional B", 5.0, 2_000, 0.70, 0.25)],
    columns=["population", "baseline_pct", "parent_count", "sd_patient", "sd_visit"],
).set_index("population")


def estimate_variability(data: pd.DataFrame | str | Path, *, baseline: str) -> pd.DataFrame:
    """Per population: baseline share, parent count and SDs, from a run's subset table.

    The between-patient SD and the visit-to-visit SD are the binomial GLMM's (one mean per
    arm × timepoint, so treatment effects do not inflate them; patient and sample random
    intercepts): the variation beyond binomial sampling, which the simulation adds back by
    drawing counts.

    Parameters
    ----------
    data
        A subset table or a run folder.
    baseline
        The baseline timepoint (for the baseline share and parent count).

    Returns
    -------
    pandas.DataFrame
        Indexed by population: ``baseline_pct``, ``parent_count`` (median at baseline),
        ``sd_patient``, ``sd_visit``, ``template``. Populations whose model cannot be fitted
        (fewer than 3 patients) are left out.
    """
    table = subset_table(data)
    if "measured" in table.columns:
        table = table[table["measured"].astype(bool)]
    rows = []
    for (template, pop), g in table.groupby(["template", "population"], sort=False,
                                            observed=True):
        g = g[(g["parent_count"] > 0) & g["count"].notna()]
        cell = g["arm"].astype(str) + "@" + g["timepoint"].astype(str)
        # a cell at 0 (or 100%) everywhere has no finite log odds: not informative on SDs
        share = g.groupby(cell)["count"].transform("sum") / g.groupby(cell)[
            "parent_count"].transform("sum")
        keep = (share > 0) & (share < 1)
        g, cell = g[keep], cell[keep]
        if g["patient_id"].nunique() < 3:
            continue
        count, n = g["count"].astype(float), g["parent_count"].astype(float)
        cells = pd.get_dummies(cell, dtype=float)
        # The binomial GLMM's own SDs: subtracting a sampling variance from an empirical-
        # logit residual is biased where counts are few (it zeroed rare populations' visit SD)
        _, _, _, info = fit_binomial_glmm(count.to_numpy(), n.to_numpy(), cells.to_numpy(),
                                          g["patient_id"].astype(str).to_numpy())
        if not info:
            continue
        base = g[g["timepoint"].astype(str) == str(baseline)]
        base = base if len(base) else g
        rows.append({"population": pop, "template": template,
                     "baseline_pct": float(100 * (base["count"] / base["parent_count"]).median()),
                     "parent_count": float(base["parent_count"].median()),
                     "sd_patient": info["sd_patient"], "sd_visit": info["sd_sample"]})
    if not rows:
        raise ImmunoprofileError("no population with counts from at least 3 patients: "
                                 "cannot estimate variability")
    return pd.DataFrame(rows).drop_duplicates("population").set_index("population")


def parse_effects(effects: Mapping | Iterable[str]) -> dict[tuple[str, str], float]:
    """``{(arm, population): fold change}`` from ``{"IL2:Treg": 1.5}``, ``{("IL2", "Treg"):
    1.5}`` or ``["IL2:Treg=1.5", "TEL:B cells=0.7"]``.

    Parameters
    ----------
    effects
        The planted effects in one of the forms above.

    Returns
    -------
    dict
        ``{(arm, population): fold}``.

    Raises
    ------
    ImmunoprofileError
        A string is not ``ARM:POPULATION=FOLD`` or a fold is not positive.
    """
    items = effects.items() if isinstance(effects, Mapping) else [
        tuple(e.rsplit("=", 1)) if "=" in e else (e, "") for e in effects]
    out = {}
    for key, fold in items:
        if isinstance(key, str):
            if ":" not in key:
                raise ImmunoprofileError(f"effect {key!r} must read ARM:POPULATION=FOLD "
                                         "(e.g. IL2:Treg=1.5)")
            key = tuple(key.split(":", 1))
        try:
            fold = float(fold)
        except ValueError:
            raise ImmunoprofileError(f"effect {key[0]}:{key[1]} has no fold change: write "
                                     f"{key[0]}:{key[1]}=1.5") from None
        if not fold > 0:
            raise ImmunoprofileError(f"effect {key[0]}:{key[1]}: fold change {fold} must be "
                                     "positive")
        out[(str(key[0]), str(key[1]))] = fold
    return out


def power(
    effects: Mapping | Iterable[str],
    *,
    patients_per_arm: int | Sequence[int] = (8, 12),
    control: str = "SOC",
    timepoints: Sequence[str] = ("W0", "W12"),
    variability: pd.DataFrame | str | Path | None = None,
    model: str = "glmm_binomial",
    alpha: float = 0.05,
    n_trials: int = 200,
    seed: int = 0,
    n_jobs: int | None = None,
) -> pd.DataFrame:
    """Power of the trial's contrast for each planted effect, by simulation.

    Each effect is a fold change of the population's odds among its parent (≈ its share
    for rare populations) in an arm at the last timepoint, against the control arm's change
    over the same visits (``change_vs_control``); the other arms are not simulated.

    Parameters
    ----------
    effects
        ``{"IL2:Treg": 1.5, "TEL:B cells": 0.7}`` (or ``(arm, population)`` keys, or
        ``["IL2:Treg=1.5", …]``).
    patients_per_arm
        One or several trial sizes.
    control
        The control arm's name.
    timepoints
        Visits, baseline first; the effect is planted at the last.
    variability
        Per-population baseline share, parent count and SDs: a table as
        :func:`estimate_variability` returns, a run folder (estimated from it), or None
        for :data:`DEFAULT_VARIABILITY`.
    model
        The abundance model (``"glmm_binomial"`` or ``"lmm_logit"``).
    alpha
        Two-sided significance level.
    n_trials
        Simulated trials per size.
    seed
        Seed of the first trial (trial *i* uses ``seed + i``).
    n_jobs
        Processes (``-1``: every core); results are the same whatever the number.

    Returns
    -------
    pandas.DataFrame
        One row per effect and size: ``arm, population, fold_change, patients_per_arm,
        power`` (share of trials with p < ``alpha`` in the planted direction; for a fold
        change of 1, in either: the false-positive rate), ``power_ci_low,
        power_ci_high`` (Wilson 95%), ``coverage`` (share of 95% intervals holding the planted
        log odds ratio), ``mean_estimate``, ``true_log_odds_ratio``, ``n_trials, model``.
    """
    planted = parse_effects(effects)
    if not planted:
        raise ImmunoprofileError("no effect given: e.g. IL2:Treg=1.5")
    if len(timepoints) < 2:
        raise ImmunoprofileError("power needs a baseline and at least one later timepoint")
    if isinstance(variability, (str, Path)):
        variability = estimate_variability(variability, baseline=str(timepoints[0]))
    var = DEFAULT_VARIABILITY if variability is None else variability
    missing = sorted({pop for _, pop in planted} - set(var.index))
    if missing:
        raise ImmunoprofileError(
            f"no variability for {', '.join(missing)}: give a run folder or a table with "
            f"these populations (known: {', '.join(map(str, var.index))})")
    sizes = [patients_per_arm] if isinstance(patients_per_arm, int) else list(patients_per_arm)
    tasks = [(arm, pop, fold, n, seed + i, control, tuple(timepoints),
              var.loc[pop].to_dict(), model)
             for (arm, pop), fold in planted.items() for n in sizes for i in range(n_trials)]
    workers = min(resolve_jobs(n_jobs), len(tasks))
    if workers <= 1:
        results = [_one_trial(t) for t in tasks]
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=pool_context(),
                                 initializer=worker_init, initargs=(os.getpid(),)) as pool:
            results = list(pool.map(_one_trial, tasks, chunksize=max(1, len(tasks) // (
                8 * workers))))
    frame = pd.DataFrame(results)
    rows = []
    for (arm, pop, n), g in frame.groupby(["arm", "population", "patients_per_arm"],
                                          sort=False):
        truth = float(g["truth"].iloc[0])
        # with an effect, a rejection counts in its direction; without one (fold 1) any
        # rejection does: the false-positive rate
        hit = (g["pvalue"] < alpha) & ((np.sign(g["estimate"]) == np.sign(truth))
                                       if truth != 0 else True)
        k, m = int(hit.sum()), int(g["pvalue"].notna().sum())
        lo, hi = proportion_confint(k, m, method="wilson") if m else (np.nan, np.nan)
        rows.append({"arm": arm, "population": pop, "fold_change": planted[(arm, pop)],
                     "patients_per_arm": int(n), "power": k / m if m else np.nan,
                     "power_ci_low": float(lo), "power_ci_high": float(hi),
                     "coverage": float(((g["ci_low"] <= truth) & (truth <= g["ci_high"]))
                                       [g["pvalue"].notna()].mean()),
                     "mean_estimate": float(g["estimate"].mean()),
                     "true_log_odds_ratio": truth, "n_trials": m, "model": model})
    return pd.DataFrame(rows)


def _one_trial(task: tuple) -> dict:
    arm, pop, fold, n, seed, control, tps, var, model = task
    truth = float(np.log(fold))
    sim = simulate_counts(
        arms=(arm, control), control=control, patients_per_arm=n, timepoints=tps,
        populations={pop: var["baseline_pct"]}, effects={(pop, arm, tps[-1]): truth},
        sd_patient=var["sd_patient"], sd_visit=var["sd_visit"],
        parent_count=(max(1, int(0.5 * var["parent_count"])),
                      max(2, int(1.5 * var["parent_count"]))), seed=seed)
    with one_thread():
        da = differential_abundance(sim.subsets, control=control, baseline=tps[0], model=model)
    row = da[(da["contrast_type"] == "change_vs_control") & (da["arm"] == arm)
             & (da["timepoint"] == tps[-1])].iloc[0]
    return {"arm": arm, "population": pop, "patients_per_arm": n, "truth": truth,
            "estimate": row["estimate"], "ci_low": row["ci_low"], "ci_high": row["ci_high"],
            "pvalue": row["pvalue"]}
