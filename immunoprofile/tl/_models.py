"""Longitudinal arm × time models and the contrasts the trial asks about.

One model per readout (a population's abundance, a marker's MFI in a population, a cytokine):

``value ~ 0 + cell(arm, timepoint) + covariates,  random intercept per patient``

fitted by REML with statsmodels' ``MixedLM``. Cell-means coding makes every contrast a linear
combination of cell means ``L·β`` with variance ``L Σ Lᵀ``; intervals and p-values use a t
distribution with split-plot degrees of freedom: contrasts within patients (changes from
baseline, and differences of changes) use the residual df, contrasts between arms at one visit
use ``n_patients − n_arms``. This keeps small trials (8–15 patients per arm) calibrated.

Contrasts (one output row each):

``arm_vs_control``      arm − control at a timepoint
``change_from_baseline`` within an arm, timepoint − baseline
``change_vs_control``   (arm_t − arm_baseline) − (control_t − control_baseline)
``change_vs_arm``       the same between two named arms (``--pair COMBO:IL2``)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.regression.mixed_linear_model import MixedLM
from statsmodels.stats.multitest import multipletests

from immunoprofile.errors import ImmunoprofileError
from immunoprofile.run import Run

#: Output columns shared by every comparison table (a public interface).
RESULT_COLUMNS = ["template", "population", "contrast_type", "arm", "reference_arm",
                  "timepoint", "baseline", "estimate", "ci_low", "ci_high", "pvalue", "fdr",
                  "model", "n_samples", "n_patients", "warning"]


@dataclass(frozen=True)
class Design:
    """Who is compared with whom: names come from the sample sheet, whatever they are."""

    control: str
    baseline: str
    pairs: tuple[tuple[str, str], ...] = ()
    covariates: tuple[str, ...] = ()
    alpha: float = 0.05


#: How a warning starts when a model gave no estimate at all, and how a note about data too
#: thin to fit reads: :func:`model_failed` recognises a readout by them.
FAILED = "model failed"
TOO_FEW = "too few"

#: ``(y, X, groups[, censored=]) -> (β, Cov(β), warning)``, or ``(None, None, reason)``.
Fitter = Callable[..., tuple[np.ndarray | None, np.ndarray | None, str]]


def _cell(arm: str, tp: str) -> str:
    return f"{arm}@{tp}"


def fit_contrasts(data: pd.DataFrame, design: Design, *, model_name: str,
                  fit: Fitter | None = None, censored: str | None = None,
                  columns: dict[str, str] | None = None) -> pd.DataFrame:
    """Fit the mixed model to one readout and evaluate every contrast.

    Parameters
    ----------
    data
        One row per sample with ``value``, ``patient_id``, ``arm``, ``timepoint`` and any
        covariates; rows with a missing value are dropped.
    design
        Control arm, baseline timepoint, extra arm pairs, covariates.
    model_name
        Written into the ``model`` column.
    fit
        The model: ``(y, X, groups) -> (β, Cov(β), warning)``, or ``(None, None, reason)``
        when it fails; by default the REML mixed model. With ``censored`` it is also given
        ``censored=`` (that column's values for the rows it fits).
    censored
        Name of a column with −1 / 0 / +1 (left-censored at ``value`` / observed /
        right-censored). A cell with no observed value has no estimable mean: it is left out of
        the fit and its contrasts carry NaN and a warning; the fit needs at least two more
        values in range than cells.
    columns
        ``{keyword: column}``: further per-row inputs of ``fit`` (the binomial model's
        ``successes`` and ``trials``), given as float arrays of the rows it fits.

    Returns
    -------
    pandas.DataFrame
        One row per contrast (without ``template``/``population``/``fdr``).
    """
    fit = fit_lmm if fit is None else fit
    everything = data
    data = data.dropna(subset=["value"]).copy()
    arms = [str(a) for a in pd.unique(data["arm"].astype(str))]
    tps = _ordered_timepoints(data)
    if data.empty:  # no value at all: the contrasts the rows would have given, all failed
        return _failed(everything, design,
                       [str(a) for a in pd.unique(everything["arm"].astype(str))],
                       _ordered_timepoints(everything), model_name,
                       f"{FAILED}: no value to fit")
    rows: list[dict] = []
    n_patients = data["patient_id"].nunique()
    if design.control not in arms or design.baseline not in tps or n_patients <= len(arms):
        note = (f"control {design.control!r} or baseline {design.baseline!r} absent, or "
                f"{TOO_FEW} patients") if censored is None else \
            f"control or baseline absent, or {TOO_FEW} patients"
        return _failed(data, design, arms, tps, model_name, note)
    data["cell"] = [_cell(a, t) for a, t in zip(data["arm"].astype(str),
                                                data["timepoint"].astype(str))]
    blind: list[str] = []
    fitted, extra = data, {}
    if censored is not None:
        # A cell with no observed value has its mean at −∞ (or +∞): leave it out of the fit.
        observed = data.groupby("cell")[censored].apply(lambda c: bool((c == 0).any()))
        blind = sorted(observed.index[~observed])
        fitted = data[~data["cell"].isin(blind)]
        extra = {"censored": fitted[censored].to_numpy(int)}
    cells = sorted(fitted["cell"].unique())
    if censored is not None:
        n_in_range = int((fitted[censored] == 0).sum())
        if n_in_range < len(cells) + 2:
            return _failed(data, design, arms, tps, model_name,
                           f"{TOO_FEW} values in range ({n_in_range} of {len(data)}) for a "
                           "censored model")
    X = pd.get_dummies(fitted["cell"]).reindex(columns=cells, fill_value=0).astype(float)
    for cov in design.covariates:
        if cov not in fitted.columns:
            raise ImmunoprofileError(f"covariate {cov!r} is not a sample-sheet column")
        col = fitted[cov]
        if pd.api.types.is_numeric_dtype(col) and not isinstance(col.dtype, pd.CategoricalDtype):
            X[cov] = (col - col.mean()).fillna(0.0).astype(float)
        else:
            dummies = pd.get_dummies(col.astype(str), prefix=cov, drop_first=True, dtype=float)
            X = pd.concat([X, dummies], axis=1)
    X, dropped = _drop_confounded(X, cells)
    for keyword, col in (columns or {}).items():
        extra[keyword] = fitted[col].to_numpy(float)
    beta, cov_beta, warning = fit(fitted["value"].to_numpy(float), X.to_numpy(float),
                                  fitted["patient_id"].astype(str).to_numpy(), **extra)
    if dropped:
        note = f"covariate(s) {', '.join(dropped)} confounded with arm×timepoint: dropped"
        warning = f"{warning}; {note}" if warning else note
    if beta is None:
        return _failed(data, design, arms, tps, model_name, warning)
    index = {c: i for i, c in enumerate(X.columns)}
    present = set(data["cell"])
    # Split-plot degrees of freedom: a contrast whose weights cancel within every arm is
    # estimated within patients (residual df); one that compares arms also carries the
    # between-patient variance (patients minus arm means).
    df_between = max(n_patients - len(arms), 1)
    df_within = max(len(fitted) - n_patients - (len(cells) - len(arms))
                    - (X.shape[1] - len(cells)), 1)
    for kind, arm, ref, tp, base, terms in contrast_terms(design, arms, tps):
        if any(c not in present for c, _ in terms):
            continue
        cell_rows = data["cell"].isin([c for c, _ in terms])
        row = {"contrast_type": kind, "arm": arm, "reference_arm": ref, "timepoint": tp,
               "baseline": base, "estimate": np.nan, "ci_low": np.nan, "ci_high": np.nan,
               "pvalue": np.nan, "model": model_name, "n_samples": int(cell_rows.sum()),
               "n_patients": int(data.loc[cell_rows, "patient_id"].nunique()),
               "warning": warning}
        missing = [c for c, _ in terms if c in blind]
        if missing:
            note = f"every value censored in {', '.join(missing)}: not estimable"
            rows.append({**row, "warning": "; ".join(filter(None, [warning, note]))})
            continue
        L = np.zeros(len(index))
        for c, w in terms:
            L[index[c]] += w
        est = float(L @ beta)
        se = float(np.sqrt(max(L @ cov_beta @ L, 0.0)))
        within = all(abs(sum(w for c, w in terms if c.split("@", 1)[0] == a)) < 1e-12
                     for a in arms)
        df = df_within if within else df_between
        tcrit = stats.t.ppf(1 - design.alpha / 2, df)
        p = float(2 * stats.t.sf(abs(est) / se, df)) if se > 0 else np.nan
        rows.append({**row, "estimate": est, "ci_low": est - tcrit * se,
                     "ci_high": est + tcrit * se, "pvalue": p})
    return pd.DataFrame(rows)


def contrast_terms(design: Design, arms: list[str], tps: list[str]):
    """(kind, arm, reference, timepoint, baseline, [(cell, weight)]) of every contrast.

    Parameters
    ----------
    design
        Control arm, baseline timepoint and extra arm pairs.
    arms
        The arms in the data.
    tps
        The timepoints in the data, in order.

    Yields
    ------
    tuple
        ``(contrast_type, arm, reference_arm, timepoint, baseline, terms)``, ``terms`` the
        ``(cell, weight)`` pairs over ``"<arm>@<timepoint>"`` cells (reference or baseline
        '' where the contrast has none): per arm and timepoint ``arm_vs_control``,
        ``change_from_baseline`` and ``change_vs_control``, then ``change_vs_arm`` per pair
        (whether the cells have data is for the caller to check).
    """
    b, ctl = design.baseline, design.control
    for arm in arms:
        for tp in tps:
            if arm != ctl:
                yield ("arm_vs_control", arm, ctl, tp, "", [(_cell(arm, tp), 1),
                                                            (_cell(ctl, tp), -1)])
            if tp != b:
                yield ("change_from_baseline", arm, "", tp, b, [(_cell(arm, tp), 1),
                                                                (_cell(arm, b), -1)])
                if arm != ctl:
                    yield ("change_vs_control", arm, ctl, tp, b, _did(arm, ctl, tp, b))
    for arm, ref in design.pairs:
        for tp in tps:
            if tp != b:
                yield ("change_vs_arm", arm, ref, tp, b, _did(arm, ref, tp, b))


def _drop_confounded(X: pd.DataFrame, cells: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """Drop covariate columns that add nothing beyond the cell means (e.g. `week`, which is
    fixed within a timepoint), keeping the design full rank."""
    keep, dropped = list(cells), []
    rank = np.linalg.matrix_rank(X[keep].to_numpy(float))
    for col in X.columns:
        if col in cells:
            continue
        trial = np.linalg.matrix_rank(X[[*keep, col]].to_numpy(float))
        if trial > rank:
            keep.append(col)
            rank = trial
        else:
            dropped.append(str(col))
    return X[keep], dropped


def _did(arm: str, ref: str, tp: str, base: str) -> list[tuple[str, float]]:
    return [(_cell(arm, tp), 1), (_cell(arm, base), -1), (_cell(ref, tp), -1),
            (_cell(ref, base), 1)]


def fit_lmm(y: np.ndarray, X: np.ndarray, groups: np.ndarray):
    """The Gaussian mixed model (patient random intercept) by REML.

    Returns (β, Cov(β), warning text) or (None, None, reason).

    A fit is accepted only when it converged with a finite log-likelihood, a positive-definite
    covariance of the fixed effects and a non-negative patient variance; otherwise the next
    optimiser is tried. When the patient variance sits at the boundary (0) or no optimiser
    gives an acceptable fit, the model is refitted without the random effect (ordinary least
    squares, the same cell means and contrasts): statsmodels reports boundary fits as
    converged with a log-likelihood of +inf and covariances that made null p-values too small
    in the tail and too large in the bulk.
    """
    k = X.shape[1]
    rejected: list[str] = []
    accepted = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = MixedLM(y, X, groups)
        except (np.linalg.LinAlgError, ValueError) as exc:
            return None, None, f"{FAILED}: {exc}"
        # Each optimiser gets its own chance: heavily tied data (e.g. imputed values) can make
        # one raise or stop at the boundary where another converges.
        for method in ("lbfgs", "bfgs", "powell"):
            try:
                result = model.fit(reml=True, method=method)
            except (np.linalg.LinAlgError, ValueError) as exc:
                rejected.append(f"{method}: {exc}")
                continue
            why = _unacceptable(result, k)
            if why is None:
                accepted = result
                break
            rejected.append(f"{method}: {why}")
    if accepted is not None and not _at_boundary(accepted):
        beta = np.asarray(accepted.fe_params)[:k]
        cov = np.asarray(accepted.cov_params())[:k, :k]
        return beta, cov, ""
    note = ("patient variance at the boundary (0): fitted without the random effect (OLS)"
            if accepted is not None or any("boundary" in r or "log-likelihood" in r
                                           for r in rejected)
            else "no mixed-model fit was acceptable: fitted without the random effect (OLS)")
    return _ols(y, X, note)


def _unacceptable(result, k: int) -> str | None:
    """Why a MixedLM fit cannot be used, or None."""
    if not result.converged:
        return "did not converge"
    if not np.isfinite(result.llf):
        return "non-finite log-likelihood (boundary)"
    cov = np.asarray(result.cov_params())[:k, :k]
    if not np.all(np.isfinite(cov)):
        return "non-finite covariance"
    try:
        np.linalg.cholesky((cov + cov.T) / 2)
    except np.linalg.LinAlgError:
        return "covariance of the fixed effects not positive definite"
    if np.any(np.diag(np.atleast_2d(np.asarray(result.cov_re))) < 0):
        return "negative patient variance"
    return None


def _at_boundary(result) -> bool:
    """The patient variance is zero for practical purposes (relative to the residual)."""
    var = float(np.atleast_2d(np.asarray(result.cov_re))[0, 0])
    return var <= 1e-6 * max(float(result.scale), 1e-300)


def _ols(y: np.ndarray, X: np.ndarray, note: str):
    """Least squares with the same design: (β, s²(XᵀX)⁻¹, note), or a failure."""
    n, k = X.shape
    if n <= k:
        return None, None, f"{FAILED}: {n} values for {k} parameters"
    beta, _, rank, _ = np.linalg.lstsq(X, y, rcond=None)
    if rank < k:
        return None, None, f"{FAILED}: the design is singular"
    resid = y - X @ beta
    s2 = float(resid @ resid) / (n - k)
    if s2 <= 1e-20 * max(float(y @ y), 1.0):
        # e.g. a population absent from every sample: identical values, no error to estimate
        return None, None, f"{FAILED}: no variation within the cells"
    cov = s2 * np.linalg.inv(X.T @ X)
    return beta, cov, note


def _ordered_timepoints(data: pd.DataFrame) -> list[str]:
    col = data["timepoint"]
    if isinstance(col.dtype, pd.CategoricalDtype):
        present = set(col.astype(str))
        return [str(c) for c in col.cat.categories if str(c) in present]
    return [str(t) for t in pd.unique(col.astype(str))]


def _failed(data: pd.DataFrame, design: Design, arms: list[str], tps: list[str],
            model: str, note: str) -> pd.DataFrame:
    """One row per contrast the data could ask for, without estimates, saying why: a failed
    model still names its contrasts (an empty ``contrast_type`` broke every filter on it).
    With values, the contrasts whose cells all have some (as a fitted model gives them);
    without any, every contrast of the arms and visits the rows name."""
    cell = data["arm"].astype(str) + "@" + data["timepoint"].astype(str)
    present = set(cell[data["value"].notna()]) if "value" in data.columns else set(cell)
    rows = []
    arms = arms if design.control in arms else [*arms, design.control]
    for kind, arm, ref, tp, base, terms in contrast_terms(design, arms, tps):
        if present and any(c not in present for c, _ in terms):
            continue
        here = cell.isin([c for c, _ in terms]).to_numpy()
        rows.append({"contrast_type": kind, "arm": arm, "reference_arm": ref,
                     "timepoint": tp, "baseline": base, "estimate": np.nan, "ci_low": np.nan,
                     "ci_high": np.nan, "pvalue": np.nan, "model": model,
                     "n_samples": int(here.sum()),
                     "n_patients": int(data.loc[here, "patient_id"].nunique()),
                     "warning": note})
    out = pd.DataFrame(rows, columns=[c for c in RESULT_COLUMNS
                                      if c not in ("template", "population", "fdr")])
    # typed even when empty: object columns made pandas warn when the tables were stacked
    return out.astype({"estimate": float, "ci_low": float, "ci_high": float, "pvalue": float,
                       "n_samples": "int64", "n_patients": "int64"})


def model_failed(res: pd.DataFrame) -> bool:
    """Whether :func:`fit_contrasts` gave no estimate because the model failed (every row
    without a p-value and its warning saying so).

    Parameters
    ----------
    res
        The contrast rows of one readout.

    Returns
    -------
    bool
        True when there are rows and none has a p-value for that reason.
    """
    return bool(len(res)) and bool(res["pvalue"].isna().all()) and bool(
        res["warning"].astype(str).str.contains(f"{FAILED}|{TOO_FEW}").all())


def add_fdr(table: pd.DataFrame, extra_keys: list[str] = ()) -> pd.DataFrame:
    """Benjamini–Hochberg within each family: one template (a gating template, ``clusters:…``,
    ``cytokines``, ``clinical``), one contrast type, and ``extra_keys``.

    A family holds every population (× marker) of the template, every arm and every
    timepoint of one kind of contrast: the questions a reader of one table section asks
    together. Rows without a ``template`` column form one template.

    Parameters
    ----------
    table
        Contrast rows with ``pvalue``, ``contrast_type`` and (usually) ``template``.
    extra_keys
        Further columns that split families (``reference``: one family per reference).

    Returns
    -------
    pandas.DataFrame
        A copy of ``table`` with ``fdr`` (NaN where ``pvalue`` is).
    """
    table = table.copy()
    table["fdr"] = np.nan
    keys = [k for k in ("template", "contrast_type") if k in table.columns] + list(extra_keys)
    if table.empty:
        return table
    for _, idx in table.groupby(keys, sort=False, dropna=False).groups.items():
        p = table.loc[idx, "pvalue"]
        ok = p.notna()
        if ok.any():
            table.loc[p[ok].index, "fdr"] = multipletests(p[ok], method="fdr_bh")[1]
    return table


def subset_table(data: pd.DataFrame | str | Path) -> pd.DataFrame:
    """The table a tool works on: a DataFrame as given, or a run folder's subset table
    (``Run(path).subsets``; notebooks pass ``run.subsets`` directly).

    Parameters
    ----------
    data
        A subset table, or a gated run folder (:meth:`~immunoprofile.run.Run.open`).

    Returns
    -------
    pandas.DataFrame
        The DataFrame given (not copied), or the run's subset table.
    """
    if isinstance(data, pd.DataFrame):
        return data
    return Run.open(data).subsets


def parse_design(control: str, baseline: str, pairs: Iterable,
                 covariates: Iterable[str]) -> Design:
    """The contrasts' design from the tools' arguments (``"COMBO:IL2"`` pairs parsed).

    Parameters
    ----------
    control
        The control arm.
    baseline
        The baseline timepoint.
    pairs
        Arm pairs to compare: ``(arm, reference_arm)`` or ``"ARM:REFERENCE_ARM"``.
    covariates
        Columns to adjust for.

    Returns
    -------
    Design
        The design, names as str (``alpha`` the default).

    Raises
    ------
    ImmunoprofileError
        A pair given as a string has no ``:``.
    """
    parsed = []
    for pair in pairs:
        if isinstance(pair, str):
            if ":" not in pair:
                raise ImmunoprofileError(f"pair {pair!r} must read ARM:REFERENCE_ARM")
            pair = tuple(pair.split(":", 1))
        parsed.append((str(pair[0]), str(pair[1])))
    return Design(control=str(control), baseline=str(baseline), pairs=tuple(parsed),
                  covariates=tuple(covariates))


def check_design(table: pd.DataFrame, design: Design) -> None:
    """The design's control arm, baseline and pair arms must be in the data.

    Parameters
    ----------
    table
        The data, with ``arm`` and ``timepoint`` columns.
    design
        The design to check.

    Raises
    ------
    ImmunoprofileError
        The control arm, the baseline timepoint or an arm of a pair is not in the data.
    """
    arms = set(table["arm"].astype(str))
    tps = set(table["timepoint"].astype(str))
    if design.control not in arms:
        raise ImmunoprofileError(f"control arm {design.control!r} is not in the data "
                                 f"(arms: {', '.join(sorted(arms))})")
    if design.baseline not in tps:
        raise ImmunoprofileError(f"baseline {design.baseline!r} is not a timepoint "
                                 f"(timepoints: {', '.join(sorted(tps))})")
    for a, b in design.pairs:
        for arm in (a, b):
            if arm not in arms:
                raise ImmunoprofileError(f"pair arm {arm!r} is not in the data")
