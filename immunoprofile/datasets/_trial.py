"""The simulated trial's model: baseline composition (DOMAIN §3), drug effects (§4),
patient-level responses and the random streams every simulated table draws from.

Low in the datasets package: the event simulator (baseline composition), the cohort writer,
the bead-array and clinical simulators all build on it, and it imports none of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

# Leaf cell types of the blood model (shared by both tubes; each tube lumps what it cannot see).
T_LEAVES = ["treg_naive_foxp3pos", "treg_naive_foxp3neg", "treg_memory_foxp3pos",
            "treg_memory_foxp3neg", "cd4_naive", "cd4_memory", "cd4_activated",
            "cd4_cd25neg_foxp3pos", "cd8_other_t"]
B_LEAVES = ["b_naive", "b_transitional", "b_unswitched", "b_switched", "b_double_negative",
            "plasmablast", "plasma_cell"]
BLOOD_LEAVES = [*T_LEAVES, *B_LEAVES, "nk", "other_lymphocyte"]
NONLYMPH_LABELS = ["dead_lymphocyte", "dead_other", "lymphocyte_doublet", "other_doublet",
                   "monocyte", "granulocyte", "debris"]
TREG_LEAVES = ["treg_naive_foxp3pos", "treg_naive_foxp3neg", "treg_memory_foxp3pos",
               "treg_memory_foxp3neg"]
CD4_LEAVES = [*TREG_LEAVES, "cd4_naive", "cd4_memory", "cd4_activated", "cd4_cd25neg_foxp3pos"]

# --- DOMAIN §3: SLE medians and between-patient SD (logit scale; log for the count).
BASELINE: dict[str, tuple[float, float]] = {
    "lymphocytes_per_ul": (1100, 0.45), "t_of_lym": (0.70, 0.35), "b_of_lym": (0.09, 0.6),
    "nk_of_lym": (0.10, 0.5), "cd4_of_t": (0.50, 0.35), "treg_of_cd4": (0.045, 0.4),
    "foxp3pos_of_treg": (0.85, 0.5), "cd25neg_foxp3pos_of_cd4": (0.04, 0.6),
    "naive_of_treg": (0.25, 0.5),
    "activated_of_tconv": (0.08, 0.4), "naive_of_tconv": (0.40, 0.4),  # assumed
    # B subsets as % of B; transitional sits inside the 62% IgD+CD27- naive gate.
    "b_naive": (0.57, 0.5), "b_transitional": (0.05, 0.7), "b_unswitched": (0.05, 0.5),
    "b_switched": (0.18, 0.5), "b_double_negative": (0.08, 0.6), "pb_of_b": (0.04, 0.9),
    "pc_of_pb": (0.45, 0.5),  # CD138+ share of plasmablasts: DOMAIN 40-50%
}
VISIT_SD_COMMON = 0.15  # visit-to-visit log SD of the lymphocyte count (DOMAIN: 0.10-0.20)
VISIT_SD_LEAF = 0.12  # ... and of each leaf on top of it (compositional noise)
RESPONDER_P, PARTIAL = 0.65, 0.25  # 65% full effect, 35% a quarter
EFFECT_SD = 0.30  # between-patient SD of the log fold change at the effect's peak
MFI_EFFECT_SD = 0.10  # ... of a Treg MFI change (assumed: brightness varies less than counts)
BATCH_SD = {"CD25": 0.15, "CD127": 0.15, "FOXP3": 0.15}  # dim markers; bright ones 0.08
PAUSE_RATE = 0.2  # realistic mode: share of files with an acquisition pause (assumed)

# --- DOMAIN §4: median fold change vs week 0 at weeks 2, 4, 12, 24 (full responders).
EFFECT_WEEKS = (2, 4, 12, 24)
IL2_COUNT = {"Treg": (TREG_LEAVES, (1.8, 1.3, 1.4, 1.1)), "NK": (["nk"], (1.3, 1.1, 1.2, 1.0)),
             "Plasmablasts": (["plasmablast", "plasma_cell"], (1.0, 0.95, 0.8, 0.85))}
IL2_MFI = {"CD25": (1.8, 1.2, 1.25, 1.05), "FOXP3": (1.15, 1.05, 1.05, 1.0)}
TEL_COUNT = {"Naive B": (["b_naive"], (0.85, 0.75, 0.5, 0.4)),
             "Transitional B": (["b_transitional"], (0.7, 0.5, 0.35, 0.3)),
             "Memory B": (["b_unswitched", "b_switched"], (1.3, 1.2, 1.0, 0.85)),
             "Double negative B": (["b_double_negative"], (0.95, 0.9, 0.8, 0.7)),
             "Plasmablasts": (["plasmablast"], (0.85, 0.7, 0.55, 0.5)),
             "Plasma cells": (["plasma_cell"], (0.9, 0.75, 0.6, 0.5))}
# PBO (placebo on top of standard of care) receives nothing either: a second untreated arm
# makes null trials for calibration.
DRUGS = {"TEL": ("tel",), "IL2": ("il2",), "COMBO": ("tel", "il2"), "SOC": (), "PBO": ()}
# He et al. 2020: 1 MIU every other day, 2 weeks on / 2 weeks off, 3 cycles.
IL2_DOSE_DAYS = np.array([s + 2 * k for s in (0, 28, 56) for k in range(7)])


def _expit(x):
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p):
    return np.log(p / (1.0 - p))


def blood_leaves(h: dict[str, float]) -> dict[str, float]:
    """Leaf cells/µL from hierarchical fractions (keys of :data:`BASELINE`)."""
    t, b, nk = h["t_of_lym"], h["b_of_lym"], h["nk_of_lym"]
    if t + b + nk > 0.98:  # keep a sliver of other lymphocytes (ILCs, unlabelled)
        t, b, nk = (v * 0.98 / (t + b + nk) for v in (t, b, nk))
    lym = h["lymphocytes_per_ul"]
    cd4 = lym * t * h["cd4_of_t"]
    treg, dpos = cd4 * h["treg_of_cd4"], cd4 * h["cd25neg_foxp3pos_of_cd4"]
    tconv = cd4 - treg - dpos
    act = tconv * h["activated_of_tconv"]
    nv, fp = h["naive_of_treg"], h["foxp3pos_of_treg"]
    out = {"treg_naive_foxp3pos": treg * nv * fp, "treg_naive_foxp3neg": treg * nv * (1 - fp),
           "treg_memory_foxp3pos": treg * (1 - nv) * fp,
           "treg_memory_foxp3neg": treg * (1 - nv) * (1 - fp),
           "cd4_naive": (tconv - act) * h["naive_of_tconv"],
           "cd4_memory": (tconv - act) * (1 - h["naive_of_tconv"]), "cd4_activated": act,
           "cd4_cd25neg_foxp3pos": dpos, "cd8_other_t": lym * t - cd4,
           "nk": lym * nk, "other_lymphocyte": lym * (1 - t - b - nk)}
    bsub = np.array([h[k] for k in ("b_naive", "b_transitional", "b_unswitched", "b_switched",
                                    "b_double_negative", "pb_of_b")])
    bsub = lym * b * bsub / bsub.sum()
    out |= dict(zip(B_LEAVES[:5], bsub[:5], strict=True))
    out["plasmablast"], out["plasma_cell"] = bsub[5] * (1 - h["pc_of_pb"]), bsub[5] * h["pc_of_pb"]
    return {leaf: float(out[leaf]) for leaf in BLOOD_LEAVES}


def median_blood_leaves() -> dict[str, float]:
    """Leaf cells/µL of the median SLE patient (DOMAIN §3)."""
    return blood_leaves({k: v[0] for k, v in BASELINE.items()})


def draw_baseline(rng: np.random.Generator) -> dict[str, float]:
    h = {}
    for key, (median, sd) in BASELINE.items():
        if key == "lymphocytes_per_ul":
            h[key] = float(median * math.exp(rng.normal(0.0, sd)))
        else:
            h[key] = float(_expit(_logit(median) + rng.normal(0.0, sd)))
    return h


def days_since_last_il2_dose(week: float) -> float:
    """Days from the last IL-2 dose to a visit (sampled before that day's dose); NaN if none.

    Parameters
    ----------
    week
        The visit's study week (day ``round(week * 7)``); doses are every other day for two
        weeks from days 0, 28 and 56.

    Returns
    -------
    float
        Days since the last dose strictly before the visit's day, NaN at or before day 0.
    """
    day = round(week * 7)
    prior = IL2_DOSE_DAYS[IL2_DOSE_DAYS < day]
    return float(day - prior.max()) if prior.size else math.nan


def interp_log(values: Sequence[float], week: float, weeks=(0, *EFFECT_WEEKS)) -> float:
    """Log-linear interpolation of a fold-change curve (1 at week 0, flat after the last)."""
    return float(np.interp(week, weeks, np.log([1.0, *values])))


def il2_log_effect(values: Sequence[float], week: float, days_since: float) -> float:
    """Log fold change of an IL-2 readout at a visit.

    The tabulated week-2 value is an on-block peak; weeks 4, 12, 24 are off-block. Between
    them the off-block level is interpolated, and a transient boost (the week-2 excess) is
    added when the last dose was recent: full up to 2 days, decaying with a 3-day time
    constant, gone after two weeks (assumed). Reproduces the table at the tabulated weeks.
    """
    off_weeks = (0, 4, 12, 24)
    off = interp_log(values[1:], week, off_weeks)
    boost = math.log(values[0]) - interp_log(values[1:], 2.0, off_weeks)
    if math.isnan(days_since) or days_since >= 14:
        weight = 0.0
    else:
        weight = math.exp(-max(days_since - 2.0, 0.0) / 3.0)
    return off + weight * boost


def _drug_rows(drug: str) -> dict[str, tuple[list[str] | None, tuple[float, ...]]]:
    if drug == "tel":
        return dict(TEL_COUNT)
    return {**IL2_COUNT, **{f"{m} MFI": (None, v) for m, v in IL2_MFI.items()}}


def _row_log_effect(drug: str, values, week: float) -> float:
    if drug == "tel":
        return interp_log(values, week)
    return il2_log_effect(values, week, days_since_last_il2_dose(week))


def patient_effects(arm: str, week: float, resp: dict[str, float], z: dict[str, float],
                    *, cd25_shift_only: bool = False
                    ) -> tuple[dict[str, float], dict[str, float]]:
    """Per-leaf log fold change and per-marker Treg MFI log fold change for one visit.

    With ``cd25_shift_only`` IL-2 leaves Treg numbers as they are (only its MFI effects act):
    the scenario where a drug moves a gate's marker without moving the population."""
    leaf_log: dict[str, float] = {}
    mfi_log: dict[str, float] = {}
    for drug in DRUGS[arm]:
        for row, (leaves, values) in _drug_rows(drug).items():
            if cd25_shift_only and drug == "il2" and row == "Treg":
                continue
            peak = max(abs(math.log(v)) for v in values) or 1.0
            eff = _row_log_effect(drug, values, week)
            # One response strength per patient and drug moves all its readouts together
            # (a strong telitacicept responder loses naive B and plasmablasts alike).
            key = f"{drug}:MFI" if leaves is None else drug
            eff = resp[drug] * eff + z[key] * abs(eff) / peak
            if leaves is None:
                mfi_log[row.split()[0]] = mfi_log.get(row.split()[0], 0.0) + eff
            else:
                for leaf in leaves:
                    leaf_log[leaf] = leaf_log.get(leaf, 0.0) + eff
    return leaf_log, mfi_log


def rng_stream(seed: int, *key: int) -> np.random.Generator:
    # Keyed (not sequential) streams: a sample's randomness depends on who and when it is,
    # not on how many samples were generated before it.
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


@dataclass
class SimulatedCohort:
    """A simulated trial cohort on disk.

    Attributes
    ----------
    out
        The cohort folder (``samplesheet.csv``, ``truth.csv``, ``effects.csv``,
        ``design.csv``, ``qc_truth.csv`` and ``fcs/``).
    samplesheet
        One row per FCS file (see :func:`simulate_cohort`).
    truth
        True population counts per sample × population (long format).
    design
        One row per patient: arm, baseline parameters, responder status.
    effects
        Planted fold changes per population × arm × week.
    clinical
        One row per patient × visit: SLEDAI-2K, C3, C4, anti-dsDNA, immunoglobulins…
        (``clinical.csv``).
    cba_sheet, cytokine_truth
        The cytometric bead-array sheet (``cba/cba_sheet.csv``: standards, blanks and one
        serum sample per visit) and the true concentrations (``cba/cytokine_truth.csv``).
    """

    out: Path
    samplesheet: pd.DataFrame
    truth: pd.DataFrame
    design: pd.DataFrame
    effects: pd.DataFrame
    n_events_total: int = 0
    clinical: pd.DataFrame | None = None
    cba_sheet: pd.DataFrame | None = None
    cytokine_truth: pd.DataFrame | None = None

    def summary(self) -> str:
        """A short human-readable summary of the cohort and its true readouts."""
        ss = self.samplesheet
        arms = list(dict.fromkeys(self.effects["arm"]))  # the order the caller gave
        per_arm = self.design.groupby("arm").size().reindex(arms, fill_value=0)
        n_events = self.n_events_total
        weeks = sorted(ss["week"].unique())
        lines = [f"Simulated SLE trial cohort in {self.out}",
                 f"  patients: {len(self.design)} ("
                 + ", ".join(f"{a} {n}" for a, n in per_arm.items()) + ")",
                 f"  visits (weeks): {', '.join(f'{w:g}' for w in weeks)}",
                 f"  files: {len(ss)} FCS ({ss['panel'].nunique()} panels), "
                 f"{n_events:,} events",
                 "  mean true readouts (truth.csv):"]
        tr = self.truth
        picks = [("Treg", "Treg % CD4"), ("B cells", "B % live lym"), ("Plasmablasts", "PB % B")]
        cols = []
        for pop, label in picks:
            sub = tr[tr["population"] == pop]
            cols.append(sub.groupby(["arm", "week"], sort=False)["pct_of_reference"].mean()
                        .rename(label))
        table = pd.concat(cols, axis=1).round(2)
        arm_order = {a: i for i, a in enumerate(per_arm.index)}
        table = table.reset_index().sort_values(
            ["arm", "week"], key=lambda s: s.map(arm_order) if s.name == "arm" else s)
        lines.append("    " + table.to_string(index=False).replace("\n", "\n    "))
        return "\n".join(lines)


ZERO_Z: dict[str, float] = {"tel": 0.0, "il2": 0.0, "il2:MFI": 0.0}


def write_csv(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(path)
