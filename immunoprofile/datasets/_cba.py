"""Simulated cytometric bead arrays (BD CBA Th1/Th2/Th17) for the simulated trial (DOMAIN §8).

True serum concentrations are drawn per patient × visit: SLE medians and between-patient log-SDs
from DOMAIN §8, IL-6 and IL-10 raised with disease activity (anti-dsDNA, SLEDAI and low C3/C4 of
``cohort.clinical`` at the patient's first visit, or plasmablast share of B cells from
``cohort.design`` when there is no clinical table), the arm effects at weeks 2/4/12/24 scaled by
the patient's drug response, and serum IL-2 raised within a day of an IL-2 dose.

Bead files: seven bead clusters along APC (dimmest first, in the kit's order), within-cluster
CV 8–12%, 300–500 beads per analyte; PE = 5PL(true concentration in the well) with per-bead
multiplicative noise (σ 0.15 log); 3–5% debris and 2–5% doublets. Plates hold up to 40 samples
(all visits of a patient on one plate) plus the full standard series and two blanks; curve
parameters are shared within a plate and drift a little between plates.

The 7 clusters keep DOMAIN's 0.35–0.40 log10 spacing, which does not fit inside 1,000–50,000
(1.7 decades): the ladder starts at 500–700 and ends near 60,000–130,000, inside the 18-bit
range.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from immunoprofile.datasets._trial import DRUGS, SimulatedCohort, rng_stream, write_csv
from immunoprofile.io.fcs_write import write_fcs

__all__ = ["CYTOKINE_TRUTH", "PlateParams", "plate_params", "simulate_cba", "simulate_cba_plate"]

KIT = "bd_cba_th1_th2_th17"
#: DOMAIN §8: healthy median, SLE median (pg/mL), between-patient log-SD. IL-17A is "< LOD
#: (tail to 20)": a 1.5 pg/mL median with log-SD 1.0 puts ~5% above 8 pg/mL (assumed).
CYTOKINE_TRUTH: dict[str, tuple[float, float, float]] = {
    "IL-2": (2.0, 2.0, 0.7), "IL-4": (2.0, 2.5, 0.7), "IL-6": (3.0, 8.0, 0.9),
    "IL-10": (3.0, 6.0, 0.8), "TNF": (2.0, 3.0, 0.7), "IFN-γ": (3.0, 5.0, 0.9),
    "IL-17A": (1.0, 1.5, 1.0),
}
VISIT_SD = 0.30  # visit-to-visit log-SD within a patient (assumed)
EFFECT_WEEKS = (0, 2, 4, 12, 24)
ARM_EFFECTS = {  # DOMAIN §8, × vs week 0 at weeks 2/4/12/24 (full responders)
    "il2": {"IL-17A": (0.8, 0.85, 0.7, 0.8), "IL-6": (0.85, 0.9, 0.8, 0.85)},
    "tel": {"IL-6": (1.0, 0.95, 0.85, 0.8), "IL-10": (1.0, 0.95, 0.85, 0.8)},
}
#: log-concentration change per SD of each clinical readout at the first visit (assumed);
#: "low_c3" is −z(C3). The residual between-patient SD shrinks so the total stays DOMAIN's.
ACTIVITY = {"IL-10": {"anti_dsdna": 0.35, "sledai": 0.15, "low_c3": 0.15},
            "IL-6": {"sledai": 0.30, "low_c3": 0.15, "low_c4": 0.10, "anti_dsdna": 0.10}}
ACTIVITY_FALLBACK = {"IL-10": 0.40, "IL-6": 0.35}  # per SD of logit plasmablast % of B
IL2_DOSE_FOLD = 10.0  # serum IL-2 within 24 h of a 1 MIU s.c. dose (assumed)
PLATE_SIZE = 40
CHANNELS = ["FSC-A", "FSC-H", "SSC-A", "PE-A", "APC-A", "APC-Cy7-A", "Time"]


@dataclass
class PlateParams:
    """One plate's bead ladder and standard curves (per analyte, dimmest bead first)."""

    analytes: tuple[str, ...]
    centres: np.ndarray  # APC median per bead
    cv: np.ndarray  # within-cluster CV per bead
    curve: dict[str, tuple[float, float, float, float, float]]  # bottom, top, ec50, hill, asym
    scatter: tuple[float, float]  # FSC-A, SSC-A medians of single beads

    def reporter(self, analyte: str, conc: float | np.ndarray) -> np.ndarray:
        """Median PE of a bead at a well concentration (the 5PL of DOMAIN §8)."""
        a, d, c, b, g = self.curve[analyte]
        x = np.maximum(np.asarray(conc, dtype=float), 0.0)
        with np.errstate(divide="ignore"):
            return a + (d - a) / (1.0 + (c / x) ** b) ** g


def _kit_analytes(name: str = KIT) -> tuple[tuple[str, ...], tuple[float, ...]]:
    # start-up time: the simulator's other parts load when used
    from immunoprofile.cba import load_kit

    kit = load_kit(name)
    return kit.analytes, kit.standards_pg_ml


def plate_params(seed: int, plate_index: int, analytes: Sequence[str]) -> PlateParams:
    """The kit lot's curves and ladder (from ``seed``), nudged for one plate."""
    lot = rng_stream(seed, 43)
    n = len(analytes)
    first = lot.uniform(500, 700)
    centres = first * 10 ** np.concatenate([[0.0], np.cumsum(lot.uniform(0.35, 0.40, n - 1))])
    cv = lot.uniform(0.08, 0.12, n)
    base = {a: (lot.uniform(30, 80), lot.uniform(20_000, 60_000),
                math.exp(lot.uniform(math.log(300), math.log(1500))), lot.uniform(1.0, 1.3),
                lot.uniform(0.8, 1.2)) for a in analytes}
    rng = rng_stream(seed, 42, plate_index)
    shift = math.exp(rng.normal(0, 0.02))
    curve = {}
    for a, (bot, top, ec50, hill, asym) in base.items():
        e = rng.normal(0, 1, 5)
        curve[a] = (float(np.clip(bot * math.exp(0.10 * e[0]), 30, 80)),
                    float(np.clip(top * math.exp(0.05 * e[1]), 20_000, 60_000)),
                    float(np.clip(ec50 * math.exp(0.08 * e[2]), 300, 1500)),
                    float(np.clip(hill + 0.02 * e[3], 1.0, 1.3)),
                    float(np.clip(asym + 0.02 * e[4], 0.8, 1.2)))
    return PlateParams(tuple(analytes), centres * shift, cv, curve,
                       (70_000 * math.exp(rng.normal(0, 0.03)),
                        22_000 * math.exp(rng.normal(0, 0.03))))


def bead_events(well_conc: Mapping[str, float], params: PlateParams, rng: np.random.Generator,
                *, missing: Sequence[str] = (), beads: tuple[int, int] = (300, 500)
                ) -> np.ndarray:
    """Events of one bead file (columns :data:`CHANNELS`), beads of ``missing`` left out."""
    parts = []
    for i, a in enumerate(params.analytes):
        if a in missing:
            continue
        n = int(rng.integers(beads[0], beads[1] + 1))
        apc = params.centres[i] * np.exp(rng.normal(0, params.cv[i], n))
        pe = params.reporter(a, well_conc.get(a, 0.0)) * np.exp(rng.normal(0, 0.15, n))
        parts.append(np.column_stack([apc, pe]))
    single = np.vstack(parts)
    n = single.shape[0]
    fsc = params.scatter[0] * np.exp(rng.normal(0, 0.04, n))
    ssc = params.scatter[1] * np.exp(rng.normal(0, 0.06, n))
    fsch = fsc * 0.92 * np.exp(rng.normal(0, 0.015, n))
    ev = np.column_stack([fsc, fsch, ssc, single[:, 1], single[:, 0]])
    n_dbl = int(n * rng.uniform(0.02, 0.05))
    i, j = rng.integers(0, n, (2, n_dbl))
    dbl = ev[i] + ev[j]
    dbl[:, 1] = np.maximum(ev[i, 1], ev[j, 1]) * rng.uniform(1.05, 1.2, n_dbl)  # height
    n_deb = int(n * rng.uniform(0.03, 0.05))
    f = 10 ** rng.uniform(np.log10(2_000), np.log10(30_000), n_deb)
    deb = np.column_stack([f, f * rng.uniform(0.8, 1.0, n_deb),
                           10 ** rng.uniform(np.log10(500), np.log10(10_000), n_deb),
                           40 * np.exp(rng.normal(0, 0.5, n_deb)),
                           200 * np.exp(rng.normal(0, 0.8, n_deb))])
    ev = np.vstack([ev, dbl, deb])
    ev = ev[rng.permutation(ev.shape[0])]
    ev[:, 3] += rng.normal(0, 2.0, ev.shape[0])  # electronic noise on PE
    cy7 = 0.01 * ev[:, 4] + 150 * np.exp(rng.normal(0, 0.3, ev.shape[0]))
    time = np.sort(rng.uniform(0, 6_000, ev.shape[0]))
    return np.column_stack([ev, cy7, time]).astype(np.float32)


def simulate_cba_plate(out: str | Path, truth: Mapping[str, Mapping[str, float]], *,
                       plate: str = "P01", plate_index: int = 1, seed: int = 0,
                       dilution: Mapping[str, float] | None = None,
                       missing_beads: Mapping[str, Sequence[str]] | None = None,
                       beads: tuple[int, int] = (300, 500),
                       date: _dt.date = _dt.date(2024, 9, 2), kit: str = KIT) -> pd.DataFrame:
    """Write one plate: the standard series, two blanks and one file per sample.

    Parameters
    ----------
    out
        Folder for the FCS files (created).
    truth
        ``{sample_id: {analyte: true serum pg/mL}}``.
    plate, plate_index
        Plate name and number (the number keys its curve parameters).
    dilution
        Per sample id (default 1): the well holds truth / dilution.
    missing_beads
        Per sample id, analytes whose beads are left out of the file (a bead-mix error).
    beads
        Range of beads per analyte.
    date
        Acquisition date written into the files.
    kit
        The shipped kit whose analytes and standard series the plate carries (e.g.
        ``bd_cba_th1_th2_th17_extended``, its curve extended down to 2.5 pg/mL for serum).

    Returns
    -------
    pandas.DataFrame
        Sheet rows: ``sample_id, path`` (file name), ``plate, role, standard_pg_ml, dilution``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    analytes, standards = _kit_analytes(kit)
    params = plate_params(seed, plate_index, analytes)
    dilution = dict(dilution or {})
    wells = [(f"{plate}_STD{i:02d}", "standard", {a: s for a in analytes}, s)
             for i, s in enumerate(standards)]
    # two blank wells (with the zero standard, three): the LoD is their mean + 3 SD
    wells += [(f"{plate}_BLANK{k}" if k else f"{plate}_BLANK", "blank",
               {a: 0.0 for a in analytes}, math.nan) for k in range(2)]
    wells += [(sid, "sample", {a: float(c) / dilution.get(sid, 1.0) for a, c in conc.items()},
               math.nan) for sid, conc in truth.items()]
    rows = []
    for w, (sid, role, conc, nominal) in enumerate(wells):
        rng = rng_stream(seed, 44, plate_index, w)
        if role == "standard":  # serial-dilution pipetting error, ~2% (assumed)
            conc = {a: c * math.exp(rng.normal(0, 0.02)) for a, c in conc.items()}
        ev = bead_events(conc, params, rng, missing=(missing_beads or {}).get(sid, ()),
                         beads=beads)
        well = f"{'ABCDEFGH'[w // 12]}{w % 12 + 1}"
        meta = {"$DATE": date.strftime("%d-%b-%Y").upper(), "$BTIM": "10:00:00",
                "$CYT": "FACSCanto II", "$FIL": f"{sid}.fcs", "$TIMESTEP": "0.01",
                "TUBE NAME": sid, "PLATE NAME": plate, "WELL ID": well,
                "EXPERIMENT NAME": f"CBA Th1/Th2/Th17 {plate}"}
        write_fcs(out / f"{sid}.fcs", ev, CHANNELS, [""] * len(CHANNELS), metadata=meta)
        rows.append({"sample_id": sid, "path": f"{sid}.fcs", "plate": plate, "role": role,
                     "standard_pg_ml": nominal, "dilution": dilution.get(sid, 1.0)})
    return pd.DataFrame(rows)


def interp_log(values: Sequence[float], week: float) -> float:
    return float(np.interp(week, EFFECT_WEEKS, np.log([1.0, *values])))


def _activity(cohort: SimulatedCohort) -> dict[str, dict[str, float]]:
    """Per patient, the log shift of each analyte from disease activity at the first visit."""
    clin = cohort.clinical
    out: dict[str, dict[str, float]] = {}
    cols = {"anti_dsdna": 1, "sledai": 1, "low_c3": -1, "low_c4": -1}
    src = {"anti_dsdna": "anti_dsdna", "sledai": "sledai", "low_c3": "c3", "low_c4": "c4"}
    if clin is not None and len(clin) and {"patient_id", "week"} <= set(clin.columns):
        first = clin.sort_values("week").drop_duplicates("patient_id").set_index("patient_id")
        z = {}
        for key, sign in cols.items():
            if src[key] not in first.columns:
                continue
            v = pd.to_numeric(first[src[key]], errors="coerce")
            v = np.log(v.clip(lower=1e-3)) if key == "anti_dsdna" else v
            sd = v.std()
            z[key] = (sign * (v - v.mean()) / sd).fillna(0.0) if sd > 0 else v * 0.0
        for pid in first.index:
            out[pid] = {a: sum(b * float(z[k].get(pid, 0.0)) for k, b in betas.items() if k in z)
                        for a, betas in ACTIVITY.items()}
        return out
    for _, row in cohort.design.iterrows():  # no clinical table: plasmablasts stand in
        pb = float(row.get("baseline_pb_of_b", 0.04))
        zz = (math.log(pb / (1 - pb)) - math.log(0.04 / 0.96)) / 0.9
        out[row["patient_id"]] = {a: b * zz for a, b in ACTIVITY_FALLBACK.items()}
    return out


def _true_concentrations(cohort: SimulatedCohort, seed: int) -> pd.DataFrame:
    visits = (cohort.samplesheet.drop_duplicates(["patient_id", "timepoint"])
              .set_index("patient_id"))
    activity = _activity(cohort)
    use_clinical = cohort.clinical is not None
    rows = []
    for _, p in cohort.design.iterrows():
        pid, arm = p["patient_id"], p["arm"]
        prng = rng_stream(seed, 40, int(p["patient_index"]))
        level = {}
        for a, (healthy, sle, sd) in CYTOKINE_TRUTH.items():
            shift = 0.0 if arm == "HC" else activity.get(pid, {}).get(a, 0.0)
            betas = (list(ACTIVITY.get(a, {}).values()) if use_clinical
                     else [ACTIVITY_FALLBACK.get(a, 0.0)])
            resid = math.sqrt(max(sd ** 2 - sum(b ** 2 for b in betas), 0.3 ** 2))
            level[a] = math.log(healthy if arm == "HC" else sle) + shift + prng.normal(0, resid)
        pv = visits.loc[[pid]] if pid in visits.index else visits.iloc[:0]
        for _, v in pv.sort_values("week").iterrows():
            week = float(v["week"])
            vrng = rng_stream(seed, 41, int(p["patient_index"]), round(week * 7))
            dsl = float(v.get("days_since_last_il2_dose", math.nan))
            for a in CYTOKINE_TRUTH:
                log_c = level[a] + vrng.normal(0, VISIT_SD)
                for drug in DRUGS.get(arm, ()):
                    if a in ARM_EFFECTS[drug]:
                        resp = p.get(f"{drug}_response", 1.0)
                        resp = 1.0 if pd.isna(resp) else float(resp)
                        log_c += resp * interp_log(ARM_EFFECTS[drug][a], week)
                if a == "IL-2" and dsl <= 1:
                    log_c += math.log(IL2_DOSE_FOLD)
                rows.append({"sample_id": f"{pid}_{v['timepoint']}_cba", "patient_id": pid,
                             "arm": arm, "timepoint": v["timepoint"], "week": v["week"],
                             "analyte": a, "true_pg_ml": math.exp(log_c),
                             "days_since_last_il2_dose": dsl})
    return pd.DataFrame(rows)


def simulate_cba(cohort: SimulatedCohort, *, seed: int = 0, plate_size: int = PLATE_SIZE
                 ) -> None:
    """Write the cohort's CBA plates into ``cohort.out / "cba"``.

    Writes ``cba/*.fcs``, ``cba/cba_sheet.csv`` (standards, blanks and one serum sample per
    patient visit; paths relative to the sheet) and ``cba/cytokine_truth.csv`` (``sample_id,
    patient_id, arm, timepoint, week, analyte, true_pg_ml``), and sets ``cohort.cba_sheet``
    and ``cohort.cytokine_truth``. All visits of a patient go on one plate of at most
    ``plate_size`` samples, patients in enrolment order.
    """
    out = Path(cohort.out) / "cba"
    truth = _true_concentrations(cohort, seed)
    order = cohort.design.sort_values(["enrolment_day", "patient_index"], kind="stable")
    per_patient = truth.groupby("patient_id")["sample_id"].nunique()
    plates: list[list[str]] = [[]]
    for pid in order["patient_id"]:
        n = int(per_patient.get(pid, 0))
        if plates[-1] and sum(int(per_patient[q]) for q in plates[-1]) + n > plate_size:
            plates.append([])
        plates[-1].append(pid)
    meta_cols = ["sample_id", "patient_id", "arm", "timepoint", "week",
                 "days_since_last_il2_dose"]
    meta = truth[meta_cols].drop_duplicates("sample_id").set_index("sample_id")
    sheets = []
    for k, pids in enumerate(plates, start=1):
        sub = truth[truth["patient_id"].isin(pids)]
        if sub.empty:
            continue
        conc = {sid: dict(zip(g["analyte"], g["true_pg_ml"], strict=True))
                for sid, g in sub.groupby("sample_id", sort=False)}
        date = _dt.date(2024, 9, 2) + _dt.timedelta(days=7 * (k - 1))
        sheet = simulate_cba_plate(out, conc, plate=f"P{k:02d}", plate_index=k, seed=seed,
                                   date=date)
        sheets.append(sheet.join(meta, on="sample_id"))
    sheet = pd.concat(sheets, ignore_index=True)
    truth = truth.drop(columns="days_since_last_il2_dose")
    write_csv(sheet, out / "cba_sheet.csv")
    write_csv(truth, out / "cytokine_truth.csv")
    cohort.cba_sheet, cohort.cytokine_truth = sheet, truth
