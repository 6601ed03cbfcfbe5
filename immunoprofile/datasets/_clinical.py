"""Simulated clinical table of a cohort: SLEDAI-2K, complement, anti-dsDNA, immunoglobulins…

One row per patient × visit of a :class:`~immunoprofile.datasets.SimulatedCohort`, with the arm
effects of DOMAIN §8 (medians over weeks 0/2/4/12/24, interpolated log-linearly between) and
planted links (assumed):

- **anti-dsDNA tracks plasmablasts**: ``log anti-dsDNA`` rises by :data:`PB_LINK` per unit of
  the log of the patient's true plasmablasts per µL at that visit (the cohort's blood model,
  ``truth.model_per_ul``); this carries most of the telitacicept fall, and a residual arm
  effect makes the arm medians those of DOMAIN §8. It also tracks disease activity
  (:data:`DSDNA_SLEDAI_LINK` per unit log SLEDAI).
- **C3 (and, half as much, C4) fall with SLEDAI**: between patients and with a patient's visit-
  to-visit deviation from their expected course; arm effects as tabulated.
- **Proteinuria is unlinked**: a patient level and visit noise, no arm effect, no link to any
  cell subset (a negative control for correlation tests).
- Prednisone is tapered by 2.5 mg/day at weeks ≥ 12 when SLEDAI has fallen by ≥ 4.

Drug effects scale with the patient's response strength from the cohort design
(``tel_response``/``il2_response``: 1 for full responders, 0.25 for partial ones), the same
strength that moves their cell counts. BILAG (new A / B domains) and PGA columns make SRI-4
derivable. ``clinical.csv`` holds the observed table; ``clinical_effects.csv`` the planted log
fold changes per variable × arm × week, and ``clinical_links.csv`` the link coefficients.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from immunoprofile.datasets._trial import (
    DRUGS,
    EFFECT_WEEKS,
    PARTIAL,
    RESPONDER_P,
    ZERO_Z,
    interp_log,
    median_blood_leaves,
    patient_effects,
    rng_stream,
    write_csv,
)

_KEY = 101  # random-stream key of this module (the cohort uses 0-5)

# DOMAIN §8: median SLEDAI at weeks 0/2/4/12/24 per arm.
SLEDAI_COURSE = {"SOC": (11, 10, 9, 6, 8), "IL2": (12, 10, 9, 6, 4),
                 "TEL": (11.5, 11, 10, 8, 6.5)}
SLEDAI_MEDIAN, SLEDAI_SD, SLEDAI_VISIT_SD, SLEDAI_MIN = 11.5, 0.30, 0.20, 6
# Fold changes vs week 0 at weeks 2/4/12/24 of a full responder to each drug.
DRUG_EFFECTS: dict[str, dict[str, tuple[float, ...]]] = {
    "il2": {"anti_dsdna": (0.95, 0.95, 0.9, 0.85), "c3": (1.05, 1.05, 1.1, 1.15),
            "c4": (1.05, 1.05, 1.1, 1.15)},
    "tel": {"anti_dsdna": (0.95, 0.85, 0.7, 0.55), "c3": (1.03, 1.08, 1.15, 1.2),
            "c4": (1.05, 1.15, 1.3, 1.4), "igm": (0.9, 0.8, 0.6, 0.5),
            "iga": (0.92, 0.85, 0.7, 0.6), "igg": (0.97, 0.93, 0.85, 0.8)},
}
# Baseline medians, between-patient log SD and visit-to-visit log SD (assumed; DOMAIN §8 ranges).
LEVELS = {"c3": (0.75, 0.20, 0.07), "c4": (0.11, 0.30, 0.10), "anti_dsdna": (120.0, 0.90, 0.15),
          "igg": (15.0, 0.22, 0.05), "iga": (2.8, 0.30, 0.05), "igm": (1.1, 0.40, 0.05),
          "proteinuria": (0.35, 0.90, 0.35)}
PB_LINK = 0.4  # d log anti-dsDNA / d log plasmablasts per µL
DSDNA_SLEDAI_LINK = 0.4  # d log anti-dsDNA / d log SLEDAI
C3_SLEDAI_LINK, C4_SLEDAI_LINK = -0.5, -0.25  # d log C / d log SLEDAI
DSDNA_DRIFT_SD = 0.10  # per-patient drift of log anti-dsDNA over 24 weeks ("with drift")
DECIMALS = {"c3": 2, "c4": 3, "anti_dsdna": 1, "igg": 1, "iga": 2, "igm": 2,
            "proteinuria": 2}


def _curve(values: Sequence[float], week: float) -> float:
    """Log fold change at ``week`` of a curve tabulated at weeks 2/4/12/24 (1 at week 0)."""
    return interp_log(values, week, (0, *EFFECT_WEEKS))


def _sledai_drug_log(drug: str, week: float) -> float:
    """Log SLEDAI ratio of a drug's arm to control at ``week`` (relative to week 0)."""
    arm = {"il2": "IL2", "tel": "TEL"}[drug]
    own, soc = SLEDAI_COURSE[arm], SLEDAI_COURSE["SOC"]
    return (_curve([v / own[0] for v in own[1:]], week)
            - _curve([v / soc[0] for v in soc[1:]], week))


def _soc_log(week: float) -> float:
    soc = SLEDAI_COURSE["SOC"]
    return _curve([v / soc[0] for v in soc[1:]], week)


def _pb_log_fold(drug: str, week: float) -> float:
    """Log fold change of plasmablasts per µL of a full responder to ``drug`` (cohort model)."""

    arm = {"il2": "IL2", "tel": "TEL"}[drug]
    leaf_log, _ = patient_effects(arm, week, {"tel": 1.0, "il2": 1.0}, ZERO_Z)
    base = median_blood_leaves()
    members = ["plasmablast", "plasma_cell"]
    w = np.array([base[m] for m in members])
    return float(np.log(w @ np.exp([leaf_log.get(m, 0.0) for m in members]) / w.sum()))


def _drug_log(drug: str, variable: str, week: float) -> float:
    """A full responder's planted log effect of ``drug`` on ``variable`` beyond its links.

    For anti-dsDNA the part carried by the plasmablast link is taken off, so that link plus
    residual give the tabulated effect.
    """
    values = DRUG_EFFECTS[drug].get(variable)
    if values is None:
        return 0.0
    effect = _curve(values, week)
    if variable == "anti_dsdna":
        effect -= PB_LINK * _pb_log_fold(drug, week)
    return effect


def _plasmablasts(cohort) -> pd.Series:
    """True plasmablasts per µL per (patient_id, timepoint), from the cohort's blood model."""
    truth = cohort.truth
    rows = truth[truth["population"] == "Plasmablasts"]
    col = "model_per_ul" if "model_per_ul" in rows.columns else "true_per_ul"
    return rows.groupby(["patient_id", "timepoint"])[col].mean()


def simulate_clinical(cohort, *, seed: int = 0) -> None:
    """Write ``clinical.csv`` for a simulated cohort and set ``cohort.clinical``.

    Parameters
    ----------
    cohort
        A :class:`~immunoprofile.datasets.SimulatedCohort` (its design, sample sheet and
        truth table); its folder receives ``clinical.csv``, ``clinical_effects.csv`` and
        ``clinical_links.csv``.
    seed
        Seed; every patient draws from its own stream.
    """
    design = cohort.design.set_index("patient_id")
    visits = (cohort.samplesheet[["patient_id", "arm", "timepoint", "week"]]
              .drop_duplicates(["patient_id", "timepoint"]).sort_values(["patient_id", "week"]))
    pb = _plasmablasts(cohort)
    pb_median = float(np.nanmedian(pb.to_numpy())) if len(pb) else math.nan
    rows = []
    for pid, pv in visits.groupby("patient_id", sort=False):
        prow = design.loc[pid]
        arm = str(prow["arm"])
        drugs = DRUGS.get(arm, ())
        resp = {d: float(prow.get(f"{d}_response", 1.0)) for d in drugs}
        rng = rng_stream(seed, _KEY, int(prow["patient_index"]))
        level = {v: math.log(m) + rng.normal(0.0, sd) for v, (m, sd, _) in LEVELS.items()}
        log_b = math.log(SLEDAI_MEDIAN) + rng.normal(0.0, SLEDAI_SD)
        log_b = max(log_b, math.log(SLEDAI_MIN))
        drift = rng.normal(0.0, DSDNA_DRIFT_SD)
        pred0 = float(rng.choice([5, 7.5, 10, 15, 20], p=[0.2, 0.2, 0.3, 0.2, 0.1]))
        pga_offset = rng.normal(0.0, 0.2)
        sledai0 = pred = None
        for _, v in pv.iterrows():
            week, tp = float(v["week"]), str(v["timepoint"])
            d = rng.normal(0.0, SLEDAI_VISIT_SD)
            log_s = log_b + _soc_log(week) + d + sum(
                resp[g] * _sledai_drug_log(g, week) for g in drugs)
            sledai = float(min(max(round(math.exp(log_s)), 0), 105))
            # Disease activity away from the typical patient and visit: what C3/C4 and
            # anti-dsDNA follow (the expected course is the arm's effect, tabulated below).
            activity = (log_b - math.log(SLEDAI_MEDIAN)) + d
            values = {}
            for var, (_, _, visit_sd) in LEVELS.items():
                x = level[var] + rng.normal(0.0, visit_sd)
                x += sum(resp[g] * _drug_log(g, var, week) for g in drugs)
                if var == "anti_dsdna":
                    p = pb.get((pid, tp), math.nan)
                    if np.isfinite(p) and p > 0 and np.isfinite(pb_median):
                        x += PB_LINK * math.log(p / pb_median)
                    x += DSDNA_SLEDAI_LINK * activity + drift * week / 24.0
                elif var == "c3":
                    x += C3_SLEDAI_LINK * activity
                elif var == "c4":
                    x += C4_SLEDAI_LINK * activity
                values[var] = round(math.exp(x), DECIMALS[var])
            if sledai0 is None:
                sledai0, pred = sledai, pred0
            elif week >= 12 and sledai0 - sledai >= 4:
                pred = max(5.0, pred - 2.5)
            flare = sledai > sledai0
            first = week == float(pv["week"].min())
            rows.append({
                "patient_id": pid, "arm": arm, "timepoint": tp, "week": v["week"],
                "sledai": int(sledai), **{k: values[k] for k in ("c3", "c4", "anti_dsdna",
                                                                  "igg", "iga", "igm",
                                                                  "proteinuria")},
                "prednisone_mg": pred,
                "bilag_new_a": 0 if first else int(rng.random() < (0.15 if flare else 0.02)),
                "bilag_new_b": 0 if first else int(rng.poisson(0.8 if flare else 0.2)),
                "pga": round(float(np.clip(0.13 * sledai + pga_offset
                                           + rng.normal(0.0, 0.15), 0.0, 3.0)), 1),
            })
    clinical = pd.DataFrame(rows)
    write_csv(clinical, cohort.out / "clinical.csv")
    weeks = sorted(visits["week"].unique())
    arms = list(dict.fromkeys(cohort.design["arm"]))
    write_csv(planted_effects(arms, weeks), cohort.out / "clinical_effects.csv")
    write_csv(pd.DataFrame([
        ("anti_dsdna", "Plasmablasts per µL", "log-log slope", PB_LINK),
        ("anti_dsdna", "SLEDAI (patient and visit deviation)", "log-log slope",
         DSDNA_SLEDAI_LINK),
        ("c3", "SLEDAI (patient and visit deviation)", "log-log slope", C3_SLEDAI_LINK),
        ("c4", "SLEDAI (patient and visit deviation)", "log-log slope", C4_SLEDAI_LINK),
        ("proteinuria", "", "unlinked", 0.0),
    ], columns=["variable", "linked_to", "scale", "coefficient"]),
        cohort.out / "clinical_links.csv")
    cohort.clinical = clinical


def planted_effects(arms: Sequence[str], weeks: Sequence[float]) -> pd.DataFrame:
    """Planted log fold changes vs week 0 per variable × arm × week.

    ``full_response`` is a full responder's effect; ``expected`` averages over the responder
    mixture (65% full, 35% a quarter). SLEDAI rows give the log ratio of the arm's median
    SLEDAI course; anti-dsDNA rows include the part carried by the plasmablast link.
    """
    mean_resp = RESPONDER_P + (1 - RESPONDER_P) * PARTIAL
    rows = []
    variables = ["sledai", "anti_dsdna", "c3", "c4", "igg", "iga", "igm", "proteinuria"]
    for arm in arms:
        drugs = DRUGS.get(arm, ())
        for week in weeks:
            for var in variables:
                full = mean = 0.0
                if var == "sledai":
                    full = mean = _soc_log(week)
                for g in drugs:
                    if var == "sledai":
                        e = _sledai_drug_log(g, week)
                    else:
                        e = _drug_log(g, var, week)
                        if var == "anti_dsdna":
                            e += PB_LINK * _pb_log_fold(g, week)
                    full += e
                    mean += mean_resp * e
                rows.append({"variable": var, "arm": arm, "week": week,
                             "full_response": full, "expected": mean})
    return pd.DataFrame(rows)
