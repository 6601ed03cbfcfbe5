"""The clinical table: disease activity and laboratory indexes per patient and visit.

One row per patient × visit, keyed by ``(patient_id, timepoint)`` like every visit in
immunoprofile (the Treg and B tubes of a visit both join its clinical row). Columns with a
meaning (units in :data:`UNITS`):

============== ================================================ ===========
column          meaning                                          unit
============== ================================================ ===========
patient_id      patient, as in the sample sheet                  —
timepoint       visit, as in the sample sheet                    —
week            optional: study week (orders the visits)          weeks
arm             optional: randomised arm (else taken from a run)   —
sledai          SLEDAI-2K                                          0–105 points
c3, c4          complement C3, C4                                  g/L
anti_dsdna      anti-double-stranded-DNA antibodies                IU/mL
igg, iga, igm   immunoglobulins                                    g/L
proteinuria     24-hour urine protein                              g/24 h
prednisone_mg   prednisone (equivalent) dose                       mg/day
bilag_new_a/b   optional: new BILAG A / B domain scores vs baseline count
pga             optional: physician's global assessment           0–3
============== ================================================ ===========

Any further column is carried along (numeric ones are analysed like the indexes). Problems are
reported all at once, each with its row (and line in the file), as for the sample sheet.
Derived outcomes (:func:`derive_outcomes`): change from baseline of every index, the SLEDAI-4
response (a fall of ≥ 4 points) and, when BILAG and PGA columns are present, the SLE
Responder Index SRI-4.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from immunoprofile.errors import ImmunoprofileError, SampleSheetError
from immunoprofile.io.samplesheet import natural_key

KEY_COLUMNS = ("patient_id", "timepoint")
#: The standard clinical and laboratory indexes.
INDEX_COLUMNS = ("sledai", "c3", "c4", "anti_dsdna", "igg", "iga", "igm", "proteinuria",
                 "prednisone_mg")
#: Columns a clinical table must have (the other indexes are validated when present).
REQUIRED_COLUMNS = (*KEY_COLUMNS, "sledai")
SRI_COLUMNS = ("bilag_new_a", "bilag_new_b", "pga")
UNITS = {"sledai": "points (SLEDAI-2K, 0–105)", "c3": "g/L", "c4": "g/L",
         "anti_dsdna": "IU/mL", "igg": "g/L", "iga": "g/L", "igm": "g/L",
         "proteinuria": "g/24 h", "prednisone_mg": "mg/day", "week": "weeks",
         "bilag_new_a": "count", "bilag_new_b": "count", "pga": "points (0–3)"}
#: Allowed ranges (inclusive); every numeric column must also be non-negative.
RANGES = {"sledai": (0.0, 105.0), "pga": (0.0, 3.0)}
WHOLE_NUMBERS = ("sledai", "bilag_new_a", "bilag_new_b")
#: Columns that are not analysed as indexes (keys, design, SRI components).
NOT_ANALYSED = frozenset({*KEY_COLUMNS, "arm", "week", "row", "visit_date", "sample_id",
                          "bilag_new_a", "bilag_new_b", "days_since_last_il2_dose"})
_MISSING = frozenset({"", "na", "n/a", "nan", "none", "null"})
SLEDAI4_DROP = 4.0
PGA_RISE = 0.3


class ClinicalTableError(SampleSheetError):
    """A clinical table has problems (all of them are listed in the message)."""


def _isna(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA


def _line(i: int) -> str:
    return f"row {i + 1} (line {i + 2})"


def read_clinical(path: str | Path, *,
                  required: Iterable[str] = REQUIRED_COLUMNS) -> pd.DataFrame:
    """Read and validate a clinical table (CSV or TSV, detected; or Parquet).

    Parameters
    ----------
    path
        The table: one row per patient × visit.
    required
        Columns that must be present (default: ``patient_id``, ``timepoint``, ``sledai``).

    Returns
    -------
    pandas.DataFrame
        Numeric columns as floats (blank, ``NA`` → NaN), ``timepoint`` an ordered categorical
        (by ``week`` when given, otherwise W2 before W12), ``patient_id`` a string;
        ``attrs["source"]`` names the file.

    Raises
    ------
    ClinicalTableError
        Every problem at once, each with its row and line: missing columns, empty keys,
        duplicate patient × visit, non-numeric values, negative values, SLEDAI outside 0–105
        or not a whole number, PGA outside 0–3, a timepoint with several weeks, a patient in
        several arms.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            table = pd.read_parquet(path).astype(str)
            table = table.replace({"nan": "", "None": "", "<NA>": ""})
        else:
            table = pd.read_csv(path, sep=None, engine="python", dtype=str,
                                keep_default_na=False, skipinitialspace=True)
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError,
            pd.errors.EmptyDataError) as exc:
        raise ClinicalTableError(f"clinical table {path}: cannot be read ({exc})") from exc
    return validate_clinical(table, source=str(path), required=required)


def validate_clinical(table: pd.DataFrame, *, source: str = "clinical table",
                      required: Iterable[str] = REQUIRED_COLUMNS) -> pd.DataFrame:
    """Validate a clinical table already in memory (see :func:`read_clinical`).

    Values may be strings (as read from a file) or numbers.

    Parameters
    ----------
    table
        One row per patient × visit; the input is not modified.
    source
        How messages name the table (e.g. its path).
    required
        Columns that must be present (default: ``patient_id``, ``timepoint``, ``sledai``).

    Returns
    -------
    pandas.DataFrame
        As :func:`read_clinical` returns it, with ``attrs["source"]`` set to ``source``.

    Raises
    ------
    ClinicalTableError
        Every problem at once (see :func:`read_clinical`).
    """
    table = table.copy()
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ClinicalTableError(
            f"{source}: missing column(s) {', '.join(missing)} (required: "
            f"{', '.join(required)}; found: {', '.join(table.columns)})")
    if table.empty:
        raise ClinicalTableError(f"{source}: no rows")
    text = table.apply(lambda col: col.map(lambda v: "" if _isna(v) else str(v).strip())
                       .astype(object))
    problems: list[str] = []
    for col in KEY_COLUMNS:
        for i in np.flatnonzero(text[col].eq("").to_numpy()):
            problems.append(f"{_line(i)}: empty {col}")
    filled = text[text["patient_id"].ne("") & text["timepoint"].ne("")]
    dupes = filled[filled.duplicated(list(KEY_COLUMNS), keep=False)]
    for (patient, tp), g in dupes.groupby(list(KEY_COLUMNS), sort=False):
        rows = ", ".join(_line(int(table.index.get_loc(i))) for i in g.index)
        problems.append(f"patient {patient!r} at visit {tp!r} appears more than once: {rows}")
    if "arm" in text.columns:
        arms = text[text["patient_id"].ne("")].groupby("patient_id")["arm"].unique()
        for patient, values in arms.items():
            values = [v for v in values if v]
            if len(values) > 1:
                rows = ", ".join(_line(i)
                                 for i in np.flatnonzero(text["patient_id"].eq(patient)))
                problems.append(f"patient {patient!r} is in several arms "
                                f"({', '.join(values)}): {rows}")
    out = pd.DataFrame(index=table.index)
    for col in table.columns:
        if col in KEY_COLUMNS or col in ("arm", "visit_date", "sample_id"):
            out[col] = text[col]
            continue
        is_missing = text[col].str.lower().isin(_MISSING)
        values = pd.to_numeric(text[col].where(~is_missing), errors="coerce")
        bad = values.isna() & ~is_missing
        known = col in UNITS
        if bad.any() and not known and bad.sum() == (~is_missing).sum():
            out[col] = text[col]  # a text column (e.g. comments): carried, not analysed
            continue
        for i in np.flatnonzero(bad.to_numpy()):
            problems.append(f"{_line(i)}: {col} {text[col].iloc[i]!r} is not a number")
        unit = f" {UNITS[col]}" if known else ""
        for i in np.flatnonzero((values < 0).to_numpy()):
            problems.append(f"{_line(i)}: {col} must not be negative ({values.iloc[i]:g}{unit})")
        if col in RANGES:
            lo, hi = RANGES[col]
            for i in np.flatnonzero(((values > hi) | ((values < lo) & (values >= 0))).to_numpy()):
                problems.append(f"{_line(i)}: {col} {values.iloc[i]:g} is outside {lo:g}–{hi:g}")
        if col in WHOLE_NUMBERS:
            frac = values.notna() & (values >= 0) & (values != np.round(values))
            for i in np.flatnonzero(frac.to_numpy()):
                problems.append(f"{_line(i)}: {col} {values.iloc[i]:g} is not a whole number")
        out[col] = values.astype(float)
    if "week" in out.columns:
        weeks = out.groupby(text["timepoint"])["week"].nunique()
        for tp in weeks[weeks > 1].index:
            at = text["timepoint"].eq(tp).to_numpy()
            values = ", ".join(f"{w:g}" for w in sorted(out.loc[at, "week"].dropna().unique()))
            rows = ", ".join(_line(i) for i in np.flatnonzero(at))
            problems.append(f"timepoint {tp!r} has several weeks ({values}): {rows}")
    if problems:
        raise ClinicalTableError(f"{source} has {len(problems)} problem(s):\n  - "
                                 + "\n  - ".join(problems))
    out["timepoint"] = pd.Categorical(out["timepoint"], categories=_order(out), ordered=True)
    out = out.reset_index(drop=True)
    out.attrs["source"] = source
    return out


def _order(table: pd.DataFrame) -> list[str]:
    timepoints = list(dict.fromkeys(table["timepoint"].astype(str)))
    if "week" in table.columns and table["week"].notna().any():
        week = table.groupby(table["timepoint"].astype(str))["week"].first()
        return sorted(timepoints, key=lambda t: (np.isnan(week.get(t, np.nan)),
                                                 week.get(t, np.inf), natural_key(t)))
    return sorted(timepoints, key=natural_key)


def index_columns(clinical: pd.DataFrame) -> list[str]:
    """The columns analysed as indexes: the standard ones present, then further numeric ones.

    Parameters
    ----------
    clinical
        A validated clinical table.

    Returns
    -------
    list of str
        The :data:`INDEX_COLUMNS` present, in that order, then every other numeric,
        non-categorical column not in :data:`NOT_ANALYSED`, in table order.
    """
    standard = [c for c in INDEX_COLUMNS if c in clinical.columns]
    extra = [c for c in clinical.columns
             if c not in INDEX_COLUMNS and c not in NOT_ANALYSED
             and pd.api.types.is_numeric_dtype(clinical[c])
             and not isinstance(clinical[c].dtype, pd.CategoricalDtype)]
    return standard + extra


def baseline_timepoint(clinical: pd.DataFrame, baseline: str | None = None) -> str:
    """``baseline`` checked against the table, or its first visit.

    Parameters
    ----------
    clinical
        A clinical table; visits are ordered by the ``timepoint`` categories when it is
        categorical, otherwise naturally (W2 before W12).
    baseline
        The baseline visit, or None for the first.

    Returns
    -------
    str
        The baseline visit.

    Raises
    ------
    ClinicalTableError
        ``baseline`` is not a visit of the table.
    """
    tps = ([str(c) for c in clinical["timepoint"].cat.categories]
           if isinstance(clinical["timepoint"].dtype, pd.CategoricalDtype)
           else sorted(set(clinical["timepoint"].astype(str)), key=natural_key))
    if baseline is None:
        return tps[0]
    if str(baseline) not in tps:
        raise ClinicalTableError(f"baseline {baseline!r} is not a visit of the clinical table "
                                 f"(visits: {', '.join(tps)})")
    return str(baseline)


def derive_outcomes(clinical: pd.DataFrame, *, baseline: str | None = None) -> pd.DataFrame:
    """Change from baseline of every index, SLEDAI-4 response and (when possible) SRI-4.

    Parameters
    ----------
    clinical
        A validated clinical table (:func:`read_clinical`).
    baseline
        Baseline visit (default: the first).

    Returns
    -------
    pandas.DataFrame
        The table with, for every index ``x``: ``x_baseline`` and ``x_change`` (visit −
        baseline, in the index's unit); ``sledai4_response`` (boolean: SLEDAI fell by ≥ 4
        points; NA at baseline or when either value is missing); and, when ``bilag_new_a``,
        ``bilag_new_b`` and ``pga`` are present, ``pga_change`` and ``sri4_response``: SLEDAI
        fall ≥ 4, no new BILAG A, at most one new BILAG B, and a PGA rise below 0.3.
    """
    out = clinical.copy()
    base_tp = baseline_timepoint(out, baseline)
    at_base = out["timepoint"].astype(str).eq(base_tp)
    pid = out["patient_id"].astype(str)
    columns = index_columns(out)
    if "pga" in out.columns and "pga" not in columns:
        columns.append("pga")
    for col in columns:
        ref = out.loc[at_base].set_index(pid[at_base])[col]
        out[f"{col}_baseline"] = pid.map(ref).astype(float)
        out[f"{col}_change"] = out[col] - out[f"{col}_baseline"]
    if "sledai" in out.columns:
        change = out["sledai_change"]
        resp = pd.array(change <= -SLEDAI4_DROP, dtype="boolean")
        resp[(change.isna() | at_base).to_numpy()] = pd.NA
        out["sledai4_response"] = resp
        if all(c in out.columns for c in SRI_COLUMNS):
            ok = ((change <= -SLEDAI4_DROP) & (out["bilag_new_a"] == 0)
                  & (out["bilag_new_b"] <= 1) & (out["pga_change"] < PGA_RISE))
            unknown = (change.isna() | out["bilag_new_a"].isna() | out["bilag_new_b"].isna()
                       | out["pga_change"].isna() | at_base)
            sri = pd.array(ok, dtype="boolean")
            sri[unknown.to_numpy()] = pd.NA
            # A patient who already fails one criterion fails whatever the missing ones say.
            fails = ((change > -SLEDAI4_DROP) | (out["bilag_new_a"] > 0)
                     | (out["bilag_new_b"] > 1) | (out["pga_change"] >= PGA_RISE)) & ~at_base
            sri[fails.to_numpy()] = False
            out["sri4_response"] = sri
    return out


def attach_arms(clinical: pd.DataFrame | str | Path,
                arms: Mapping[str, str] | pd.Series | None = None) -> pd.DataFrame:
    """The clinical table (read when a path) with every patient's arm.

    ``arms`` (``patient_id → arm``, e.g. from the sample sheet) fills or checks the table's
    ``arm`` column; patients without an arm are dropped.

    Parameters
    ----------
    clinical
        A validated clinical table, or a path read with :func:`read_clinical`; a table is
        copied, not modified.
    arms
        ``patient_id → arm`` (a mapping or Series); None uses the table's own ``arm`` column.

    Returns
    -------
    pandas.DataFrame
        The table with ``patient_id`` as str and an ``arm`` column, rows without an arm
        removed.

    Raises
    ------
    ImmunoprofileError
        No arm anywhere, or the table and ``arms`` disagree about a patient.
    """
    table = read_clinical(clinical) if isinstance(clinical, str | Path) else clinical.copy()
    table["patient_id"] = table["patient_id"].astype(str)
    if "arm" in table.columns:  # a blank cell is no arm, not an arm named ''
        blank = table["arm"].isna() | table["arm"].astype(str).str.strip().eq("")
        table["arm"] = table["arm"].astype(object).where(~blank, np.nan)
    if arms is not None:
        arms = pd.Series(arms) if not isinstance(arms, pd.Series) else arms
        mapped = table["patient_id"].map(arms.astype(str))
        if "arm" in table.columns:
            clash = mapped.notna() & table["arm"].notna() & (mapped != table["arm"].astype(str))
            if clash.any():
                who = sorted(set(table.loc[clash, "patient_id"]))
                raise ImmunoprofileError(f"the clinical table puts patient(s) {', '.join(who)} "
                                         "in another arm than the sample sheet")
            mapped = mapped.fillna(table["arm"])
        table["arm"] = mapped
    if "arm" not in table.columns:
        raise ImmunoprofileError("the clinical table has no arm column and no sample sheet "
                                 "gave the patients' arms")
    return table[table["arm"].notna()].reset_index(drop=True)

RESPONDER_COLUMNS = ["arm", "timepoint", "rule", "analysis", "n_patients", "n_responders",
                     "pct_responders", "n_without_verdict"]
#: Responder analyses: intention to treat (every randomised patient of the arm; one without a
#: verdict at the visit, e.g. after leaving the trial, is a non-responder) and completers
#: (patients with a verdict at the visit), the usual sensitivity analysis.
ANALYSES = ("itt", "completers")


def responders(
    clinical: pd.DataFrame | str | Path | None = None,
    patients: pd.DataFrame | None = None,
    *,
    baseline: str | None = None,
    rule: str = "immune",
    arms: Mapping[str, str] | pd.Series | None = None,
    analysis: str | Iterable[str] = ANALYSES,
) -> pd.DataFrame:
    """Responders per arm and visit: SLEDAI-4 (and SRI-4) from the clinical table, the immune
    responder rule from the patients table of :func:`~immunoprofile.tl.response`, and both.

    Parameters
    ----------
    clinical
        The clinical table (or its path).
    patients
        The patients table of :func:`~immunoprofile.tl.response` run with a responder rule.
    baseline
        Baseline visit (default: the clinical table's first); it has no verdicts.
    rule
        The immune rule's label in the output (e.g. ``"Treg>=1.5"``).
    arms
        ``patient_id → arm`` when the clinical table has no ``arm``.
    analysis
        ``"itt"`` (intention to treat, as SLE trials count SRI-4 and SLEDAI-4: the
        denominator is every randomised patient of the arm, and a patient without a verdict
        at the visit counts as a non-responder), ``"completers"`` (patients with a verdict),
        or both (default).

    Returns
    -------
    pandas.DataFrame
        ``arm, timepoint, rule, analysis, n_patients`` (the denominator: randomised patients
        for ``itt``, patients with a verdict for ``completers``), ``n_responders``,
        ``pct_responders``, ``n_without_verdict`` (counted as non-responders under ``itt``);
        ``rule`` is ``SLEDAI-4``, ``SRI-4`` (when BILAG and PGA are present), the immune
        rule, and ``SLEDAI-4 & <rule>`` (patients with both verdicts).
    """
    analyses = [analysis] if isinstance(analysis, str) else list(analysis)
    unknown = [a for a in analyses if a not in ANALYSES]
    if unknown:
        raise ImmunoprofileError(f"analysis {unknown} unknown: use 'itt' and/or 'completers'")
    keys = ["patient_id", "arm", "timepoint"]
    verdicts: dict[str, pd.Series] = {}
    order: list[str] = []
    if clinical is not None:
        table = derive_outcomes(attach_arms(clinical, arms), baseline=baseline)
        baseline = baseline_timepoint(table, baseline)
        order = [str(c) for c in table["timepoint"].cat.categories]
        index = pd.MultiIndex.from_frame(table[keys].astype(str))
        for label, col in (("SLEDAI-4", "sledai4_response"), ("SRI-4", "sri4_response")):
            if col in table.columns:
                verdicts[label] = pd.Series(table[col].to_numpy(), index=index)
    if patients is not None and "responder" in patients.columns:
        visit = patients.drop_duplicates(["patient_id", "timepoint"])
        index = pd.MultiIndex.from_frame(visit[keys].astype(str))
        verdicts[rule] = pd.Series(visit["responder"].astype("boolean").to_numpy(), index=index)
        if not order and isinstance(visit["timepoint"].dtype, pd.CategoricalDtype):
            order = [str(c) for c in visit["timepoint"].cat.categories]
    if "SLEDAI-4" in verdicts and rule in verdicts:
        both = pd.concat([verdicts["SLEDAI-4"], verdicts[rule]], axis=1, join="inner").dropna()
        verdicts[f"SLEDAI-4 & {rule}"] = both[0].astype(bool) & both[1].astype(bool)
    # The randomised patients of each arm: everyone any table places in it.
    randomised: dict[str, set[str]] = {}
    for flags in verdicts.values():
        for pid, arm, _ in flags.index:
            randomised.setdefault(str(arm), set()).add(str(pid))
    if arms is not None:
        for pid, arm in dict(arms).items():
            if isinstance(arm, str) and arm:
                randomised.setdefault(arm, set()).add(str(pid))
    rows = []
    for label, flags in verdicts.items():
        frame = flags.dropna().astype(bool).rename("flag").reset_index()
        frame.columns = [*keys, "flag"]
        frame = frame[frame["timepoint"] != str(baseline)]
        for (arm, tp), g in frame.groupby(["arm", "timepoint"], sort=False):
            n_yes = int(g["flag"].sum())
            n_arm = max(len(randomised.get(str(arm), ())), len(g))
            for kind in analyses:
                n = n_arm if kind == "itt" else len(g)
                rows.append({"arm": arm, "timepoint": tp, "rule": label, "analysis": kind,
                             "n_patients": n, "n_responders": n_yes,
                             "pct_responders": 100 * n_yes / n if n else np.nan,
                             "n_without_verdict": n_arm - len(g)})
    out = pd.DataFrame(rows, columns=RESPONDER_COLUMNS)
    rank = {t: i for i, t in enumerate(order)}
    out["_tp"] = out["timepoint"].map(lambda t: rank.get(t, len(rank)))
    out["_rule"] = out["rule"].map({r: i for i, r in enumerate(verdicts)})
    out["_arm"] = out["arm"].map(lambda a: tuple(map(str, natural_key(a))))
    out["_an"] = out["analysis"].map({a: i for i, a in enumerate(ANALYSES)})
    out = out.sort_values(["_rule", "_an", "_arm", "_tp"]).drop(
        columns=["_tp", "_rule", "_arm", "_an"])
    return out.reset_index(drop=True)
