"""Differential abundance and differential state across arms over time.

Abundance: for every gated population (and every cluster), its count against its parent (or a
named reference population) per sample, in the arm × timepoint design of
:mod:`immunoprofile.tl._models`. The default model (``glmm_binomial``) is a binomial GLMM:
the count out of the parent's, logit link, a patient random intercept and an observation-level
random intercept for overdispersion (:mod:`immunoprofile.tl._glmm`), so that each sample
weighs what its counts support. ``lmm_logit`` (a Gaussian mixed model on the empirical logit
``log((count + ½) / (n − count + ½))``) stays available. Estimates are log odds ratios.
Where the table has cells per µL (``abs_per_ul``), the ``absolute`` reference models their log
(``log((count + ½) × cells/µL per event)``) in the Gaussian mixed model: estimates are log fold
changes of cells/µL, which are not compositional.

Within one parent, a population that is the complement of another (their counts add up to
the parent's in every sample) gives the mirror image of its test: only the rarer one is
tested against the parent, the other's rows are kept but marked (``complement_of``) and carry
no FDR. FDR (Benjamini–Hochberg) is controlled within each family of one template, contrast
type and reference.

State: the median MFI of a marker in a population, on the log scale (arcsinh(x/150)
when some medians are not positive), in the Gaussian mixed model; estimates are log fold
changes.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from immunoprofile.errors import ImmunoprofileError
from immunoprofile.gating import pct_of_column
from immunoprofile.tl._glmm import binomial_glmm_fitter
from immunoprofile.tl._models import (
    RESULT_COLUMNS,
    Design,
    add_fdr,
    check_design,
    parse_design,
    subset_table,
)
from immunoprofile.tl._parallel import fit_all

ABUNDANCE_MODEL = "lmm_logit: empirical logit, arm×timepoint, patient random intercept"
GLMM_MODEL = ("glmm_binomial: binomial GLMM, logit link, arm×timepoint, patient and "
              "observation-level random intercepts (Laplace)")
ABSOLUTE_MODEL = "lmm_log_abs: log cells/µL, arm×timepoint, patient random intercept"
#: ``model=`` values of :func:`differential_abundance`.
ABUNDANCE_MODELS = ("glmm_binomial", "lmm_logit")
STATE_MODEL_LOG = "lmm_log_mfi: log median MFI, arm×timepoint, patient random intercept"
STATE_MODEL_ASINH = "lmm_asinh_mfi: arcsinh(MFI/150), arm×timepoint, patient random intercept"
RARE_MEDIAN_COUNT = 20


def _check(table: pd.DataFrame, needed: Iterable[str]) -> None:
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ImmunoprofileError(f"the table lacks column(s) {', '.join(missing)}")


def _check_counts(table: pd.DataFrame) -> None:
    """Counts must be whole, non-negative and within their parent: anything else is a
    corrupted or hand-edited table, which clamping would hide."""
    count = pd.to_numeric(table["count"], errors="coerce").astype(float)
    parent = pd.to_numeric(table["parent_count"], errors="coerce").astype(float)
    bad = (count < 0) | (parent < 0) | (count > parent) | (count % 1 > 0)
    if bad.any():
        rows = table.loc[bad.to_numpy(), ["sample_id", "template", "population", "count",
                                           "parent_count"]].head(5)
        listed = "; ".join(f"row {i}: {r.sample_id} {r.template}/{r.population} count "
                           f"{r.count} of {r.parent_count}" for i, r in
                           zip(rows.index, rows.itertuples(index=False)))
        raise ImmunoprofileError(
            f"{int(bad.sum())} row(s) of the table have impossible counts (negative, not "
            f"whole, or above the parent's): {listed}; fix or regate those samples")


def _frame(rows: pd.DataFrame, design: Design) -> pd.DataFrame:
    keep = ["sample_id", "patient_id", "arm", "timepoint", *design.covariates]
    return rows[[c for c in dict.fromkeys(keep) if c in rows.columns]].copy()


def differential_abundance(
    data: pd.DataFrame | str | Path,
    *,
    control: str,
    baseline: str,
    pairs: Iterable[str | tuple[str, str]] = (),
    covariates: Iterable[str] = (),
    reference: str | Iterable[str] = "parent",
    populations: Iterable[str] | None = None,
    model: str = "glmm_binomial",
    n_jobs: int | None = None,
) -> pd.DataFrame:
    """Test every population's abundance across arms and timepoints.

    Parameters
    ----------
    data
        The long subset table (``subsets.parquet``), a clusters table in the same shape
        (``template`` = ``clusters:<panel>``, ``population`` = cluster), or a run folder.
    control, baseline
        The control arm and the baseline timepoint, as named in the sample sheet.
    pairs
        Extra arm pairs for ``change_vs_arm`` (``"COMBO:IL2"`` or tuples).
    covariates
        Sample-sheet columns entered in every model (``batch``, ``days_since_last_il2_dose``).
    reference
        What counts are tested against: ``"parent"``, population names of the same template
        (e.g. ``("parent", "Live lymphocytes")``: frequency among lymphocytes follows absolute
        counts, which the parent does not when the parent moves too), and ``"absolute"``
        (cells/µL, where the table has ``abs_per_ul``; skipped where it has none). Each
        reference gives its own rows (column ``reference``); a population is not tested
        against itself or a reference it is not part of (an ancestor, or a population the
        template quotes it against, ``pct_of_<reference>`` in the table, whose counts are
        never below its own).
    populations
        Restrict to these populations (all by default).
    model
        ``"glmm_binomial"`` (default: counts out of the reference's, binomial GLMM with
        patient and observation random intercepts) or ``"lmm_logit"`` (Gaussian mixed model
        on the empirical logit). The ``absolute`` reference always uses the log-scale
        Gaussian mixed model.
    n_jobs
        Processes fitting the models (``-1``: every core; default one); the table is the
        same whatever the number.

    Returns
    -------
    pandas.DataFrame
        One row per population × contrast with the columns ``template, population,
        contrast_type, arm, reference_arm, timepoint, baseline, estimate`` (log odds ratio;
        log fold change for ``absolute``), ``ci_low, ci_high, pvalue, fdr``
        (Benjamini–Hochberg within each template × contrast type × reference), ``model,
        n_samples, n_patients, warning``, ``reference`` and ``complement_of`` (the
        population this one's test mirrors within their parent, '' otherwise; those rows
        have no FDR).
    """
    if model not in ABUNDANCE_MODELS:
        raise ImmunoprofileError(f"model {model!r} is not one of "
                                 f"{', '.join(ABUNDANCE_MODELS)}")
    table = subset_table(data)
    _check(table, ["sample_id", "patient_id", "arm", "timepoint", "template", "population",
                   "count", "parent_count"])
    _check_counts(table)
    design = parse_design(control, baseline, pairs, covariates)
    check_design(table, design)
    if "measured" in table.columns:
        table = table[table["measured"].astype(bool)]
    references = [reference] if isinstance(reference, str) else list(reference)
    wanted = set(populations) if populations is not None else None
    ancestry = _ancestry(table)
    mirrors = complements(table)
    per_event = _cells_per_event(table) if "absolute" in references else None
    jobs, labels = [], []
    for (template, population), rows in table.groupby(["template", "population"], sort=False,
                                                       observed=True):
        if wanted is not None and population not in wanted:
            continue
        for ref_name in references:
            if ref_name == "absolute":
                frame = _absolute_frame(rows, per_event, design)
                if frame is None:
                    continue
                jobs.append((frame, design, ABSOLUTE_MODEL))
                labels.append((template, population, ref_name, ""))
                continue
            if ref_name == "parent":
                n = rows["parent_count"].astype(float).to_numpy()
            elif ref_name == population or not _quoted_against(
                    rows, ref_name, ancestry.get((template, population), set())):
                continue
            else:
                ref = table[(table["template"] == template) & (table["population"] == ref_name)]
                n = rows["sample_id"].map(ref.set_index("sample_id")["count"]).astype(float)
                n = n.to_numpy()
                if ref_name == rows["parent"].iloc[0]:
                    continue  # the parent already gives these rows
                if ref_name not in ancestry.get((template, population), set()) \
                        and (rows["count"].astype(float).to_numpy() > n).any():
                    continue  # not an ancestor and not always larger: no binomial frequency
            frame, note = _abundance_frame(rows, n, design)
            if model == "glmm_binomial":
                jobs.append((frame, design, GLMM_MODEL, {
                    "fit": binomial_glmm_fitter,
                    "columns": {"successes": "count", "trials": "trials"}}))
            else:
                jobs.append((frame, design, ABUNDANCE_MODEL))
            labels.append((template, population, ref_name, note))
    results = []
    for res, (template, population, ref_name, note) in zip(fit_all(jobs, n_jobs), labels):
        if note:
            res["warning"] = [f"{w}; {note}" if w else note for w in res["warning"]]
        res.insert(0, "population", population)
        res.insert(0, "template", template)
        res["reference"] = ref_name
        mirrored = mirrors.get((template, population), "") if ref_name == "parent" else ""
        if mirrored and wanted is not None and mirrored not in wanted:
            mirrored = ""  # its partner is not in this table: this is the one reported
        res["complement_of"] = mirrored
        if mirrored:
            note = f"complement of {mirrored} within their parent: the mirror of its test"
            res["warning"] = [f"{w}; {note}" if w else note for w in res["warning"]]
        results.append(res)
    columns = [*RESULT_COLUMNS, "reference", "complement_of"]
    if not results:
        return pd.DataFrame(columns=columns)
    out = pd.concat(results, ignore_index=True)
    tested = out["complement_of"] == ""
    out = pd.concat([add_fdr(out[tested], extra_keys=["reference"]),
                     out[~tested].assign(fdr=np.nan)]).sort_index()
    return out[columns]


def complements(table: pd.DataFrame) -> dict[tuple[str, str], str]:
    """Populations whose counts and another's add up to their common parent's in every sample.

    Parameters
    ----------
    table
        The long subset table (``template``, ``population``, ``parent``, ``sample_id``,
        ``count``, ``parent_count``).

    Returns
    -------
    dict
        ``{(template, population): the population it complements}`` for the more abundant
        of each such pair (the rarer one, e.g. Treg against conventional CD4, is the one
        tested); empty when the table has no ``parent`` column.
    """
    if "parent" not in table.columns or table.empty:
        return {}
    out: dict[tuple[str, str], str] = {}
    for (template, _), kids in table.groupby(["template", "parent"], sort=False,
                                             observed=True):
        by_pop = {p: rows.set_index("sample_id")
                  for p, rows in kids.groupby("population", sort=False, observed=True)}
        names = list(by_pop)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                if (template, a) in out or (template, b) in out:
                    continue
                # the same samples on both sides (a sample one of them lacks is no mirror)
                pair = pd.concat([by_pop[a]["count"], by_pop[b]["count"],
                                  by_pop[a]["parent_count"]], axis=1, join="outer")
                if pair.isna().any().any():
                    continue
                ca, cb, total = (pair.iloc[:, j].to_numpy(float) for j in range(3))
                # a population empty (or full) everywhere mirrors nothing worth hiding
                if not np.array_equal(ca + cb, total) or np.all(ca == 0) or np.all(cb == 0):
                    continue
                rarer, other = sorted((a, b), key=lambda p: (float(by_pop[p]["count"].median()),
                                                             names.index(p)))
                out[(template, other)] = rarer
    return out


def _cells_per_event(table: pd.DataFrame) -> pd.Series:
    """Cells/µL one event stands for, per (sample, template): the median of ``abs_per_ul /
    count`` (for populations at 0, whose own ratio is undefined)."""
    if "abs_per_ul" not in table.columns:
        return pd.Series(dtype=float)
    abs_ = pd.to_numeric(table["abs_per_ul"], errors="coerce")
    count = pd.to_numeric(table["count"], errors="coerce")
    ok = abs_.notna() & (count > 0)
    return (abs_[ok] / count[ok]).groupby([table.loc[ok, "sample_id"],
                                           table.loc[ok, "template"]]).median()


def _absolute_frame(rows: pd.DataFrame, per_event: pd.Series | None, design: Design
                    ) -> pd.DataFrame | None:
    """Log cells/µL of a population, ``log((count + ½) × cells/µL per event)`` (a count of 0
    stays finite, as in the empirical logit), or None when the table gives no absolute
    counts for it."""
    if per_event is None or per_event.empty or "abs_per_ul" not in rows.columns:
        return None
    count = rows["count"].astype(float).to_numpy()
    own = pd.to_numeric(rows["abs_per_ul"], errors="coerce").to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(count > 0, own / count, np.nan)
    keys = pd.MultiIndex.from_arrays([rows["sample_id"], rows["template"]])
    factor = np.where(np.isfinite(factor), factor, per_event.reindex(keys).to_numpy(float))
    factor = np.where(np.isfinite(own), factor, np.nan)
    if not np.isfinite(factor).any():
        return None
    frame = _frame(rows, design)
    frame["value"] = np.log((count + 0.5) * factor)
    return frame


def _abundance_frame(rows: pd.DataFrame, n: np.ndarray, design: Design
                     ) -> tuple[pd.DataFrame, str]:
    """The model's input (empirical logit of count among ``n``) and the rare-population note."""
    frame = _frame(rows, design)
    count = rows["count"].astype(float).to_numpy()
    ok = np.isfinite(count) & np.isfinite(n) & (n > 0)
    frame["value"] = np.where(ok, np.log((count + 0.5) / (np.maximum(n - count, 0) + 0.5)),
                              np.nan)
    frame["count"] = count
    frame["trials"] = n
    median = float(np.nanmedian(np.where(ok, count, np.nan))) if ok.any() else 0.0
    note = f"rare population (median count {median:g})" if median < RARE_MEDIAN_COUNT else ""
    return frame, note


def _quoted_against(rows: pd.DataFrame, reference: str, ancestors: set[str]) -> bool:
    """Whether a population's frequency among ``reference`` is a question: an ancestor, or
    a population its template quotes it against (``pct_of`` may name a non-ancestor: the
    plasma template's plasmablasts, gated from lymphocytes and blasts, per live
    lymphocyte)."""
    if reference in ancestors:
        return True
    column = pct_of_column(reference)
    return column in rows.columns and bool(rows[column].notna().any())


def _ancestry(table: pd.DataFrame) -> dict[tuple[str, str], set[str]]:
    """``{(template, population): its ancestors}`` from the table's parent column."""
    if "parent" not in table.columns:
        return {}
    parent = {(t, p): q for t, p, q in table[["template", "population", "parent"]]
              .drop_duplicates().itertuples(index=False)}
    out = {}
    for (t, p) in parent:
        seen, q = set(), parent.get((t, p), "")
        while q and q not in seen:
            seen.add(q)
            q = parent.get((t, q), "")
        out[(t, p)] = seen
    return out


def differential_state(
    data: pd.DataFrame | str | Path,
    *,
    control: str,
    baseline: str,
    markers: Iterable[str] | None = None,
    pairs: Iterable[str | tuple[str, str]] = (),
    covariates: Iterable[str] = (),
    populations: Iterable[str] | None = None,
    n_jobs: int | None = None,
) -> pd.DataFrame:
    """Test every population's median marker intensity (``mfi_median_<marker>`` columns).

    Same contrasts and columns as :func:`differential_abundance`, plus ``marker``;
    ``estimate`` is a log fold change of the median MFI (natural log), or a difference on the
    arcsinh(x/150) scale when some medians are ≤ 0 (the ``model`` column says which).

    Parameters
    ----------
    data
        The long subset table (``subsets.parquet``) or a run folder.
    control, baseline
        The control arm and the baseline timepoint, as named in the sample sheet.
    markers
        Markers to test (those without a ``mfi_median_<marker>`` column are skipped); all by
        default.
    pairs
        Extra arm pairs for ``change_vs_arm`` (``"COMBO:IL2"`` or tuples).
    covariates
        Sample-sheet columns entered in every model.
    populations
        Restrict to these populations (all by default).
    n_jobs
        Processes fitting the models (as :func:`differential_abundance`).

    Returns
    -------
    pandas.DataFrame
        One row per population × marker × contrast; the columns of
        :func:`differential_abundance` (without ``reference``) with ``marker`` after
        ``population``.
    """
    table = subset_table(data)
    design = parse_design(control, baseline, pairs, covariates)
    check_design(table, design)
    mfi_cols = [c for c in table.columns if c.startswith("mfi_median_")]
    if markers is not None:
        mfi_cols = [f"mfi_median_{m}" for m in markers if f"mfi_median_{m}" in table.columns]
    wanted = set(populations) if populations is not None else None
    jobs, labels = [], []
    for (template, population), rows in table.groupby(["template", "population"], sort=False,
                                                       observed=True):
        if wanted is not None and population not in wanted:
            continue
        for col in mfi_cols:
            values = rows[col].astype(float).to_numpy()
            if not np.isfinite(values).any():
                continue
            frame = _frame(rows, design)
            if np.nanmin(values) > 0:
                frame["value"], model = np.log(values), STATE_MODEL_LOG
            else:
                frame["value"], model = np.arcsinh(values / 150.0), STATE_MODEL_ASINH
            jobs.append((frame, design, model))
            labels.append((template, population, col.removeprefix("mfi_median_")))
    results = []
    for res, (template, population, marker) in zip(fit_all(jobs, n_jobs), labels):
        res.insert(0, "marker", marker)
        res.insert(0, "population", population)
        res.insert(0, "template", template)
        results.append(res)
    columns = [*RESULT_COLUMNS[:2], "marker", *RESULT_COLUMNS[2:]]
    if not results:
        return pd.DataFrame(columns=columns)
    out = add_fdr(pd.concat(results, ignore_index=True))
    return out[columns]
