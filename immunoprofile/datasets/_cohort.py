"""The simulated SLE trial: design, absolute counts, treatment effects, files and truth.

Absolute counts (cells/µL) of leaf cell types are simulated first, per patient and visit; every
percentage, in the files and in the truth table, follows from them (DOMAIN §3 bold note), so
compositional effects are real: under telitacicept memory B % of B rises while memory counts
barely move, because naive B cells fall.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from immunoprofile.datasets._events import (
    B_LEAVES,
    BLOOD_LEAVES,
    T_LEAVES,
    TUBE_TO_BLOOD,
    TubeParams,
    leaf_labels,
    simulate_tube,
    tube_leaf_fractions,
)
from immunoprofile.datasets._instruments import get_instrument
from immunoprofile.datasets._realistic import REALISTIC_DEFAULT
from immunoprofile.io.fcs_write import write_fcs

__all__ = ["POPULATIONS", "SimulatedCohort", "population_members", "simulate_cohort"]

TUBES = ("treg", "bcell")
_TREG = ["treg_naive_foxp3pos", "treg_naive_foxp3neg", "treg_memory_foxp3pos",
         "treg_memory_foxp3neg"]

# Canonical hierarchy (DOMAIN §2): (population, parent) in hierarchy order.
POPULATIONS: dict[str, list[tuple[str, str | None]]] = {
    "treg": [("Lymphocytes", None), ("Singlets", "Lymphocytes"),
             ("Live lymphocytes", "Singlets"), ("T cells", "Live lymphocytes"),
             ("CD4+ T cells", "T cells"), ("Treg", "CD4+ T cells"), ("FOXP3+ Treg", "Treg"),
             ("Naive Treg", "Treg"), ("Memory Treg", "Treg"),
             ("Conventional CD4", "CD4+ T cells")],
    "bcell": [("Lymphocytes", None), ("Singlets", "Lymphocytes"),
              ("Live lymphocytes", "Singlets"), ("B cells", "Live lymphocytes"),
              ("Mature B cells", "B cells"), ("Naive B", "Mature B cells"),
              ("Unswitched memory B", "Mature B cells"), ("Switched memory B", "Mature B cells"),
              ("Double negative B", "Mature B cells"), ("Transitional B", "Mature B cells"),
              ("Plasmablasts", "B cells"), ("Plasma cells", "Plasmablasts")],
}
# The population each one is "quoted as % of" (DOMAIN §2 table).
REFERENCE = {"Singlets": "Lymphocytes", "T cells": "Live lymphocytes",
             "CD4+ T cells": "T cells", "Treg": "CD4+ T cells", "FOXP3+ Treg": "Treg",
             "Naive Treg": "Treg", "Memory Treg": "Treg", "Conventional CD4": "CD4+ T cells",
             "B cells": "Live lymphocytes", **{p: "B cells" for p in (
                 "Mature B cells", "Naive B", "Unswitched memory B", "Switched memory B",
                 "Double negative B", "Transitional B", "Plasmablasts", "Plasma cells")}}


def population_members(tube: str) -> dict[str, list[str]]:
    """Leaf labels making up each canonical population of a tube.

    "Lymphocytes" counts lymphocyte singlets (live or dead) and lymphocyte doublets;
    "Singlets" the lymphocyte singlets; "Live lymphocytes" and everything below are live
    singlet lymphocytes. Transitional B cells are inside "Naive B" (IgD+CD27−) as well.

    Parameters
    ----------
    tube
        ``"treg"`` or ``"bcell"``.

    Returns
    -------
    dict
        ``{population: [leaf labels]}`` for every canonical population of the tube.

    Raises
    ------
    ValueError
        Another tube name.
    """
    live = leaf_labels(tube)
    out = {"Lymphocytes": [*live, "dead_lymphocyte", "lymphocyte_doublet"],
           "Singlets": [*live, "dead_lymphocyte"], "Live lymphocytes": live}
    if tube == "treg":
        cd4 = [leaf for leaf in T_LEAVES if leaf != "cd8_other_t"]
        out |= {"T cells": list(T_LEAVES), "CD4+ T cells": cd4, "Treg": list(_TREG),
                "FOXP3+ Treg": [t for t in _TREG if t.endswith("foxp3pos")],
                "Naive Treg": [t for t in _TREG if "naive" in t],
                "Memory Treg": [t for t in _TREG if "memory" in t],
                "Conventional CD4": [leaf for leaf in cd4 if leaf not in _TREG]}
    elif tube == "bcell":
        mature = B_LEAVES[:5]
        out |= {"B cells": list(B_LEAVES), "Mature B cells": mature,
                "Naive B": ["b_naive", "b_transitional"], "Unswitched memory B": ["b_unswitched"],
                "Switched memory B": ["b_switched"], "Double negative B": ["b_double_negative"],
                "Transitional B": ["b_transitional"],
                "Plasmablasts": ["plasmablast", "plasma_cell"], "Plasma cells": ["plasma_cell"]}
    else:
        raise ValueError(f"tube must be 'treg' or 'bcell', not {tube!r}")
    return out


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
_W = (2, 4, 12, 24)
IL2_COUNT = {"Treg": (_TREG, (1.8, 1.3, 1.4, 1.1)), "NK": (["nk"], (1.3, 1.1, 1.2, 1.0)),
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


def _draw_baseline(rng: np.random.Generator) -> dict[str, float]:
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


def _interp_log(values: Sequence[float], week: float, weeks=(0, *_W)) -> float:
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
    off = _interp_log(values[1:], week, off_weeks)
    boost = math.log(values[0]) - _interp_log(values[1:], 2.0, off_weeks)
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
        return _interp_log(values, week)
    return il2_log_effect(values, week, days_since_last_il2_dose(week))


def _patient_effects(arm: str, week: float, resp: dict[str, float], z: dict[str, float]
                     ) -> tuple[dict[str, float], dict[str, float]]:
    """Per-leaf log fold change and per-marker Treg MFI log fold change for one visit."""
    leaf_log: dict[str, float] = {}
    mfi_log: dict[str, float] = {}
    for drug in DRUGS[arm]:
        for row, (leaves, values) in _drug_rows(drug).items():
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


def _seed(seed: int, *key: int) -> np.random.Generator:
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


def _make_design(n_per_arm: int, arms: Sequence[str], seed: int) -> pd.DataFrame:
    rng = _seed(seed, 0)
    alloc = rng.permutation(np.repeat(np.arange(len(arms)), n_per_arm))
    width = max(3, len(str(alloc.size)))
    enrol = np.sort(rng.integers(0, 180, alloc.size))
    rows = []
    for i, a in enumerate(alloc):
        arm = arms[a]
        prng = _seed(seed, 1, i + 1)
        h = _draw_baseline(prng)
        resp = {d: 1.0 if prng.random() < RESPONDER_P else PARTIAL for d in ("tel", "il2")}
        z = {"tel": float(prng.normal(0.0, EFFECT_SD)), "il2": float(prng.normal(0.0, EFFECT_SD)),
             "il2:MFI": float(prng.normal(0.0, MFI_EFFECT_SD))}
        rows.append({"patient_id": f"P{i + 1:0{width}d}", "arm": arm, "patient_index": i + 1,
                     "enrolment_day": int(enrol[i]),
                     "tel_response": resp["tel"] if "tel" in DRUGS[arm] else math.nan,
                     "il2_response": resp["il2"] if "il2" in DRUGS[arm] else math.nan,
                     **{f"baseline_{k}": v for k, v in h.items()},
                     "_resp": resp, "_z": z})
    return pd.DataFrame(rows)


def _visit_blood(row: pd.Series, week: float, seed: int
                 ) -> tuple[dict[str, float], dict[str, float]]:
    """Leaf cells/µL and Treg MFI log fold changes of one patient at one visit."""
    base = blood_leaves({k: row[f"baseline_{k}"] for k in BASELINE})
    leaf_log, mfi_log = _patient_effects(row["arm"], week, row["_resp"], row["_z"])
    rng = _seed(seed, 2, int(row["patient_index"]), round(week * 7))
    # Every visit, week 0 included, is one noisy draw around the patient's own level.
    common = rng.normal(0.0, VISIT_SD_COMMON)
    noise = rng.normal(0.0, VISIT_SD_LEAF, len(BLOOD_LEAVES))
    blood = {leaf: base[leaf] * math.exp(common + noise[i] + leaf_log.get(leaf, 0.0))
             for i, leaf in enumerate(BLOOD_LEAVES)}
    return blood, mfi_log


def _blood_members(tube: str) -> dict[str, list[str]]:
    out = {}
    for pop, leaves in population_members(tube).items():
        if pop in ("Lymphocytes", "Singlets"):
            continue  # they hold dead cells and doublets, which blood counts do not
        out[pop] = [b for leaf in leaves for b in TUBE_TO_BLOOD.get(leaf, [leaf])]
    return out


def _effects_table(arms: Sequence[str], weeks: Sequence[float]) -> pd.DataFrame:
    """Planted fold changes: geometric mean over patients and for a full responder."""
    base = median_blood_leaves()
    mean_resp = RESPONDER_P + (1 - RESPONDER_P) * PARTIAL
    rows = []
    for arm in arms:
        for week in weeks:
            full, mean = {}, {}
            for resp, store in ((1.0, full), (mean_resp, mean)):
                leaf_log, mfi_log = _patient_effects(
                    arm, week, {"tel": resp, "il2": resp}, _ZERO_Z)
                store.update({("leaf", k): v for k, v in leaf_log.items()})
                store.update({("mfi", k): v for k, v in mfi_log.items()})
            pops = [(t, p, m) for t in TUBES for p, m in _blood_members(t).items()]
            pops.append(("", "NK cells", ["nk"]))
            for panel, pop, members in pops:
                w = np.array([base[b] for b in members])
                fc = [float(w @ np.exp([s.get(("leaf", b), 0.0) for b in members]) / w.sum())
                      for s in (mean, full)]
                rows.append((panel, pop, "count", arm, week, *fc))
            for marker in IL2_MFI:
                rows.append(("treg", "Treg", f"{marker} MFI", arm, week,
                             math.exp(mean.get(("mfi", marker), 0.0)),
                             math.exp(full.get(("mfi", marker), 0.0))))
    return pd.DataFrame(rows, columns=["panel", "population", "readout", "arm", "week",
                                       "expected_fold_change", "full_response_fold_change"])


_ZERO_Z: dict[str, float] = {"tel": 0.0, "il2": 0.0, "il2:MFI": 0.0}


def _batches(design: pd.DataFrame, weeks: Sequence[float], seed: int) -> dict[tuple, str]:
    """Acquisition batches of 2-4 patient visits (4-8 files), in visit order."""
    rng = _seed(seed, 5)
    visits = [(w, pid) for w in sorted(weeks)
              for pid in design.sort_values("enrolment_day", kind="stable")["patient_id"]]
    out, i, b = {}, 0, 0
    while i < len(visits):
        left = len(visits) - i
        size = left if left <= 4 else int(rng.integers(2, 5))
        if left - size == 1:  # never leave a lone visit for the last batch
            size -= 1
        b += 1
        for v in visits[i:i + size]:
            out[v] = f"B{b:02d}"
        i += size
    return out


def _batch_scale(seed: int, batch: str, tube: str) -> dict[str, float]:
    from immunoprofile.datasets._events import PANELS

    rng = _seed(seed, 3, int(batch[1:]), TUBES.index(tube))
    return {m: float(math.exp(rng.normal(0.0, BATCH_SD.get(m, 0.08))))
            for _, m in PANELS[tube]["fluorescence"] if m != "Viability"}


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(path)


def _truth_rows(tube: str, counts: dict[str, int], blood: dict[str, float], lym_ul: float,
                base: dict) -> list[dict]:
    members = population_members(tube)
    bmem = _blood_members(tube)
    n = {pop: sum(counts.get(leaf, 0) for leaf in leaves) for pop, leaves in members.items()}
    live = n["Live lymphocytes"]
    rows = []
    for pop, parent in POPULATIONS[tube]:
        ref = REFERENCE.get(pop)
        pc = n[parent] if parent else math.nan
        rc = n[ref] if ref else math.nan
        rows.append({**base, "population": pop, "parent": parent or "", "count": n[pop],
                     "parent_count": pc, "pct_parent": 100 * n[pop] / pc if pc else math.nan,
                     "reference": ref or "",
                     "pct_of_reference": 100 * n[pop] / rc if rc else math.nan,
                     "pct_of_live": 100 * n[pop] / live if live else math.nan,
                     "true_per_ul": lym_ul * n[pop] / live if live else math.nan,
                     "model_per_ul": sum(blood[b] for b in bmem[pop]) if pop in bmem
                     else math.nan})
    return rows


def simulate_cohort(
    out: str | Path,
    *,
    patients_per_arm: int = 8,
    n_events: int = 50_000,
    visits: Sequence[float] = (0, 2, 4, 12, 24),
    seed: int = 0,
    arms: Sequence[str] = ("TEL", "IL2", "COMBO", "SOC"),
    artefact_rate: float = 0.15,
    realistic: bool | None = None,
    instruments: str | Sequence[str] = "fortessa",
    export: str | None = None,
) -> SimulatedCohort:
    """Simulate a randomised SLE trial and write it to ``out``.

    Parameters
    ----------
    out
        Folder to write (created). Files: ``fcs/<sample_id>.fcs`` with
        ``fcs/<sample_id>.labels.parquet`` beside each (per-event ``label`` and ``artefact``),
        ``samplesheet.csv``, ``truth.csv``, ``effects.csv``, ``design.csv``, ``qc_truth.csv``.
    patients_per_arm
        Patients randomised to each arm.
    n_events
        Events acquired per tube (all of them are written unless ``export`` keeps a subset).
    visits
        Visit weeks (week 0 is the pre-treatment baseline).
    seed
        Same seed, same bytes. Every sample draws from its own stream keyed by patient, visit
        and tube, so one file does not depend on which others were generated.
    arms
        Arms among ``TEL``, ``IL2``, ``COMBO`` and ``SOC`` (control).
    artefact_rate
        Share of files with a clog or drift artefact (flagged per event in the labels).
    realistic
        Overlapping populations as in real files (see ``TubeParams.realistic``); ``None``
        takes ``REALISTIC_DEFAULT``. Realistic cohorts also give 20% of files an acquisition
        pause (a jump in Time).
    instruments
        Cytometer(s) the files come from (``"fortessa"``, ``"canto"``, ``"cytoflex"``,
        ``"aurora"``): batch *k* is acquired on ``instruments[(k - 1) % len(instruments)]``,
        so both tubes of a visit share one instrument, named in each file's ``$CYT``.
    export
        ``None`` writes every event; ``"lymphocytes"`` only those inside a lymphocyte scatter
        gate (a FlowJo-style exported subset). Truth and labels count the written events.

    Returns
    -------
    SimulatedCohort
        The tables, also written as CSV. ``truth.csv`` counts events by their true label,
        leaving out events flagged ``artefact`` (what a perfect time QC keeps); it has
        ``count``, ``parent_count``, ``pct_parent``, ``pct_of_reference`` (the DOMAIN "quoted
        as % of" reference), ``pct_of_live``, ``true_per_ul`` (``lymphocytes_per_ul`` × % of
        live lymphocytes) and ``model_per_ul`` (the blood-model count before event sampling).
    """
    unknown = [a for a in arms if a not in DRUGS]
    if unknown:
        raise ValueError(f"unknown arms {unknown}; choose from {sorted(DRUGS)}")
    realistic = REALISTIC_DEFAULT if realistic is None else bool(realistic)
    insts = [get_instrument(i) for i in ([instruments] if isinstance(instruments, str)
                                         else instruments)]
    if not insts:
        raise ValueError("instruments must name at least one instrument")
    out = Path(out)
    (out / "fcs").mkdir(parents=True, exist_ok=True)
    weeks = sorted({float(w) for w in visits})
    integral = all(w.is_integer() for w in weeks)
    design = _make_design(patients_per_arm, list(arms), seed)
    batches = _batches(design, weeks, seed)
    start = _dt.date(2024, 1, 8)
    sheet, truth, qc = [], [], []
    n_total = 0
    for _, prow in design.iterrows():
        for week in weeks:
            blood, mfi_log = _visit_blood(prow, week, seed)
            lym_ul = round(sum(blood.values()))
            tp = f"W{week:g}"
            batch = batches[(week, prow["patient_id"])]
            inst = insts[(int(batch[1:]) - 1) % len(insts)]
            dsl = days_since_last_il2_dose(week) if "il2" in DRUGS[prow["arm"]] else math.nan
            # Acquisition date: the batch is run a week after its last visit was drawn.
            run_day = prow["enrolment_day"] + round(7 * week) + 7
            for t_idx, tube in enumerate(TUBES):
                sid = f"{prow['patient_id']}_{tp}_{tube}"
                rng = _seed(seed, 4, int(prow["patient_index"]), round(week * 7), t_idx)
                u = rng.random()
                kind = None if u >= artefact_rate else ("clog" if u < 0.6 * artefact_rate
                                                        else "drift")
                lms = {}
                if tube == "treg":
                    lms = {(leaf, m): math.exp(v) for leaf in _TREG for m, v in mfi_log.items()}
                params = TubeParams(leaf_fractions=tube_leaf_fractions(tube, blood),
                                    marker_scale=_batch_scale(seed, batch, tube),
                                    leaf_marker_scale=lms, artefact=kind,
                                    scatter_scale=float(rng.normal(1.0, 0.03)),
                                    realistic=realistic, instrument=inst.name, export=export)
                if realistic:  # drawn only here, so default cohorts keep their bytes
                    params.pauses = int(rng.random() < PAUSE_RATE)
                sim = simulate_tube(tube, n_events, rng=rng, params=params)
                n_total += sim.events.shape[0]
                date = start + _dt.timedelta(days=int(run_day))
                btim = _dt.datetime(2024, 1, 1, 9, 0) + _dt.timedelta(minutes=7 * t_idx)
                last = float(sim.events[-1, -1]) if len(sim.events) else 0.0
                etim = btim + _dt.timedelta(seconds=last / 100.0)
                meta = {"$DATE": date.strftime("%d-%b-%Y").upper(),
                        "$BTIM": btim.strftime("%H:%M:%S"), "$ETIM": etim.strftime("%H:%M:%S"),
                        "$CYT": inst.cyt, "$CYTSN": inst.cytsn, "$TIMESTEP": "0.01",
                        "$FIL": f"{sid}.fcs", "$SRC": prow["patient_id"],
                        "TUBE NAME": "Treg" if tube == "treg" else "B cells",
                        "EXPERIMENT NAME": f"SLE TEL-IL2 {batch}"}
                write_fcs(out / "fcs" / f"{sid}.fcs", sim.events, sim.pnn, sim.pns,
                          spillover=sim.spillover, metadata=meta,
                          pnr=[inst.pnr] * len(sim.pnn))
                labels = pd.DataFrame({"label": sim.label_strings, "artefact": sim.artefact})
                lpath = out / "fcs" / f"{sid}.labels.parquet"
                tmp = lpath.with_name(f".{lpath.name}.tmp")
                labels.to_parquet(tmp, index=False)
                tmp.replace(lpath)
                good = np.bincount(sim.labels[~sim.artefact], minlength=len(sim.label_names))
                counts = dict(zip(sim.label_names, good.tolist(), strict=True))
                wk = int(week) if integral else week
                base = {"sample_id": sid, "patient_id": prow["patient_id"], "arm": prow["arm"],
                        "timepoint": tp, "week": wk, "panel": tube}
                truth += _truth_rows(tube, counts, blood, lym_ul, base)
                sheet.append({"sample_id": sid, "path": f"fcs/{sid}.fcs",
                              "patient_id": prow["patient_id"], "arm": prow["arm"],
                              "timepoint": tp, "week": wk, "batch": batch, "panel": tube,
                              "lymphocytes_per_ul": lym_ul, "days_since_last_il2_dose": dsl})
                qc.append({"sample_id": sid, "artefact": kind or "",
                           "n_artefact_events": int(sim.artefact.sum())})
    samplesheet = pd.DataFrame(sheet)
    truth_df = pd.DataFrame(truth)
    effects = _effects_table(list(arms), weeks)
    if integral:
        effects["week"] = effects["week"].astype(int)
    truth_df["parent_count"] = truth_df["parent_count"].astype("Int64")
    design_out = design.drop(columns=["_resp", "_z"])
    for df, name in ((samplesheet, "samplesheet"), (truth_df, "truth"), (effects, "effects"),
                     (design_out, "design"), (pd.DataFrame(qc), "qc_truth")):
        _write_csv(df, out / f"{name}.csv")
    cohort = SimulatedCohort(out=out, samplesheet=samplesheet, truth=truth_df,
                             design=design_out, effects=effects, n_events_total=n_total)
    _add_serology(cohort, seed)
    return cohort


def _add_serology(cohort: SimulatedCohort, seed: int) -> None:
    """Cytokine bead-array files and the clinical table, from the same patients and visits.

    Each lives in its own module (``_cba.py``: CBA FCS files, standards and their sheet;
    ``_clinical.py``: the clinical table), linked to the cell counts of this cohort.
    """
    from immunoprofile.datasets._cba import simulate_cba
    from immunoprofile.datasets._clinical import simulate_clinical

    # Clinical first: the cytokines' disease-activity links read the clinical table.
    simulate_clinical(cohort, seed=seed)
    simulate_cba(cohort, seed=seed)
