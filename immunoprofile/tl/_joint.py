"""Clinical indexes and cytokines across arms over time, and their correlation with subsets.

Comparisons use the contrasts and output columns of differential abundance
(:data:`~immunoprofile.tl._models.RESULT_COLUMNS`; ``template`` is ``"clinical"`` or
``"cytokines"``, ``population`` the index or analyte):

- clinical indexes: the arm × timepoint mixed model of :mod:`immunoprofile.tl._models`, on the
  log scale for laboratory concentrations (estimates are log fold changes) and on the raw scale
  for scores and doses (SLEDAI points, prednisone mg/day);
- cytokines, on the log scale, with censoring: values below the LLOQ (above the ULOQ) are
  left- (right-) censored at it in a censored-likelihood (Tobit) model with the same cell means
  and a patient random intercept, integrated out by Gauss–Hermite quadrature, fitted by
  maximum likelihood (``method="tobit"``); or LLOQ/2 imputation in the mixed model
  (``method="lloq2"``). Analytes without a censored value use the mixed model. A cell whose
  every value is censored has no estimable mean: its contrasts carry NaN and a warning.

Correlations (:func:`correlations`): Spearman per visit, and the repeated-measures correlation
across visits (rmcorr; Bakdash & Marusich 2017): the ANCOVA ``y ~ patient + x`` whose common
within-patient slope gives ``r = sign(b)·√(SS_x / (SS_x + SS_residual))`` with
``N − patients − 1`` degrees of freedom — computed here from within-patient centred values,
which is the same thing. BH FDR within each method × kind × visit.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import optimize, special, stats
from statsmodels.stats.multitest import multipletests

from immunoprofile.clinical import attach_arms, index_columns, read_clinical, responders
from immunoprofile.errors import ImmunoprofileError
from immunoprofile.io.samplesheet import natural_key
from immunoprofile.tl._detectable import RANK_ABOVE, fill_by_ranks, rank_contrasts
from immunoprofile.tl._models import (
    FAILED,
    RESULT_COLUMNS,
    Design,
    add_fdr,
    check_design,
    fit_contrasts,
    model_failed,
    parse_design,
)

__all__ = ["clinical_comparison", "correlations", "cytokine_comparison", "read_cytokines",
           "responders", "rmcorr", "tobit_contrasts", "tobit_fit"]

CLINICAL_LMM_LOG = "lmm_log: log(value), arm×timepoint, patient random intercept"
CLINICAL_LMM = "lmm: value, arm×timepoint, patient random intercept"
CYTOKINE_TOBIT = ("tobit_re: censored likelihood (Tobit) on log concentration, censored at "
                  "LLOQ/ULOQ, arm×timepoint, patient random intercept (Gauss–Hermite ML)")
CYTOKINE_LLOQ2 = ("lmm_log_lloq2: log concentration with < LLOQ set to LLOQ/2 (> ULOQ to "
                  "ULOQ), arm×timepoint, patient random intercept")
CYTOKINE_LMM = "lmm_log: log concentration (no censored values), arm×timepoint, patient " \
               "random intercept"
#: Indexes analysed on their own scale rather than the log (scores and doses).
LINEAR_INDEXES = frozenset({"sledai", "prednisone_mg", "pga"})
CYTOKINE_COLUMNS = ("patient_id", "arm", "timepoint", "analyte", "conc_pg_ml")
CORRELATION_COLUMNS = ["subset", "template", "population", "measure", "variable", "kind",
                       "method", "timepoint", "r", "ci_low", "ci_high", "pvalue", "fdr",
                       "n_samples", "n_patients", "transform", "note"]
_NODES = 15  # adaptive Gauss–Hermite nodes for the patient random intercept


# -- inputs ----------------------------------------------------------------------------------
def read_cytokines(cytokines: pd.DataFrame | str | Path) -> pd.DataFrame:
    """The cytokine table (``cytokines.parquet`` or CSV), checked, visits ordered.

    One row per sample × analyte with ``patient_id, arm, timepoint, analyte, conc_pg_ml``
    (NaN when censored) and the censoring columns ``below_lloq, above_uloq, lloq, uloq`` and,
    from runs that know a limit of detection, ``below_lod, lod``.

    Parameters
    ----------
    cytokines
        The table, or a ``.parquet``/``.pq`` or CSV file of it (a DataFrame is copied).

    Returns
    -------
    pandas.DataFrame
        Rows without a ``patient_id`` dropped, ``patient_id`` as str, censoring flags as bool
        (False when absent), limits and concentrations numeric (NaN when absent) and
        ``timepoint`` an ordered categorical (by ``week`` when given, else naturally).

    Raises
    ------
    ImmunoprofileError
        The file cannot be read or required columns are missing.
    """
    if isinstance(cytokines, pd.DataFrame):
        table = cytokines.copy()
    else:
        path = Path(cytokines)
        try:
            table = (pd.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq")
                     else pd.read_csv(path))
        except (OSError, ValueError) as exc:
            raise ImmunoprofileError(f"cytokine table {path}: cannot be read ({exc})") from exc
    missing = [c for c in CYTOKINE_COLUMNS if c not in table.columns]
    if missing:
        raise ImmunoprofileError(f"the cytokine table lacks column(s) {', '.join(missing)}")
    table = table[table["patient_id"].notna() & table["patient_id"].astype(str).ne("")]
    table = table.reset_index(drop=True)
    for col in ("below_lloq", "above_uloq"):
        table[col] = (table[col].fillna(False).astype(bool) if col in table.columns
                      else False)
    # tables written before the LoD existed: censored below the LLOQ, no LoD
    table["below_lod"] = (table["below_lod"].fillna(False).astype(bool)
                          if "below_lod" in table.columns else table["below_lloq"])
    for col in ("lloq", "uloq", "lod", "conc_pg_ml"):
        table[col] = (pd.to_numeric(table[col], errors="coerce") if col in table.columns
                      else np.nan)
    table["patient_id"] = table["patient_id"].astype(str)
    table["timepoint"] = _ordered(table)
    return table


def _ordered(table: pd.DataFrame) -> pd.Categorical:
    col = table["timepoint"]
    if isinstance(col.dtype, pd.CategoricalDtype) and col.cat.ordered:
        return col
    tps = list(dict.fromkeys(col.astype(str)))
    if "week" in table.columns and pd.to_numeric(table["week"], errors="coerce").notna().any():
        week = pd.to_numeric(table["week"], errors="coerce").groupby(col.astype(str)).first()
        tps.sort(key=lambda t: (np.isnan(week.get(t, np.nan)), week.get(t, np.inf),
                                natural_key(t)))
    else:
        tps.sort(key=natural_key)
    return pd.Categorical(col.astype(str), categories=tps, ordered=True)


def _frame(table: pd.DataFrame, design: Design) -> tuple[pd.DataFrame, list[str]]:
    """The model's columns; covariates absent from the table are listed, not used."""
    absent = [c for c in design.covariates if c not in table.columns]
    keep = ["patient_id", "arm", "timepoint", *[c for c in design.covariates if c not in absent]]
    return table[list(dict.fromkeys(keep))].copy(), absent


def _note(res: pd.DataFrame, note: str) -> pd.DataFrame:
    if note:
        res["warning"] = [f"{w}; {note}" if w else note for w in res["warning"].fillna("")]
    return res


# -- clinical --------------------------------------------------------------------------------
def clinical_comparison(
    clinical: pd.DataFrame | str | Path,
    *,
    control: str,
    baseline: str,
    pairs: Iterable[str | tuple[str, str]] = (),
    covariates: Iterable[str] = (),
    variables: Iterable[str] | None = None,
    arms: Mapping[str, str] | pd.Series | None = None,
) -> pd.DataFrame:
    """Compare clinical and laboratory indexes across arms over time.

    Parameters
    ----------
    clinical
        The clinical table (:func:`immunoprofile.clinical.read_clinical`) or its path.
    control, baseline, pairs
        As for :func:`~immunoprofile.tl.differential_abundance`.
    covariates
        Columns of the clinical table to adjust for (others are noted and skipped).
    variables
        Indexes to test (default: the standard ones present and further numeric columns).
    arms
        ``patient_id → arm`` (e.g. from the sample sheet) when the table has no ``arm``.

    Returns
    -------
    pandas.DataFrame
        :data:`RESULT_COLUMNS` (``template`` = ``"clinical"``, ``population`` = the index;
        ``estimate`` a log fold change for concentrations, a difference in the index's unit for
        SLEDAI, prednisone and PGA, as the ``model`` column says), then ``scale``.
    """
    table = attach_arms(clinical, arms)
    design = parse_design(control, baseline, pairs, covariates)
    check_design(table, design)
    names = list(variables) if variables is not None else index_columns(table)
    unknown = [v for v in names if v not in table.columns]
    if unknown:
        raise ImmunoprofileError(f"the clinical table lacks {', '.join(unknown)}")
    frame, absent = _frame(table, design)
    used = Design(design.control, design.baseline, design.pairs,
                  tuple(c for c in design.covariates if c not in absent), design.alpha)
    note = (f"covariate(s) {', '.join(absent)} not in the clinical table: not adjusted"
            if absent else "")
    results = []
    for var in names:
        values = pd.to_numeric(table[var], errors="coerce").astype(float)
        log = var not in LINEAR_INDEXES and bool((values.dropna() > 0).all())
        frame["value"] = np.log(values) if log else values
        if frame["value"].notna().sum() == 0:
            continue
        res = _fit_lmm(frame, used, CLINICAL_LMM_LOG if log else CLINICAL_LMM)
        res = _note(res, note)
        res.insert(0, "population", var)
        res.insert(0, "template", "clinical")
        res["scale"] = "log" if log else "identity"
        results.append(res)
    if not results:
        return pd.DataFrame(columns=[*RESULT_COLUMNS, "scale"])
    return add_fdr(pd.concat(results, ignore_index=True))[[*RESULT_COLUMNS, "scale"]]


# -- cytokines -------------------------------------------------------------------------------
def cytokine_comparison(
    cytokines: pd.DataFrame | str | Path,
    *,
    control: str,
    baseline: str,
    pairs: Iterable[str | tuple[str, str]] = (),
    covariates: Iterable[str] = (),
    method: str = "tobit",
    analytes: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Compare cytokine concentrations across arms over time, with censoring.

    Parameters
    ----------
    cytokines
        The cytokine table (see :func:`read_cytokines`) or its path.
    control, baseline, pairs, covariates
        As for :func:`~immunoprofile.tl.differential_abundance` (covariates: columns of the
        cytokine table).
    method
        ``"tobit"``: censored likelihood with a patient random intercept; ``"lloq2"``: values
        below the LLOQ set to LLOQ/2 (above the ULOQ to the ULOQ) in the mixed model.
    analytes
        Analytes to test (default: all).

    Returns
    -------
    pandas.DataFrame
        :data:`RESULT_COLUMNS` (``template`` = ``"cytokines"``, ``population`` = the analyte,
        ``estimate`` a log fold change of the concentration, ``model`` the method), then
        ``n_below_lloq``, ``n_below_lod`` (censored; equal without a known LoD) and
        ``n_above_uloq`` (of the analyte's values).
    """
    if method not in ("tobit", "lloq2"):
        raise ImmunoprofileError(f"method must be 'tobit' or 'lloq2', not {method!r}")
    table = read_cytokines(cytokines)
    design = parse_design(control, baseline, pairs, covariates)
    check_design(table, design)
    wanted = None if analytes is None else set(analytes)
    results = []
    for analyte, rows in table.groupby("analyte", sort=True):
        if wanted is not None and analyte not in wanted:
            continue
        frame, absent = _frame(rows, design)
        used = Design(design.control, design.baseline, design.pairs,
                      tuple(c for c in design.covariates if c not in absent), design.alpha)
        y, cens = _censored_log(rows)
        frame["value"], frame["censored"] = y, cens
        n_low, n_high = int((cens < 0).sum()), int((cens > 0).sum())
        if n_low + n_high == 0:
            res = _fit_lmm(frame, used, CYTOKINE_LMM)
        elif method == "lloq2":
            frame["value"] = np.where(cens < 0, y - np.log(2.0), y)
            res = _fit_lmm(frame, used, CYTOKINE_LLOQ2)
        elif n_low / max(len(frame), 1) > RANK_ABOVE:
            res = rank_contrasts(frame, used)  # mostly below the LLOQ: ranks still answer
        else:
            res = fill_by_ranks(tobit_contrasts(frame, used, model_name=CYTOKINE_TOBIT),
                                frame, used)
        if absent:
            res = _note(res, f"covariate(s) {', '.join(absent)} not in the cytokine table: "
                             "not adjusted")
        if "flag_il2_dose" in rows.columns and rows["flag_il2_dose"].fillna(False).any():
            n = int(rows["flag_il2_dose"].fillna(False).astype(bool).sum())
            res = _note(res, f"{n} value(s) drawn within a day of an IL-2 dose (serum IL-2 "
                             "reflects the drug)")
        res.insert(0, "population", str(analyte))
        res.insert(0, "template", "cytokines")
        res["n_below_lloq"] = int(rows["below_lloq"].sum())
        res["n_below_lod"], res["n_above_uloq"] = n_low, n_high
        results.append(res)
    columns = [*RESULT_COLUMNS, "n_below_lloq", "n_below_lod", "n_above_uloq"]
    if not results:
        return pd.DataFrame(columns=columns)
    return add_fdr(pd.concat(results, ignore_index=True))[columns]


def _fit_lmm(frame: pd.DataFrame, design: Design, model_name: str) -> pd.DataFrame:
    """:func:`fit_contrasts` (REML); when its optimiser fails (e.g. a singular step on heavily
    tied values), the same model by maximum likelihood through :func:`tobit_fit` with nothing
    censored (it equals MixedLM's ML fit)."""
    res = fit_contrasts(frame, design, model_name=model_name)
    if model_failed(res):
        retry = tobit_contrasts(frame.assign(censored=0), design,
                                model_name=f"{model_name} (ML: the REML fit failed)")
        if retry["estimate"].notna().any():
            return retry
    return res


def _censored_log(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Log concentration (the log bound when censored) and −1/0/+1 for below/in/above range."""
    conc = rows["conc_pg_ml"].to_numpy(float)
    # Censored at the LoD where one is known (values between LoD and LLOQ are reported and
    # enter as observed, DOMAIN §8), else at the LLOQ.
    lod = rows["lod"].to_numpy(float)
    bound = np.where(np.isfinite(lod) & (lod > 0), lod, rows["lloq"].to_numpy(float))
    below = np.where(np.isfinite(lod) & (lod > 0), rows["below_lod"].to_numpy(bool),
                     rows["below_lloq"].to_numpy(bool))
    low = below & (bound > 0)
    high = rows["above_uloq"].to_numpy(bool) & (rows["uloq"].to_numpy(float) > 0) & ~low
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.where(conc > 0, np.log(conc), np.nan)
        y = np.where(low, np.log(bound), y)
        y = np.where(high, np.log(rows["uloq"].to_numpy(float)), y)
    return y, np.where(low, -1, np.where(high, 1, 0)).astype(int)


def tobit_contrasts(data: pd.DataFrame, design: Design, *, model_name: str) -> pd.DataFrame:
    """The trial contrasts of :func:`~immunoprofile.tl._models.fit_contrasts` from a
    random-intercept Tobit fit.

    ``data`` has ``value`` (the log bound for censored rows), ``censored`` (−1 left, 0, +1
    right), ``patient_id``, ``arm``, ``timepoint`` and covariates. Contrasts use the same
    split-plot degrees of freedom. Cells whose every value is censored are not estimable.

    Parameters
    ----------
    data
        One row per sample of one readout, as above.
    design
        Control arm, baseline timepoint, extra arm pairs, covariates.
    model_name
        Written into the ``model`` column.

    Returns
    -------
    pandas.DataFrame
        One row per contrast, as :func:`~immunoprofile.tl._models.fit_contrasts` gives them
        but with ``estimate, ci_low, ci_high, pvalue`` last (without estimates, the reason in
        ``warning``, when no model could be fitted).
    """
    res = fit_contrasts(data, design, model_name=model_name, fit=_tobit, censored="censored")
    if len(res):  # estimates last, as ever
        estimates = ["estimate", "ci_low", "ci_high", "pvalue"]
        res = res[[*[c for c in res.columns if c not in estimates], *estimates]]
    return res


def _tobit(y: np.ndarray, X: np.ndarray, groups: np.ndarray, *, censored: np.ndarray
           ) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """:func:`tobit_fit` with the :data:`~immunoprofile.tl._models.Fitter` contract."""
    return tobit_fit(y, censored, X, groups)


def tobit_fit(y: np.ndarray, censored: np.ndarray, X: np.ndarray, groups: np.ndarray
              ) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """Maximum-likelihood random-intercept Tobit: ``y* = Xβ + u_patient + ε``.

    ``y`` is observed where ``censored == 0``, known to be ≤ ``y`` where −1 and ≥ ``y`` where
    +1. The random intercept is integrated out by adaptive Gauss–Hermite quadrature (nodes
    centred and scaled on each patient's posterior, refined over a few refits); the gradient
    is analytic and the covariance the inverse of the (finite-difference) observed information.

    Parameters
    ----------
    y
        The values; for censored rows, the bound.
    censored
        Per value: −1 left-censored, 0 observed, +1 right-censored.
    X
        The fixed-effects design, one row per value.
    groups
        The patient of each value (the random intercept's groups).

    Returns
    -------
    (β, Cov(β), warning) or (None, None, reason)
        The fixed effects (one per column of ``X``), their covariance (with a REML-like
        small-sample factor) and notes ('' when none); or why the model failed.
    """
    _, patient = np.unique(groups, return_inverse=True)
    n_pat = int(patient.max()) + 1
    G = np.zeros((n_pat, len(y)))
    G[patient, np.arange(len(y))] = 1.0
    nodes, weights = np.polynomial.hermite.hermgauss(_NODES)
    log_w = np.log(weights) + nodes**2  # undo GH's e^{-x²}: the prior density is added below
    k = X.shape[1]
    obs, low, high = censored == 0, censored < 0, censored > 0
    centre, scale = np.zeros(n_pat), np.ones(n_pat)

    def parts(theta: np.ndarray):
        beta, s_u, s_e = theta[:k], np.exp(theta[k]), np.exp(theta[k + 1])
        u = centre[:, None] + np.sqrt(2.0) * scale[:, None] * nodes[None, :]  # patients × nodes
        z = ((y - X @ beta)[:, None] - u[patient]) / s_e
        ll, d_eta, d_se = np.empty_like(z), np.empty_like(z), np.empty_like(z)
        zo = z[obs]
        ll[obs] = -0.5 * zo**2 - np.log(s_e) - 0.5 * np.log(2 * np.pi)
        d_eta[obs], d_se[obs] = zo / s_e, zo**2 - 1.0
        zl = z[low]
        lam = np.exp(stats.norm.logpdf(zl) - special.log_ndtr(zl))
        ll[low], d_eta[low], d_se[low] = special.log_ndtr(zl), -lam / s_e, -zl * lam
        zh = z[high]
        mills = np.exp(stats.norm.logpdf(zh) - special.log_ndtr(-zh))
        ll[high], d_eta[high], d_se[high] = special.log_ndtr(-zh), mills / s_e, zh * mills
        per = (G @ ll + stats.norm.logpdf(u / s_u) - np.log(s_u) + log_w[None, :]
               + np.log(np.sqrt(2.0) * scale)[:, None])
        top = per.max(axis=1, keepdims=True)
        lik = np.exp(per - top)
        total = lik.sum(axis=1, keepdims=True)
        omega = lik / total  # posterior weight of each node, per patient
        value = float((np.log(total) + top).sum())
        om = omega[patient]
        grad = np.concatenate([X.T @ (om * d_eta).sum(axis=1),
                               [float((omega * ((u / s_u) ** 2 - 1.0)).sum())],
                               [float((om * d_se).sum())]])
        return value, grad, omega, u

    def negloglik(theta: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad, _, _ = parts(theta)
        return -value, -grad

    beta0 = np.linalg.lstsq(X, y, rcond=None)[0]
    resid = y - X @ beta0
    sd = float(np.std(resid)) or 1.0
    s_u0 = max(float(np.std((G @ resid) / G.sum(axis=1))), 0.1 * sd)
    theta = np.concatenate([beta0, [np.log(s_u0), np.log(max(0.7 * sd, 1e-3))]])
    scale[:] = s_u0
    last, success = -np.inf, False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(6):
            res = optimize.minimize(negloglik, theta, jac=True, method="BFGS",
                                    options={"maxiter": 2000, "gtol": 1e-6})
            if not res.success:
                res = optimize.minimize(negloglik, res.x, jac=True, method="L-BFGS-B",
                                        options={"maxiter": 5000})
            theta, success = res.x, bool(res.success)
            if not np.all(np.isfinite(theta)):
                return None, None, f"{FAILED}: non-finite estimates"
            # Re-centre the nodes on each patient's posterior of u, then refit.
            _, _, omega, u = parts(theta)
            centre[:] = (omega * u).sum(axis=1)
            scale[:] = np.sqrt(np.maximum((omega * u**2).sum(axis=1) - centre**2, 1e-12))
            scale[:] = np.maximum(scale, 1e-6 * np.exp(theta[k + 1]))
            if abs(-res.fun - last) < 1e-7 * max(1.0, abs(res.fun)):
                break
            last = -res.fun
    notes = [] if success else ["did not converge"]
    boundary = theta[k] < theta[k + 1] + np.log(1e-3)
    free = np.r_[np.arange(k), [k + 1]] if boundary else np.arange(k + 2)
    if boundary:
        notes.append("patient variance on the boundary (0)")
    H = np.zeros((len(free), len(free)))
    for j, idx in enumerate(free):
        h = 1e-5 * max(1.0, abs(theta[idx]))
        up, down = theta.copy(), theta.copy()
        up[idx] += h
        down[idx] -= h
        H[:, j] = (negloglik(up)[1][free] - negloglik(down)[1][free]) / (2 * h)
    H = 0.5 * (H + H.T)
    try:
        cov = np.linalg.inv(H)
    except np.linalg.LinAlgError:
        return None, None, f"{FAILED}: singular information matrix"
    # Maximum likelihood estimates the variances as if β were known, which makes standard
    # errors too small for 8-15 patients per arm. A REML-like factor n/(n - k·f) restores
    # them, with f the share of values in range: uncensored (f = 1) it turns ML's residual
    # variance into REML's; censored values inform β less, and the full factor made 60%-
    # censored readouts conservative (2.8% of null p < 0.05). bench_calibration.py shows it.
    n_obs = len(y)
    in_range = float(obs.mean()) if n_obs else 1.0
    cov_beta = cov[:k, :k] * (n_obs / max(n_obs - k * in_range, 1.0))
    if not np.all(np.isfinite(cov_beta)) or np.any(np.diag(cov_beta) <= 0):
        return None, None, f"{FAILED}: information matrix not positive definite"
    return theta[:k], cov_beta, "; ".join(notes)


# -- correlations ----------------------------------------------------------------------------
def _subset_values(subsets: pd.DataFrame, measures: Iterable[str]) -> pd.DataFrame:
    """Long (template, population, measure, patient_id, timepoint, value), one per visit."""
    table = subsets
    if "measured" in table.columns:
        table = table[table["measured"].fillna(False).astype(bool)]
    columns = []
    for m in measures:
        if m.endswith("*"):
            columns += [c for c in table.columns if c.startswith(m[:-1]) and c not in columns]
        elif m in table.columns and m not in columns:
            columns.append(m)
    if not columns:
        raise ImmunoprofileError(f"the subset table has none of the measures {list(measures)}")
    keys = ["template", "population", "patient_id", "timepoint"]
    long = table[[*keys, *columns]].melt(id_vars=keys, value_vars=columns,
                                         var_name="measure", value_name="value")
    long["value"] = pd.to_numeric(long["value"], errors="coerce")
    long = long.dropna(subset=["value"])
    for k in keys:
        long[k] = long[k].astype(str)
    return long.groupby([*keys[:2], "measure", *keys[2:]], sort=False)["value"].mean(
    ).reset_index()


def _variables(clinical: pd.DataFrame | None, cytokines: pd.DataFrame | None
               ) -> tuple[pd.DataFrame, dict[str, str]]:
    """Long (variable, kind, patient_id, timepoint, value) and each variable's transform."""
    parts, transform = [], {}
    if clinical is not None:
        for var in index_columns(clinical):
            v = pd.to_numeric(clinical[var], errors="coerce").astype(float)
            log = var not in LINEAR_INDEXES and bool((v.dropna() > 0).all())
            transform[var] = "log" if log else "identity"
            parts.append(pd.DataFrame({"variable": var, "kind": "clinical",
                                       "patient_id": clinical["patient_id"].astype(str),
                                       "timepoint": clinical["timepoint"].astype(str),
                                       "value": v, "censored": False}))
    if cytokines is not None:
        y, cens = _censored_log(cytokines)
        value = np.exp(np.where(cens < 0, y - np.log(2.0), y))  # < LLOQ → LLOQ/2
        frame = pd.DataFrame({"variable": cytokines["analyte"].astype(str), "kind": "cytokine",
                              "patient_id": cytokines["patient_id"].astype(str),
                              "timepoint": cytokines["timepoint"].astype(str),
                              "value": value, "censored": cens != 0})
        transform |= {a: "log" for a in frame["variable"].unique()}
        parts.append(frame)
    if not parts:
        raise ImmunoprofileError("correlations need a clinical table or a cytokine table")
    long = pd.concat(parts, ignore_index=True).dropna(subset=["value"])
    long = long.groupby(["variable", "kind", "patient_id", "timepoint"], sort=False).agg(
        value=("value", "mean"), censored=("censored", "any")).reset_index()
    return long, transform


def rmcorr(x: np.ndarray, y: np.ndarray, patients: np.ndarray, *, alpha: float = 0.05
           ) -> tuple[float, float, float, float, int, int]:
    """Repeated-measures correlation (Bakdash & Marusich 2017).

    The ANCOVA ``y ~ C(patient) + x``: ``r = sign(b)·√(SS_x / (SS_x + SS_res))`` equals the
    Pearson correlation of within-patient centred values, with ``N − k − 1`` degrees of
    freedom (N observations, k patients); the CI is Fisher's with that df.

    Parameters
    ----------
    x, y
        The two measurements, one value per observation (NaN pairs are dropped).
    patients
        Patient of each observation.
    alpha
        1 − confidence level of the interval.

    Returns
    -------
    (r, ci_low, ci_high, pvalue, n_observations, n_patients)
        Patients with a single observation carry no within-patient information and are
        left out.
    """
    frame = pd.DataFrame({"x": x, "y": y, "p": patients}).dropna()
    counts = frame["p"].map(frame["p"].value_counts())
    frame = frame[counts >= 2]
    n, k = len(frame), frame["p"].nunique()
    df = n - k - 1
    if df < 3:
        return np.nan, np.nan, np.nan, np.nan, n, k
    xc = frame["x"] - frame.groupby("p")["x"].transform("mean")
    yc = frame["y"] - frame.groupby("p")["y"].transform("mean")
    sxx, syy, sxy = float(xc @ xc), float(yc @ yc), float(xc @ yc)
    if sxx <= 0 or syy <= 0:
        return np.nan, np.nan, np.nan, np.nan, n, k
    r = float(np.clip(sxy / np.sqrt(sxx * syy), -1.0, 1.0))
    t = r * np.sqrt(df / max(1.0 - r * r, 1e-300))
    p = float(2 * stats.t.sf(abs(t), df))
    lo, hi = _fisher_ci(r, 1.0 / np.sqrt(df - 1), alpha)
    return r, lo, hi, p, n, k


def _fisher_ci(r: float, se: float, alpha: float) -> tuple[float, float]:
    z = np.arctanh(np.clip(r, -0.999999, 0.999999))
    half = stats.norm.ppf(1 - alpha / 2) * se
    return float(np.tanh(z - half)), float(np.tanh(z + half))


def _spearman(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[float, float, float, float]:
    n = len(x)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return np.nan, np.nan, np.nan, np.nan
    r, p = stats.spearmanr(x, y)
    # Bonett & Wright (2000): the Fisher interval with SE √((1 + r²/2) / (n − 3)).
    lo, hi = _fisher_ci(float(r), float(np.sqrt((1 + r * r / 2) / (n - 3))), alpha)
    return float(r), lo, hi, float(p)


def correlations(
    subsets: pd.DataFrame,
    *,
    clinical: pd.DataFrame | str | Path | None = None,
    cytokines: pd.DataFrame | str | Path | None = None,
    measures: Iterable[str] = ("pct_parent", "pct_of_*"),
    methods: Iterable[str] = ("spearman", "rmcorr"),
    min_pairs: int = 6,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Correlate every subset with every clinical index and cytokine.

    Parameters
    ----------
    subsets
        The long subset table of a run (or the same shape: ``template, population,
        patient_id, timepoint`` and the measure columns).
    clinical, cytokines
        The clinical table and/or the cytokine table (frames or paths).
    measures
        Subset measures; a trailing ``*`` expands to every column with that prefix
        (``pct_of_*``: each named reference). Rows where a measure is null are skipped.
    methods
        ``"spearman"`` (per visit) and/or ``"rmcorr"`` (across visits, within patients, on the
        log scale of positive variables).
    min_pairs
        Fewest visits (Spearman) or observations (rmcorr) for a test.
    alpha
        For the confidence intervals.

    Returns
    -------
    pandas.DataFrame
        :data:`CORRELATION_COLUMNS`: ``subset`` (``template/population:measure``), its parts,
        ``variable``, ``kind`` (clinical | cytokine), ``method``, ``timepoint`` ('' for rmcorr),
        ``r, ci_low, ci_high, pvalue``, ``fdr`` (BH within method × kind × visit),
        ``n_samples`` (visits paired), ``n_patients``, ``transform`` (rmcorr: the scale of
        subset / variable) and ``note`` (censored cytokine values, set to LLOQ/2).
        A visit is keyed by ``(patient_id, timepoint)``: every tube of a visit joins its row.
    """
    methods = list(methods)
    bad = [m for m in methods if m not in ("spearman", "rmcorr")]
    if bad:
        raise ImmunoprofileError(f"unknown correlation method(s) {bad}: use spearman, rmcorr")
    if isinstance(clinical, str | Path):
        clinical = read_clinical(clinical)
    if cytokines is not None:
        cytokines = read_cytokines(cytokines)
    cells = _subset_values(subsets, measures)
    variables, transform = _variables(clinical, cytokines)
    order = {t: i for i, t in enumerate(_visit_order(subsets, clinical, cytokines))}
    rows = []
    for (template, population, measure), s in cells.groupby(["template", "population",
                                                             "measure"], sort=False):
        s = s.set_index(["patient_id", "timepoint"])["value"]
        log_x = bool((s > 0).all())
        for (var, kind), v in variables.groupby(["variable", "kind"], sort=False):
            joined = v.join(s.rename("x"), on=["patient_id", "timepoint"], how="inner")
            joined = joined.dropna(subset=["x", "value"])
            if len(joined) < min_pairs:
                continue
            base = {"subset": f"{template}/{population}:{measure}", "template": template,
                    "population": population, "measure": measure, "variable": var,
                    "kind": kind}
            n_cens = int(joined["censored"].sum())
            note = f"{n_cens} censored value(s) at LLOQ/2" if n_cens else ""
            if "spearman" in methods:
                for tp, g in joined.groupby("timepoint", sort=False):
                    if len(g) < min_pairs:
                        continue
                    r, lo, hi, p = _spearman(g["x"].to_numpy(), g["value"].to_numpy(), alpha)
                    nc = int(g["censored"].sum())
                    rows.append({**base, "method": "spearman", "timepoint": tp, "r": r,
                                 "ci_low": lo, "ci_high": hi, "pvalue": p,
                                 "n_samples": len(g), "n_patients": g["patient_id"].nunique(),
                                 "transform": "rank",
                                 "note": f"{nc} censored value(s) at LLOQ/2" if nc else ""})
            if "rmcorr" in methods:
                log_y = transform.get(var) == "log" and bool((joined["value"] > 0).all())
                x = np.log(joined["x"]) if log_x else joined["x"]
                y = np.log(joined["value"]) if log_y else joined["value"]
                r, lo, hi, p, n, k = rmcorr(x.to_numpy(float), y.to_numpy(float),
                                            joined["patient_id"].to_numpy(), alpha=alpha)
                if n >= min_pairs and np.isfinite(r):
                    rows.append({**base, "method": "rmcorr", "timepoint": "", "r": r,
                                 "ci_low": lo, "ci_high": hi, "pvalue": p, "n_samples": n,
                                 "n_patients": k, "note": note,
                                 "transform": f"{'log' if log_x else 'identity'} / "
                                              f"{'log' if log_y else 'identity'}"})
    out = pd.DataFrame(rows, columns=[c for c in CORRELATION_COLUMNS if c != "fdr"])
    out["fdr"] = np.nan
    for _, idx in out.groupby(["method", "kind", "timepoint"], sort=False).groups.items():
        p = out.loc[idx, "pvalue"]
        ok = p.notna()
        if ok.any():
            out.loc[p[ok].index, "fdr"] = multipletests(p[ok], method="fdr_bh")[1]
    var_rank = {v: i for i, v in enumerate(dict.fromkeys(variables["variable"]))}
    out["_order"] = out["timepoint"].map(order).fillna(-1)
    out["_var"] = out["variable"].map(var_rank)
    out = out.sort_values(["kind", "method", "_order", "_var"], kind="stable")
    return out.drop(columns=["_order", "_var"]).reset_index(drop=True)[CORRELATION_COLUMNS]


def _visit_order(*tables) -> list[str]:
    for table in tables:
        if table is not None and isinstance(table["timepoint"].dtype, pd.CategoricalDtype):
            return [str(c) for c in table["timepoint"].cat.categories]
    return []

