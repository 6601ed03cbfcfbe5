"""Standard curves of a bead array: 4PL/5PL fits, inversion, back-calculation and the range.

The curve maps a concentration ``x`` (pg/mL) to the reporter's median intensity ``y``::

    y = a + (d - a) / (1 + (c / x) ** b) ** g        (y = a at x = 0)

with ``a`` the bottom (reporter of a blank), ``d`` the top, ``c`` the inflection, ``b`` the Hill
slope and ``g`` the asymmetry (the 4PL has ``g = 1``). Fits minimise the squared error of
``log y``: reporter noise is multiplicative (a constant CV), so this weighs every standard by
``1 / y²`` and keeps the bright standards from swamping the low ones, where the LLOQ is decided.
Of the models fitted, the one with the lowest AICc is used and recorded.

Accuracy (DOMAIN §8): each standard is back-calculated through the chosen curve; the range is
the longest run of consecutive standards whose recoveries lie within 80–120%, extended down by
one standard that meets 70–130%. LLOQ and ULOQ are the lowest and highest standard of the run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from immunoprofile.tables import Column

__all__ = [
    "Curve",
    "CurveError",
    "back_calculate",
    "censor",
    "cytokine_table",
    "fit_curve",
    "fit_standards",
    "logistic",
    "plate_curves",
    "quant_range",
    "sample_rows",
]

MODELS = {"4PL": 4, "5PL": 5}
_SLOPE = (0.3, 5.0)  # Hill slopes outside this are not immunoassays but fitting accidents
_ASYM = (0.2, 5.0)


class CurveError(ValueError):
    """A standard curve could not be fitted or does not meet the acceptance criteria."""


def logistic(x: np.ndarray | float, a: float, d: float, c: float, b: float,
             g: float = 1.0) -> np.ndarray:
    """The 5PL (4PL when ``g = 1``) response at concentrations ``x`` (``a`` at ``x <= 0``).

    ``a + (d - a) / (1 + (c / x) ** b) ** g``.

    Parameters
    ----------
    x
        Concentrations.
    a, d
        Bottom and top asymptotes (response at zero and at infinite concentration).
    c
        Inflection point (EC50 of the 4PL), in concentration units; must be > 0.
    b
        Hill slope.
    g
        Asymmetry (1 for the 4PL).

    Returns
    -------
    numpy.ndarray
        The response, shaped like ``x`` (a 0-d array for a scalar).
    """
    x = np.asarray(x, dtype=float)
    with np.errstate(divide="ignore", over="ignore"):
        ratio = np.where(x > 0, np.exp(b * (math.log(c) - np.log(np.maximum(x, 1e-300)))),
                         np.inf)
        return a + (d - a) / (1.0 + ratio) ** g


@dataclass
class Curve:
    """A fitted standard curve.

    Attributes
    ----------
    model
        ``"4PL"`` or ``"5PL"``: the one chosen (lowest AICc).
    params
        ``bottom``, ``top``, ``ec50`` (the inflection ``c``), ``hill``, ``asymmetry``.
    aicc
        AICc of every model fitted (``inf`` when it failed or had too few points).
    n_points
        Standards (concentration ≥ 0) the curve was fitted on.
    """

    model: str
    params: dict[str, float]
    aicc: dict[str, float] = field(default_factory=dict)
    n_points: int = 0

    def _p(self) -> tuple[float, float, float, float, float]:
        p = self.params
        return p["bottom"], p["top"], p["ec50"], p["hill"], p["asymmetry"]

    def response(self, x: np.ndarray | float) -> np.ndarray:
        """Reporter intensity at concentrations ``x``."""
        return logistic(x, *self._p())

    def concentration(self, y: np.ndarray | float) -> np.ndarray:
        """Invert the curve: 0 at or below the bottom, ``inf`` at or above the top."""
        a, d, c, b, g = self._p()
        y = np.atleast_1d(np.asarray(y, dtype=float))
        out = np.full(y.shape, np.nan)
        inside = (y > a) & (y < d)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            inner = ((d - a) / (y[inside] - a)) ** (1.0 / g) - 1.0
            out[inside] = c / inner ** (1.0 / b)
        out[y <= a] = 0.0
        out[y >= d] = np.inf
        return out


def _unpack(theta: np.ndarray, model: str) -> tuple[float, float, float, float, float]:
    a = math.exp(theta[0])
    d = a + math.exp(theta[1])
    g = math.exp(theta[4]) if model == "5PL" else 1.0
    return a, d, math.exp(theta[2]), math.exp(theta[3]), g


def _fit_one(x: np.ndarray, y: np.ndarray, model: str) -> tuple[np.ndarray, float]:
    """Best of a few starts; returns (theta, residual sum of squares on log y)."""
    ly = np.log(y)
    pos = x[x > 0]
    zero = y[x <= 0]
    a0 = float(np.median(zero)) if zero.size else float(y.min()) * 0.8
    lo_c, hi_c = math.log(pos.min() / 100.0), math.log(pos.max() * 100.0)
    lower = [math.log(max(y.min(), 1e-3) / 100.0), math.log(max(y.max(), 1.0) / 100.0), lo_c,
             math.log(_SLOPE[0])]
    upper = [math.log(y.max() * 10.0), math.log(y.max() * 1000.0), hi_c, math.log(_SLOPE[1])]
    if model == "5PL":
        lower.append(math.log(_ASYM[0]))
        upper.append(math.log(_ASYM[1]))

    def residuals(theta: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            f = logistic(x, *_unpack(theta, model))
        return np.where(f > 0, ly - np.log(np.maximum(f, 1e-300)), 1e3)

    best: tuple[np.ndarray, float] | None = None
    for c0 in (float(np.exp(np.log(pos).mean())), float(pos.max()), float(pos.max()) * 5):
        for top_x in (1.5, 5.0):
            theta0 = [math.log(max(a0, 1e-3)), math.log(max(y.max() * top_x - a0, 1.0)),
                      math.log(c0), 0.0] + ([0.0] if model == "5PL" else [])
            theta0 = np.clip(theta0, np.array(lower) + 1e-9, np.array(upper) - 1e-9)
            try:
                res = least_squares(residuals, theta0, bounds=(lower, upper), method="trf",
                                    x_scale="jac", max_nfev=2000)
            except (ValueError, FloatingPointError):
                continue
            rss = float(np.sum(res.fun ** 2))
            if np.isfinite(rss) and (best is None or rss < best[1]):
                best = (res.x, rss)
    if best is None:
        raise CurveError(f"the {model} fit did not converge")
    return best


def _aicc(rss: float, n: int, k: int) -> float:
    if n - k - 1 <= 0:
        return math.inf
    return n * math.log(max(rss, 1e-12) / n) + 2 * k + 2 * k * (k + 1) / (n - k - 1)


def fit_curve(concentration: Sequence[float], reporter: Sequence[float], *,
              models: Sequence[str] = ("4PL", "5PL")) -> Curve:
    """Fit the standard curve of reporter against concentration.

    Parameters
    ----------
    concentration
        Standard concentrations (0 allowed: it pins the bottom).
    reporter
        Median reporter intensity of each standard (> 0).
    models
        Models to fit; the one with the lowest AICc is chosen.

    Raises
    ------
    CurveError
        Too few standards, a non-increasing signal, or no model converged.
    """
    x = np.asarray(concentration, dtype=float)
    y = np.asarray(reporter, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (y > 0) & (x >= 0)
    x, y = x[keep], y[keep]
    if np.unique(x[x > 0]).size < 4:
        raise CurveError(f"only {np.unique(x[x > 0]).size} standards above 0 with a signal "
                         "(need at least 4)")
    rho = np.corrcoef(np.log1p(x), np.log(y))[0, 1]
    if not rho > 0.5:
        raise CurveError(f"the reporter does not rise with concentration (correlation "
                         f"{rho:.2f}); are the standards in the right order in the sheet?")
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise CurveError(f"unknown models {unknown}; choose from {list(MODELS)}")
    fits: dict[str, np.ndarray] = {}
    aicc: dict[str, float] = {}
    for model in models:
        try:
            theta, rss = _fit_one(x, y, model)
        except CurveError:
            aicc[model] = math.inf
            continue
        fits[model] = theta
        aicc[model] = _aicc(rss, x.size, MODELS[model])
    if not fits:
        raise CurveError("no model converged")
    chosen = min(fits, key=lambda m: (aicc[m], MODELS[m]))
    a, d, c, b, g = _unpack(fits[chosen], chosen)
    params = {"bottom": a, "top": d, "ec50": c, "hill": b, "asymmetry": g}
    return Curve(model=chosen, params=params, aicc=aicc, n_points=int(x.size))


def back_calculate(curve: Curve, concentration: Sequence[float],
                   reporter: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Back-calculated concentrations and recoveries (%; NaN for a zero standard).

    Parameters
    ----------
    curve
        The fitted curve.
    concentration
        Nominal concentration of each standard (0 for a blank or zero standard).
    reporter
        Measured reporter intensity of each standard, in the same order.

    Returns
    -------
    tuple of numpy.ndarray
        Back-calculated concentrations (0 at or below the curve's bottom, ``inf`` at or above
        its top) and recoveries ``100 * back / concentration``.
    """
    x = np.asarray(concentration, dtype=float)
    back = curve.concentration(np.asarray(reporter, dtype=float))
    with np.errstate(divide="ignore", invalid="ignore"):
        recovery = np.where(x > 0, 100.0 * back / x, np.nan)
    return back, recovery


def quant_range(concentration: Sequence[float], recovery: Sequence[float], *,
                limits: tuple[float, float] = (80.0, 120.0),
                limits_at_lloq: tuple[float, float] = (70.0, 130.0),
                min_standards: int = 4) -> tuple[float, float]:
    """LLOQ and ULOQ from the back-calculated standards.

    Replicates of a level are pooled by their median recovery. The range is the longest run of
    consecutive levels within ``limits``, extended down by one level within ``limits_at_lloq``.

    Parameters
    ----------
    concentration
        Nominal concentration of each standard; levels at or below 0 are ignored.
    recovery
        Recovery (%) of each standard, as from :func:`back_calculate`.
    limits
        Accepted recovery range (%), 80–120 by default.
    limits_at_lloq
        Wider range (%) allowed for the one level below the run, 70–130 by default.
    min_standards
        Fewest levels the range must span.

    Returns
    -------
    tuple of float
        ``(lloq, uloq)``: the lowest and highest accepted levels. Between runs of the same
        length the lower one wins.

    Raises
    ------
    CurveError
        Fewer than ``min_standards`` levels in the best run.
    """
    x = np.asarray(concentration, dtype=float)
    rec = np.asarray(recovery, dtype=float)
    levels = np.unique(x[x > 0])
    med = np.array([np.nanmedian(rec[x == lv]) if np.isfinite(rec[x == lv]).any() else np.nan
                    for lv in levels])
    ok = (med >= limits[0]) & (med <= limits[1])
    ok_low = (med >= limits_at_lloq[0]) & (med <= limits_at_lloq[1])
    best: tuple[int, int] | None = None
    for hi in range(levels.size):
        if not ok[hi]:
            continue
        lo = hi
        while lo > 0 and ok[lo - 1]:
            lo -= 1
        if lo > 0 and ok_low[lo - 1]:
            lo -= 1
        if best is None or hi - lo > best[1] - best[0]:
            best = (lo, hi)
    n = 0 if best is None else best[1] - best[0] + 1
    if n < min_standards:
        shown = ", ".join(f"{lv:g}: {r:.0f}%" if np.isfinite(r) else f"{lv:g}: n/a"
                          for lv, r in zip(levels, med))
        raise CurveError(f"only {n} consecutive standards recover within {limits[0]:g}-"
                         f"{limits[1]:g}% (need {min_standards}); recoveries {shown}")
    return float(levels[best[0]]), float(levels[best[1]])


def fit_standards(concentration: Sequence[float], reporter: Sequence[float], *,
                  models: Sequence[str] = ("4PL", "5PL"),
                  limits: tuple[float, float] = (80.0, 120.0),
                  limits_at_lloq: tuple[float, float] = (70.0, 130.0),
                  min_standards: int = 4) -> tuple[Curve, float, float]:
    """Fit one analyte's standards and derive its range: ``(curve, lloq, uloq)``.

    Parameters
    ----------
    concentration
        Standard concentrations (0 allowed: it pins the bottom).
    reporter
        Median reporter intensity of each standard.
    models
        Models to fit (``"4PL"``, ``"5PL"``); the one with the lowest AICc is chosen.
    limits, limits_at_lloq, min_standards
        Acceptance of the back-calculated standards, as in :func:`quant_range`.

    Returns
    -------
    tuple
        The :class:`Curve`, the LLOQ and the ULOQ (in the well, before dilution).

    Raises
    ------
    CurveError
        The fit failed or too few standards recover (the message lists the recoveries).
    """
    curve = fit_curve(concentration, reporter, models=models)
    _, recovery = back_calculate(curve, concentration, reporter)
    lloq, uloq = quant_range(concentration, recovery, limits=limits,
                             limits_at_lloq=limits_at_lloq, min_standards=min_standards)
    return curve, lloq, uloq


def censor(curve: Curve, lloq: float, uloq: float, reporter: Sequence[float],
           dilution: Sequence[float], lod: float = math.nan) -> dict[str, np.ndarray]:
    """Sample concentrations × dilution, censored below the LoD (or the LLOQ when no LoD is
    known) and above the ULOQ, never clipped; values between LoD and LLOQ are reported
    (read through the curve below its lowest accepted standard) and flagged ``below_lloq``.

    Parameters
    ----------
    curve
        The accepted standard curve.
    lloq, uloq
        The curve's range in the well (before dilution).
    reporter
        Median reporter intensity of each sample.
    dilution
        Each sample's dilution factor, applied to the concentration and the limits.
    lod
        Limit of detection in the well (pg/mL): NaN when unknown, and then values below the
        LLOQ are censored at the LLOQ as before.

    Returns
    -------
    dict
        ``conc_pg_ml`` (NaN when censored), ``below_lloq``, ``below_lod``, ``above_uloq``,
        ``lloq``, ``uloq`` and ``lod`` (× dilution).
    """
    dil = np.asarray(dilution, dtype=float)
    well = curve.concentration(np.asarray(reporter, dtype=float))
    if np.isfinite(lod) and lod >= lloq:
        lloq = lod  # nothing below the detection limit is quantified, whatever the curve
    below = np.isfinite(well) & (well < lloq) | np.isneginf(well)
    has_lod = bool(np.isfinite(lod))
    below_lod = (np.isfinite(well) & (well < lod) | np.isneginf(well)) if has_lod else below
    above = np.isfinite(well) & (well > uloq) | np.isposinf(well)
    conc = np.where(below_lod | above | ~np.isfinite(well), np.nan, well * dil)
    return {"conc_pg_ml": conc, "below_lloq": below, "below_lod": below_lod,
            "above_uloq": above, "lloq": lloq * dil, "uloq": uloq * dil,
            "lod": lod * dil}


def limit_of_detection(curve: Curve, blank_reporter: Sequence[float],
                       stated: float | None = None) -> tuple[float, str]:
    """The limit of detection in the well: blank mean + 3 SD read through the curve (from at
    least two blank or zero-standard wells), never below the kit's stated LoD.

    A handful of blank wells on one plate can put the blank-derived LoD far below what the
    assay detects (their medians of hundreds of beads hardly vary); the manufacturer's stated
    sensitivity is the floor.

    Parameters
    ----------
    curve
        The plate's accepted curve for the analyte.
    blank_reporter
        Median reporter of each blank and zero-standard well.
    stated
        The kit's stated LoD (pg/mL), or None.

    Returns
    -------
    (lod, source)
        The LoD (NaN when neither is available) and where it came from: ``'blanks'`` or
        ``'kit'`` (the larger of the two), or ``''``.
    """
    from_blanks = math.nan
    blanks = np.asarray([b for b in blank_reporter if np.isfinite(b)], dtype=float)
    if blanks.size >= 2:
        threshold = float(blanks.mean() + 3 * blanks.std(ddof=1))
        value = float(curve.concentration(np.array([threshold]))[0])
        if np.isfinite(value) and value > 0:
            from_blanks = value
    kit = float(stated) if stated is not None and np.isfinite(stated) and stated > 0 \
        else math.nan
    if np.isfinite(from_blanks) and not (np.isfinite(kit) and kit > from_blanks):
        return from_blanks, "blanks"
    if np.isfinite(kit):
        return kit, "kit"
    return math.nan, ""


# ----------------------------------------------------------------------- plates and samples

# Columns of the tables built here (registered with immunoprofile.tables by immunoprofile.cba).
CYTOKINES: tuple[Column, ...] = (
    Column("sample_id", "string", "Sample id from the CBA sheet."),
    Column("<sheet column>", "as in the sheet", "patient_id, arm, timepoint, dilution and every "
           "further sheet column (week, days_since_last_il2_dose, …)."),
    Column("plate", "string", "Plate (batch) whose standard curve quantified the sample."),
    Column("analyte", "string", "Analyte (kit bead order, dimmest first)."),
    Column("n_beads", "int64", "Beads assigned to the analyte after gating and trimming."),
    Column("reporter_median", "float64", "Median reporter (PE) intensity of those beads."),
    Column("conc_pg_ml", "float64", "Concentration × dilution (pg/mL): measured in range, "
           "extrapolated through the curve between LoD and LLOQ (flagged below_lloq); NaN "
           "below the LoD (below the LLOQ when no LoD is known), above ULOQ or without a "
           "standard curve: never a made-up number."),
    Column("below_lloq", "bool", "Below the lower limit of quantification (between LoD and "
           "LLOQ the value is reported but not quantitative)."),
    Column("below_lod", "bool", "Below the limit of detection: censored (at the LoD) in the "
           "models; equals below_lloq when no LoD is known."),
    Column("above_uloq", "bool", "Above the upper limit: re-run the sample diluted."),
    Column("lloq", "float64", "LLOQ × dilution (pg/mL): lowest accepted standard."),
    Column("uloq", "float64", "ULOQ × dilution (pg/mL): highest accepted standard."),
    Column("lod", "float64", "LoD × dilution (pg/mL): blank (zero-standard) mean + 3 SD read "
           "through the plate's curve (≥ 2 blank wells), never below the kit's stated LoD; "
           "NaN when neither is known."),
    Column("fit_model", "string", "'4PL' or '5PL' (chosen by AICc); '' without a curve."),
    Column("conc_imputed", "float64", "IMPUTED for convenience: conc_pg_ml where reported, "
           "LoD/2 below the LoD (LLOQ/2 when no LoD is known), NaN otherwise. Say so when "
           "used (DOMAIN §8)."),
    Column("imputed", "bool", "conc_imputed is an imputed half-limit, not a measurement."),
    Column("flag_il2_dose", "bool", "IL-2 row of a sample drawn ≤ 1 day after an IL-2 dose "
           "(days_since_last_il2_dose): serum IL-2 reflects the drug."),
    Column("note", "string", "Why a value is censored or missing, '' otherwise."),
)
STANDARDS: tuple[Column, ...] = (
    Column("plate", "string", "Plate."), Column("sample_id", "string", "Standard or blank."),
    Column("role", "string", "'standard' or 'blank'."), Column("analyte", "string", "Analyte."),
    Column("expected_pg_ml", "float64", "Nominal concentration (0 for a blank)."),
    Column("n_beads", "int64", "Beads of the analyte."),
    Column("reporter_median", "float64", "Median reporter intensity."),
    Column("back_calc_pg_ml", "float64", "Concentration read back through the curve."),
    Column("recovery_pct", "float64", "100 × back-calculated / expected (NaN at 0)."),
    Column("accepted", "bool", "Recovery within 80–120% (70–130% at the LLOQ); a blank or "
           "zero standard is accepted when it reads below the LLOQ."),
    Column("in_range", "bool", "Between LLOQ and ULOQ."),
    Column("fit_model", "string", "Model of the curve ('' when the curve failed)."),
)
CURVES: tuple[Column, ...] = (
    Column("plate", "string", "Plate."), Column("analyte", "string", "Analyte."),
    Column("status", "string", "'ok' or 'failed' (reason in `error`)."),
    Column("fit_model", "string", "Chosen model."),
    Column("bottom, top, ec50, hill, asymmetry", "float64",
           "y = bottom + (top − bottom) / (1 + (ec50/x)^hill)^asymmetry (4PL: asymmetry 1)."),
    Column("aicc_4pl, aicc_5pl", "float64", "AICc of each fit on log reporter."),
    Column("lloq_pg_ml, uloq_pg_ml", "float64", "Range in the well (before dilution)."),
    Column("lod_pg_ml", "float64", "Limit of detection in the well (blank mean + 3 SD through "
           "the curve, or the kit's stated LoD)."),
    Column("lod_source", "string", "'blanks' (≥ 2 blank or zero-standard wells) or 'kit' "
           "(the kit's stated LoD, when larger)."),
    Column("n_standards", "int64", "Standards fitted."), Column("error", "string", "Why failed."),
)


def plate_curves(plate: str, rows: pd.DataFrame, measured: Mapping[str, dict],
                 kit: Any) -> tuple[list[dict], list[dict], dict[str, tuple[Curve, float, float]]]:
    """Fit every analyte's curve on one plate and back-calculate its standards and blanks.

    Parameters
    ----------
    plate
        Plate name.
    rows
        The plate's sheet rows whose files were measured (``role``, ``standard_pg_ml``).
    measured
        Per sample id, ``reporter`` and ``counts`` per analyte (see ``cba.measure_beads``).
    kit
        The kit (``analytes``, ``models``, ``recovery``, ``recovery_at_lloq``,
        ``min_standards``).

    Returns
    -------
    tuple
        Curve records (``cba_curves.csv``), standard records (``cba_standards.csv``) and the
        accepted ``{analyte: (curve, lloq, uloq, lod)}`` (``lod`` from the plate's blanks,
        else the kit's stated value).
    """
    st = rows[rows["role"] == "standard"]
    qc = rows[rows["role"].isin(["standard", "blank"])]
    curves, stds, fitted = [], [], {}
    for analyte in kit.analytes:
        x = st["standard_pg_ml"].to_numpy(float)
        y = np.array([measured[s]["reporter"][analyte] for s in st["sample_id"]])
        rec: dict[str, Any] = {"plate": plate, "analyte": analyte, "status": "failed",
                               "fit_model": "", "n_standards": len(st), "error": ""}
        curve, lloq, uloq = None, math.nan, math.nan
        try:
            if st.empty:
                raise CurveError("no standard on this plate could be measured")
            curve, lloq, uloq = fit_standards(
                x, y, models=kit.models, limits=kit.recovery,
                limits_at_lloq=kit.recovery_at_lloq, min_standards=kit.min_standards)
        except CurveError as exc:
            rec["error"] = str(exc)
            try:  # still draw and tabulate the standards through the unaccepted curve
                curve = fit_curve(x, y, models=kit.models)
            except CurveError:
                curve = None
        else:
            zero = qc[qc["standard_pg_ml"].fillna(0.0).to_numpy(float) == 0]
            lod, source = limit_of_detection(
                curve, [measured[s]["reporter"][analyte] for s in zero["sample_id"]],
                getattr(kit, "lod_pg_ml", {}).get(analyte))
            fitted[analyte] = (curve, lloq, uloq, lod)
            rec |= {"status": "ok", "fit_model": curve.model, "lod_pg_ml": lod,
                    "lod_source": source}
        if curve is not None:
            rec |= {**curve.params, **{f"aicc_{m.lower()}": v for m, v in curve.aicc.items()},
                    "lloq_pg_ml": lloq, "uloq_pg_ml": uloq}
        curves.append(rec)
        xq = qc["standard_pg_ml"].fillna(0.0).to_numpy(float)
        yq = np.array([measured[s]["reporter"][analyte] for s in qc["sample_id"]])
        if curve is not None:
            back, recov = back_calculate(curve, xq, yq)
        else:
            back = recov = np.full(len(qc), np.nan)
        at_lloq = np.isclose(xq, lloq)
        low = np.where(at_lloq, kit.recovery_at_lloq[0], kit.recovery[0])
        high = np.where(at_lloq, kit.recovery_at_lloq[1], kit.recovery[1])
        with np.errstate(invalid="ignore"):
            accepted = np.where(xq > 0, (recov >= low) & (recov <= high), back < lloq)
        good = analyte in fitted
        stds += [{"plate": plate, "sample_id": s, "role": r, "analyte": analyte,
                  "expected_pg_ml": xv, "n_beads": measured[s]["counts"][analyte],
                  "reporter_median": yv, "back_calc_pg_ml": b, "recovery_pct": rv,
                  "accepted": bool(a) and good, "in_range": good and lloq <= xv <= uloq,
                  "fit_model": curve.model if good else ""}
                 for s, r, xv, yv, b, rv, a in zip(qc["sample_id"], qc["role"], xq, yq, back,
                                                   recov, accepted)]
    return curves, stds, fitted


def sample_rows(rows: pd.DataFrame, measured: Mapping[str, dict],
                fitted: Mapping[str, tuple[Curve, float, float]], analytes: Sequence[str],
                plate: str, meta: Sequence[str]) -> list[dict]:
    """One record per sample × analyte: reporter, censored concentration, flags.

    Parameters
    ----------
    rows
        The plate's sample rows of the CBA sheet (``sample_id``, ``dilution`` and, for the
        IL-2 flag, ``days_since_last_il2_dose``).
    measured
        Per sample id, ``reporter`` and ``counts`` per analyte (see ``cba.measure_beads``).
    fitted
        The plate's accepted ``{analyte: (curve, lloq, uloq, lod)}`` (see
        :func:`plate_curves`);
        an analyte missing here gets NaN concentrations and a note.
    analytes
        Analytes in kit order.
    plate
        Plate name, written into each record.
    meta
        Sheet columns copied into each record.

    Returns
    -------
    list of dict
        Records with the :data:`CYTOKINES` columns (see :func:`cytokine_table`).
    """
    out = []
    for row in rows.to_dict("records"):
        m = measured[row["sample_id"]]
        dil = float(row["dilution"])
        dsl = pd.to_numeric(row.get("days_since_last_il2_dose"), errors="coerce")
        for analyte in analytes:
            y = m["reporter"][analyte]
            rec = {**{c: row[c] for c in meta}, "plate": plate, "analyte": analyte,
                   "n_beads": m["counts"][analyte], "reporter_median": y}
            if analyte in fitted:
                curve, lloq, uloq, lod = fitted[analyte]
                c = {k: v[0] if np.ndim(v) else v
                     for k, v in censor(curve, lloq, uloq, [y], [dil], lod).items()}
                note = ("< LOD" if c["below_lod"] and np.isfinite(c["lod"]) else
                        "< LLOQ" if c["below_lod"] else
                        "< LLOQ: extrapolated below the lowest standard" if c["below_lloq"]
                        else "> ULOQ: re-run diluted" if c["above_uloq"] else "")
                rec |= {**c, "fit_model": curve.model, "note": note}
            else:
                rec |= {"conc_pg_ml": math.nan, "below_lloq": False, "below_lod": False,
                        "above_uloq": False, "lloq": math.nan, "uloq": math.nan,
                        "lod": math.nan, "fit_model": "",
                        "note": f"no accepted standard curve on plate {plate}"}
            # what is imputed is what is censored: below the LoD (below the LLOQ without one)
            rec["imputed"] = bool(rec["below_lod"])
            limit = rec["lod"] if np.isfinite(rec["lod"]) else rec["lloq"]
            rec["conc_imputed"] = limit / 2 if rec["imputed"] else rec["conc_pg_ml"]
            # Serum IL-2 within a day of a low-dose IL-2 injection is the drug (DOMAIN §8).
            rec["flag_il2_dose"] = bool(analyte.upper() == "IL-2" and dsl <= 1)
            out.append(rec)
    return out


def cytokine_table(records: list[dict], meta: Sequence[str]) -> pd.DataFrame:
    """The cytokines table from :func:`sample_rows` records, in documented column order.

    Parameters
    ----------
    records
        Records of every plate, from :func:`sample_rows`.
    meta
        The sheet columns the records carry; ``sample_id`` is put first whatever its place.

    Returns
    -------
    pandas.DataFrame
        Columns ``sample_id``, the other ``meta`` columns, ``plate`` then the rest of
        :data:`CYTOKINES`; flags as bool, ``n_beads`` as int64 and a whole-number ``week``
        as Int64. Empty (with those columns) when there are no records.
    """
    df = pd.DataFrame(records)
    order = ["sample_id", *[c for c in meta if c != "sample_id"], "plate"] + [
        c.name for c in CYTOKINES[3:]]
    if df.empty:
        return pd.DataFrame(columns=order)
    df = df[order].copy()
    for c in ("below_lloq", "below_lod", "above_uloq", "imputed", "flag_il2_dose"):
        df[c] = df[c].astype(bool)
    df["n_beads"] = df["n_beads"].astype("int64")
    if "week" in df and pd.api.types.is_float_dtype(df["week"]):
        week = df["week"].dropna()
        if (week == week.round()).all():  # the sheet's blank standard rows made it float
            df["week"] = df["week"].astype("Int64")
    return df
