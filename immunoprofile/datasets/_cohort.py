"""The simulated SLE trial: design, absolute counts, treatment effects, files and truth.

Absolute counts (cells/µL) of leaf cell types are simulated first, per patient and visit; every
percentage, in the files and in the truth table, follows from them (DOMAIN §3 bold note), so
compositional effects are real: under telitacicept memory B % of B rises while memory counts
barely move, because naive B cells fall.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from immunoprofile.datasets._events import (
    TUBE_TO_BLOOD,
    TubeParams,
    leaf_labels,
    simulate_tube,
    tube_leaf_fractions,
)
from immunoprofile.datasets._instruments import get_instrument
from immunoprofile.datasets._realistic import REALISTIC_DEFAULT
from immunoprofile.datasets._trial import (
    B_LEAVES,
    BASELINE,
    BATCH_SD,
    BLOOD_LEAVES,
    CD4_LEAVES,
    DRUGS,
    EFFECT_SD,
    IL2_MFI,
    MFI_EFFECT_SD,
    PARTIAL,
    PAUSE_RATE,
    RESPONDER_P,
    T_LEAVES,
    TREG_LEAVES,
    VISIT_SD_COMMON,
    VISIT_SD_LEAF,
    ZERO_Z,
    SimulatedCohort,
    blood_leaves,
    days_since_last_il2_dose,
    draw_baseline,
    median_blood_leaves,
    patient_effects,
    rng_stream,
    write_csv,
)
from immunoprofile.io.fcs_write import write_fcs

__all__ = ["POPULATIONS", "SimulatedCohort", "population_members", "simulate_cohort"]

TUBES = ("treg", "bcell")

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
        out |= {"T cells": list(T_LEAVES), "CD4+ T cells": cd4, "Treg": list(TREG_LEAVES),
                "FOXP3+ Treg": [t for t in TREG_LEAVES if t.endswith("foxp3pos")],
                "Naive Treg": [t for t in TREG_LEAVES if "naive" in t],
                "Memory Treg": [t for t in TREG_LEAVES if "memory" in t],
                "Conventional CD4": [leaf for leaf in cd4 if leaf not in TREG_LEAVES]}
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


def _make_design(n_per_arm: int, arms: Sequence[str], seed: int) -> pd.DataFrame:
    rng = rng_stream(seed, 0)
    alloc = rng.permutation(np.repeat(np.arange(len(arms)), n_per_arm))
    width = max(3, len(str(alloc.size)))
    enrol = np.sort(rng.integers(0, 180, alloc.size))
    rows = []
    for i, a in enumerate(alloc):
        arm = arms[a]
        prng = rng_stream(seed, 1, i + 1)
        h = draw_baseline(prng)
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


def _visit_blood(row: pd.Series, week: float, seed: int, cd25_shift_only: bool = False
                 ) -> tuple[dict[str, float], dict[str, float]]:
    """Leaf cells/µL and Treg MFI log fold changes of one patient at one visit."""
    base = blood_leaves({k: row[f"baseline_{k}"] for k in BASELINE})
    leaf_log, mfi_log = patient_effects(row["arm"], week, row["_resp"], row["_z"],
                                        cd25_shift_only=cd25_shift_only)
    rng = rng_stream(seed, 2, int(row["patient_index"]), round(week * 7))
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


def _effects_table(arms: Sequence[str], weeks: Sequence[float],
                   cd25_shift_only: bool = False) -> pd.DataFrame:
    """Planted fold changes: geometric mean over patients and for a full responder."""
    base = median_blood_leaves()
    mean_resp = RESPONDER_P + (1 - RESPONDER_P) * PARTIAL
    rows = []
    for arm in arms:
        for week in weeks:
            full, mean = {}, {}
            for resp, store in ((1.0, full), (mean_resp, mean)):
                leaf_log, mfi_log = patient_effects(
                    arm, week, {"tel": resp, "il2": resp}, ZERO_Z,
                    cd25_shift_only=cd25_shift_only)
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




def _batches(design: pd.DataFrame, weeks: Sequence[float], seed: int) -> dict[tuple, str]:
    """Acquisition batches of 2-4 patient visits (4-8 files), in visit order."""
    rng = rng_stream(seed, 5)
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
    # start-up time: the simulator's other parts load when used
    from immunoprofile.datasets._events import PANELS

    rng = rng_stream(seed, 3, int(batch[1:]), TUBES.index(tube))
    return {m: float(math.exp(rng.normal(0.0, BATCH_SD.get(m, 0.08))))
            for _, m in PANELS[tube]["fluorescence"] if m != "Viability"}


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
    n_events: int | Mapping[str, int] = 50_000,
    visits: Sequence[float] = (0, 2, 4, 12, 24),
    seed: int = 0,
    arms: Sequence[str] = ("TEL", "IL2", "COMBO", "SOC"),
    artefact_rate: float = 0.15,
    realistic: bool | None = None,
    instruments: str | Sequence[str] = "fortessa",
    export: str | None = None,
    random_state: int | None = None,
    il2_cd25_shift: bool = False,
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
        Events acquired per tube (all of them are written unless ``export`` keeps a subset),
        or per tube name, e.g. ``{"treg": 20_000, "bcell": 60_000}``: labs acquire more
        events in a tube whose populations are rare (plasmablasts are ~0.2% of events).
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
    il2_cd25_shift
        A gate-shift scenario: IL-2 raises CD25 on every CD4 T cell (conventional and
        regulatory, by the Treg CD25 effect) and leaves Treg numbers unchanged, so any Treg
        change a gate reports is the marker moving, not the population (``effects.csv``
        says Treg fold change 1).

    Returns
    -------
    SimulatedCohort
        The tables, also written as CSV. ``truth.csv`` counts events by their true label,
        leaving out events flagged ``artefact`` (what a perfect time QC keeps); it has
        ``count``, ``parent_count``, ``pct_parent``, ``pct_of_reference`` (the DOMAIN "quoted
        as % of" reference), ``pct_of_live``, ``true_per_ul`` (``lymphocytes_per_ul`` × % of
        live lymphocytes) and ``model_per_ul`` (the blood-model count before event sampling).

    Notes
    -----
    ``random_state`` is accepted as another name for ``seed`` (scanpy's name, used by the
    analysis functions); given, it wins.
    """
    seed = seed if random_state is None else random_state
    unknown = [a for a in arms if a not in DRUGS]
    if unknown:
        raise ValueError(f"unknown arms {unknown}; choose from {sorted(DRUGS)}")
    realistic = REALISTIC_DEFAULT if realistic is None else bool(realistic)
    insts = [get_instrument(i) for i in ([instruments] if isinstance(instruments, str)
                                         else instruments)]
    if not insts:
        raise ValueError("instruments must name at least one instrument")
    events_of = (dict.fromkeys(TUBES, int(n_events)) if not isinstance(n_events, Mapping)
                 else {t: int(n) for t, n in n_events.items()})
    if set(events_of) != set(TUBES):
        raise ValueError(f"n_events names tubes {sorted(events_of)}; give one count for each "
                         f"of {list(TUBES)} (or one count for both)")
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
            blood, mfi_log = _visit_blood(prow, week, seed, il2_cd25_shift)
            lym_ul = round(sum(blood.values()))
            tp = f"W{week:g}"
            batch = batches[(week, prow["patient_id"])]
            inst = insts[(int(batch[1:]) - 1) % len(insts)]
            dsl = days_since_last_il2_dose(week) if "il2" in DRUGS[prow["arm"]] else math.nan
            # Acquisition date: the batch is run a week after its last visit was drawn.
            run_day = prow["enrolment_day"] + round(7 * week) + 7
            for t_idx, tube in enumerate(TUBES):
                sid = f"{prow['patient_id']}_{tp}_{tube}"
                rng = rng_stream(seed, 4, int(prow["patient_index"]), round(week * 7), t_idx)
                u = rng.random()
                kind = None if u >= artefact_rate else ("clog" if u < 0.6 * artefact_rate
                                                        else "drift")
                lms = {}
                if tube == "treg":
                    lms = {(leaf, m): math.exp(v) for leaf in TREG_LEAVES
                           for m, v in mfi_log.items()}
                    if il2_cd25_shift and "CD25" in mfi_log:  # CD25 up on every CD4 T cell
                        lms |= {(leaf, "CD25"): math.exp(mfi_log["CD25"])
                                for leaf in CD4_LEAVES}
                params = TubeParams(leaf_fractions=tube_leaf_fractions(tube, blood),
                                    marker_scale=_batch_scale(seed, batch, tube),
                                    leaf_marker_scale=lms, artefact=kind,
                                    scatter_scale=float(rng.normal(1.0, 0.03)),
                                    realistic=realistic, instrument=inst.name, export=export)
                if realistic:  # drawn only here, so default cohorts keep their bytes
                    params.pauses = int(rng.random() < PAUSE_RATE)
                sim = simulate_tube(tube, events_of[tube], rng=rng, params=params)
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
    effects = _effects_table(list(arms), weeks, il2_cd25_shift)
    if integral:
        effects["week"] = effects["week"].astype(int)
    truth_df["parent_count"] = truth_df["parent_count"].astype("Int64")
    design_out = design.drop(columns=["_resp", "_z"])
    for df, name in ((samplesheet, "samplesheet"), (truth_df, "truth"), (effects, "effects"),
                     (design_out, "design"), (pd.DataFrame(qc), "qc_truth")):
        write_csv(df, out / f"{name}.csv")
    cohort = SimulatedCohort(out=out, samplesheet=samplesheet, truth=truth_df,
                             design=design_out, effects=effects, n_events_total=n_total)
    _add_serology(cohort, seed)
    return cohort


def _add_serology(cohort: SimulatedCohort, seed: int) -> None:
    """Cytokine bead-array files and the clinical table, from the same patients and visits.

    Each lives in its own module (``_cba.py``: CBA FCS files, standards and their sheet;
    ``_clinical.py``: the clinical table), linked to the cell counts of this cohort.
    """
    # start-up time: the simulator's other parts load when used
    from immunoprofile.datasets._cba import simulate_cba
    from immunoprofile.datasets._clinical import simulate_clinical

    # Clinical first: the cytokines' disease-activity links read the clinical table.
    simulate_clinical(cohort, seed=seed)
    simulate_cba(cohort, seed=seed)
