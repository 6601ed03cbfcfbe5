"""Sample-level counts drawn straight from the arm × time model, with exactly known contrasts.

Event-level cohorts take minutes to gate; calibration and coverage need hundreds of trials.
This draws, per patient and visit, a population's proportion on the logit scale,

``logit p = logit p0 + patient + effect(arm, timepoint) + visit noise``,

then ``count ~ Binomial(parent_count, p)``, and a marker's median MFI on the log scale the same
way. ``expected`` holds every contrast's true value on the scale the models estimate (log odds
ratio for abundance, log fold change for state), so a test can check that 95% intervals cover
it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import expit, logit


@dataclass
class SimulatedCounts:
    """A subsets-shaped table and the true value of every contrast."""

    subsets: pd.DataFrame
    expected: pd.DataFrame


def simulate_counts(
    *,
    arms: Sequence[str] = ("TEL", "IL2", "COMBO", "SOC"),
    control: str = "SOC",
    patients_per_arm: int = 8,
    timepoints: Sequence[str] = ("W0", "W2", "W12"),
    populations: Mapping[str, float] | None = None,
    effects: Mapping[tuple[str, str, str], float] | None = None,
    mfi_effects: Mapping[tuple[str, str, str], float] | None = None,
    sd_patient: float | Mapping[str, float] = 0.4,
    sd_visit: float | Mapping[str, float] = 0.15,
    parent_count: tuple[int, int] = (1000, 6000),
    mfi_median: float = 4000.0,
    lymphocytes_per_ul: float | None = None,
    seed: int = 0,
) -> SimulatedCounts:
    """Draw a trial's per-sample counts with planted effects.

    Parameters
    ----------
    arms
        Arm names, in order.
    control
        The control arm (the reference of the ``expected`` contrasts).
    patients_per_arm
        Patients per arm (ids ``<arm>-01``, ``<arm>-02``, …).
    timepoints
        Visit names, baseline first.
    populations
        ``{population: baseline % of parent}``; default Treg 4.5%, B cells 9%, Plasmablasts 4%.
    effects
        ``{(population, arm, timepoint): log odds ratio vs the arm's baseline}``.
    mfi_effects
        ``{(population, arm, timepoint): log fold change of the median MFI}`` (marker CD25).
    sd_patient, sd_visit
        Between-patient and visit-to-visit SD on the logit (and log-MFI) scale: one for all
        populations or ``{population: SD}`` (missing populations take 0.4 / 0.15).
    parent_count
        Range of parent counts per sample (uniform).
    mfi_median
        Typical median CD25 MFI (``mfi_median_CD25``) before patient and visit variation.
    lymphocytes_per_ul
        Median lymphocytes per µL of blood: each sample then gets ``abs_per_ul`` (the
        population's share of its parent × the sample's lymphocytes per µL, which vary
        between patients and visits with log-SD 0.3 and 0.1, untouched by the arms);
        None for no absolute counts.
    seed
        Random seed.

    Returns
    -------
    SimulatedCounts
        ``subsets`` in the shape of a run's subset table (template ``sim``) and the
        ``expected`` effect of every contrast (``readout`` ``abundance`` or ``state``).
    """
    rng = np.random.default_rng(seed)
    populations = dict(populations or {"Treg": 4.5, "B cells": 9.0, "Plasmablasts": 4.0})
    effects = dict(effects or {})
    mfi_effects = dict(mfi_effects or {})
    # its own stream: the counts stay those of the same seed without absolute counts
    rng_lym = np.random.default_rng([seed, 1])
    sd_p = _per_population(sd_patient, populations, 0.4)
    sd_v = _per_population(sd_visit, populations, 0.15)
    rows = []
    for arm in arms:
        for k in range(patients_per_arm):
            patient = f"{arm}-{k + 1:02d}"
            base = {p: rng.normal(0, sd_p[p]) for p in populations}
            base_mfi = {p: rng.normal(0, sd_p[p] / 2) for p in populations}
            lym_patient = rng_lym.normal(0, 0.3)
            for week, tp in enumerate(timepoints):
                sid = f"{patient}_{tp}"
                lym = (lymphocytes_per_ul * np.exp(lym_patient + rng_lym.normal(0, 0.1))
                       if lymphocytes_per_ul else np.nan)
                for pop, pct in populations.items():
                    eta = (logit(pct / 100) + base[pop] + effects.get((pop, arm, tp), 0.0)
                           + rng.normal(0, sd_v[pop]))
                    n = int(rng.integers(parent_count[0], parent_count[1] + 1))
                    count = int(rng.binomial(n, expit(eta)))
                    log_mfi = (np.log(mfi_median) + base_mfi[pop]
                               + mfi_effects.get((pop, arm, tp), 0.0)
                               + rng.normal(0, sd_v[pop]))
                    rows.append({"sample_id": sid, "patient_id": patient, "arm": arm,
                                 "timepoint": tp, "week": week, "template": "sim",
                                 "population": pop, "parent": "", "count": count,
                                 "parent_count": n, "pct_parent": 100 * count / n,
                                 "mfi_median_CD25": float(np.exp(log_mfi)), "measured": True,
                                 "abs_per_ul": lym * count / n})
    table = pd.DataFrame(rows)
    if lymphocytes_per_ul is None:
        table = table.drop(columns="abs_per_ul")
    table["timepoint"] = pd.Categorical(table["timepoint"], categories=list(timepoints),
                                        ordered=True)
    table["arm"] = pd.Categorical(table["arm"], categories=list(arms))
    expected = _expected(arms, control, timepoints, populations, effects, "abundance")
    expected = pd.concat([expected, _expected(arms, control, timepoints, populations,
                                              mfi_effects, "state")], ignore_index=True)
    return SimulatedCounts(subsets=table, expected=expected)


def _per_population(value: float | Mapping[str, float], populations: Mapping[str, float],
                    default: float) -> dict[str, float]:
    if isinstance(value, Mapping):
        return {p: float(value.get(p, default)) for p in populations}
    return dict.fromkeys(populations, float(value))


def _expected(arms, control, timepoints, populations, effects, readout) -> pd.DataFrame:
    def eff(pop: str, arm: str, tp: str) -> float:
        return effects.get((pop, arm, tp), 0.0)

    base = timepoints[0]
    rows = []
    for pop in populations:
        for arm in arms:
            for tp in timepoints:
                if arm != control:
                    rows.append((pop, "arm_vs_control", arm, control, tp, "",
                                 eff(pop, arm, tp) - eff(pop, control, tp)))
                if tp == base:
                    continue
                rows.append((pop, "change_from_baseline", arm, "", tp, base,
                             eff(pop, arm, tp) - eff(pop, arm, base)))
                if arm != control:
                    rows.append((pop, "change_vs_control", arm, control, tp, base,
                                 (eff(pop, arm, tp) - eff(pop, arm, base))
                                 - (eff(pop, control, tp) - eff(pop, control, base))))
    table = pd.DataFrame(rows, columns=["population", "contrast_type", "arm", "reference_arm",
                                        "timepoint", "baseline", "expected"])
    table.insert(0, "readout", readout)
    return table
