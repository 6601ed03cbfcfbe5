"""Heavily censored readouts: rank tests that still answer when most values are below the LLOQ.

When more than :data:`RANK_ABOVE` of an analyte's values are below the LLOQ (or a visit of an
arm has no value in range, where a censored-likelihood model has no estimable cell mean), a
likelihood model has too little to work with. Every censored value is then tied at the bottom
and the trial contrasts are tested on ranks, which need no distribution and no value in range
(exact permutation distributions with the mid-p, see :func:`_mannwhitney`):

- ``arm_vs_control`` at a visit: Mann–Whitney between the two arms' values;
- ``change_from_baseline``: Wilcoxon signed-rank of each patient's change (tied censored
  pairs count as no change);
- ``change_vs_control`` / ``change_vs_arm``: Mann–Whitney between the two arms' changes.

``estimate`` is then the difference in the share of values in range (detectable), in
percentage points, with a Wilson-type normal interval.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from immunoprofile.tl._models import Design, contrast_terms, model_failed

RANK_ABOVE = 0.8
#: Exact permutation distributions up to this many values per test (a few ms each); larger
#: samples use the normal approximation, whose discreteness problem has faded by then.
EXACT_UP_TO = 200
RANK_MODEL = ("rank_detectable: exact mid-p Mann–Whitney / Wilcoxon signed-rank on values "
              "with censored ones tied at the LLOQ; estimate: difference in % detectable")


def _share(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else np.nan


def _interval(d: float, se: float, alpha: float) -> tuple[float, float]:
    z = stats.norm.ppf(1 - alpha / 2)
    return 100 * (d - z * se), 100 * (d + z * se)


def fill_by_ranks(res: pd.DataFrame, data: pd.DataFrame, design: Design) -> pd.DataFrame:
    """Contrasts a censored-likelihood fit left without a p-value (a cell with no value in
    range, or too few values in range for the model), answered by :func:`rank_contrasts`.

    Parameters
    ----------
    res
        The fit's contrasts, or its single row with an empty ``contrast_type`` when it
        failed.
    data
        The readout's rows the fit was given (see :func:`rank_contrasts`).
    design
        Control arm, baseline, extra pairs.

    Returns
    -------
    pandas.DataFrame
        ``res`` as it is when every contrast has a p-value. Otherwise each contrast without
        one takes the rank test's row of the same key, its ``warning`` ending in "tested
        on ranks"; when the model failed (no estimate at all), the rank contrasts with its warning
        (``res`` when there are none either).
    """
    keys = ["contrast_type", "arm", "reference_arm", "timepoint", "baseline"]
    empty = res.empty or model_failed(res)
    if not empty and not res["pvalue"].isna().any():
        return res
    ranks = rank_contrasts(data, design)
    if empty or ranks.empty:
        if not ranks.empty:
            note = str(res["warning"].iloc[0]) if len(res) else ""
            ranks["warning"] = [f"{note}; tested on ranks" if note else "tested on ranks"
                                for _ in range(len(ranks))]
            return ranks
        return res
    merged = res.set_index(keys)
    by_key = ranks.set_index(keys)
    gaps = merged.index[merged["pvalue"].isna()]
    for key in gaps:
        if key in by_key.index:
            row = by_key.loc[key]
            note = merged.at[key, "warning"]
            merged.loc[key, row.index] = row.to_numpy()
            merged.at[key, "warning"] = f"{note}; tested on ranks" if note else \
                "tested on ranks"
    return merged.reset_index()[res.columns]


def rank_contrasts(data: pd.DataFrame, design: Design, *, model_name: str = RANK_MODEL
                   ) -> pd.DataFrame:
    """The trial contrasts of one censored readout, by rank tests.

    Parameters
    ----------
    data
        One row per sample: ``value`` (the log bound for censored rows), ``censored``
        (−1 below the LLOQ, 0 in range, +1 above the ULOQ), ``patient_id``, ``arm``,
        ``timepoint`` (ordered).
    design
        Control arm, baseline, extra pairs.
    model_name
        Written into ``model``.

    Returns
    -------
    pandas.DataFrame
        One row per contrast, the columns of
        :func:`~immunoprofile.tl._models.fit_contrasts`.
    """
    data = data.dropna(subset=["value"]).copy()
    low = data["censored"].to_numpy() < 0
    # censored values tied below every value in range (and above-ULOQ ones above)
    floor = np.nanmin(data["value"]) - 1.0
    data["rank_value"] = np.where(low, floor, data["value"])
    data["detected"] = ~low
    tps = list(dict.fromkeys(data["timepoint"].astype(str)))
    if isinstance(data["timepoint"].dtype, pd.CategoricalDtype):
        tps = [str(t) for t in data["timepoint"].cat.categories if str(t) in set(tps)]
    data["timepoint"] = data["timepoint"].astype(str)
    arms = [str(a) for a in pd.unique(data["arm"].astype(str))]
    cells = {(str(a), str(t)): g for (a, t), g in data.groupby(["arm", "timepoint"])}
    rows = []
    for kind, arm, ref, tp, base, _ in contrast_terms(design, arms, tps):
        row = {"contrast_type": kind, "arm": arm, "reference_arm": ref, "timepoint": tp,
               "baseline": base, "estimate": np.nan, "ci_low": np.nan, "ci_high": np.nan,
               "pvalue": np.nan, "model": model_name, "n_samples": 0, "n_patients": 0,
               "warning": ""}
        if kind == "arm_vs_control":
            a, c = cells.get((arm, tp)), cells.get((ref, tp))
            if a is None or c is None:
                continue
            p = _mannwhitney(a["rank_value"].to_numpy(), c["rank_value"].to_numpy())
            pa, pc = _share(a["detected"]), _share(c["detected"])
            se = np.sqrt(pa * (1 - pa) / len(a) + pc * (1 - pc) / len(c))
            row.update(n_samples=len(a) + len(c),
                       n_patients=int(pd.concat([a, c])["patient_id"].nunique()))
            _fill(row, pa - pc, se, p, design.alpha)
        else:
            da = _changes(data, arm, tp, base)
            if da is None:
                continue
            if kind == "change_from_baseline":
                p = _signed_rank(da["rank_change"].to_numpy())
                d = float(da["detected_change"].mean())
                se = float(da["detected_change"].std(ddof=1) / np.sqrt(len(da))) \
                    if len(da) > 1 else np.nan
                used = da
            else:
                dr = _changes(data, ref, tp, base)
                if dr is None:
                    continue
                p = _mannwhitney(da["rank_change"].to_numpy(), dr["rank_change"].to_numpy())
                d = float(da["detected_change"].mean() - dr["detected_change"].mean())
                se = float(np.sqrt(da["detected_change"].var(ddof=1) / len(da)
                                   + dr["detected_change"].var(ddof=1) / len(dr)))
                used = pd.concat([da, dr])
            row.update(n_samples=2 * len(used), n_patients=len(used))
            _fill(row, d, se, p, design.alpha)
        rows.append(row)
    return pd.DataFrame(rows)


def _fill(row: dict, d: float, se: float, p: float, alpha: float) -> None:
    lo, hi = _interval(d, se, alpha) if np.isfinite(se) else (np.nan, np.nan)
    row.update(estimate=100 * d, ci_low=lo, ci_high=hi, pvalue=p)


def _changes(data: pd.DataFrame, arm: str, tp: str, base: str) -> pd.DataFrame | None:
    """Per patient of the arm with both visits: change in rank value and in detection."""
    rows = data[data["arm"].astype(str) == arm]
    wide = rows.pivot_table(index="patient_id", columns="timepoint",
                            values=["rank_value", "detected"], aggfunc="first", observed=True)
    if (("rank_value", tp) not in wide.columns) or (("rank_value", base) not in wide.columns):
        return None
    both = wide.dropna(subset=[("rank_value", tp), ("rank_value", base)])
    if both.empty:
        return None
    return pd.DataFrame({
        "rank_change": both[("rank_value", tp)] - both[("rank_value", base)],
        "detected_change": both[("detected", tp)].astype(float)
        - both[("detected", base)].astype(float)})


def _mid_p(probs: np.ndarray, deviation: np.ndarray, observed: float) -> float:
    """Two-sided mid-p: P(|T − E| > |t − E|) + ½ P(|T − E| = |t − E|)."""
    more = probs[deviation > observed].sum()
    same = probs[deviation == observed].sum()
    return float(min(1.0, more + 0.5 * same))


def _mannwhitney(x: np.ndarray, y: np.ndarray) -> float:
    """Exact permutation mid-p of the rank-sum test, ties (censored values) kept as midranks.

    With most values tied at the LLOQ the permutation distribution has a few atoms: an exact
    test at 5% would reject far less than 5% of the time under the null, the asymptotic
    one unevenly. The mid-p keeps the share of p < 0.05 near 5% and the mean p near ½ (an
    all-tied contrast gets ½: no evidence either way).
    """
    if len(x) == 0 or len(y) == 0:
        return np.nan
    both = np.concatenate([x, y])
    if len(both) > EXACT_UP_TO:
        return float(stats.mannwhitneyu(x, y, alternative="two-sided", method="asymptotic",
                                        use_continuity=False).pvalue)
    ranks = np.rint(2 * stats.rankdata(both)).astype(int)  # midranks ×2: integers
    n, total = len(x), int(ranks.sum())
    # ways[k, s]: subsets of k values whose doubled ranks sum to s
    ways = np.zeros((n + 1, total + 1))
    ways[0, 0] = 1.0
    for r in ranks:
        shifted = np.zeros_like(ways)
        shifted[1:, r:] = ways[:-1, :total + 1 - r]
        ways += shifted
    probs = ways[n] / ways[n].sum()
    centre = n * (len(both) + 1)
    deviation = np.abs(np.arange(total + 1) - centre)
    return _mid_p(probs, deviation, abs(int(ranks[:n].sum()) - centre))


def _signed_rank(d: np.ndarray) -> float:
    """Exact sign-flip mid-p of the signed-rank test; zero changes ranked then dropped
    (Pratt), so pairs tied at the LLOQ at both visits weigh in as no change."""
    d = d[np.isfinite(d)]
    if len(d) == 0:
        return np.nan
    if len(d) > EXACT_UP_TO:
        return float(stats.wilcoxon(d, zero_method="pratt", method="approx").pvalue)
    ranks = np.rint(2 * stats.rankdata(np.abs(d))).astype(int)[d != 0]
    positive = int(ranks[d[d != 0] > 0].sum())
    total = int(ranks.sum())
    ways = np.zeros(total + 1)
    ways[0] = 1.0
    for r in ranks:  # each nonzero change is as likely up as down under the null
        shifted = np.zeros_like(ways)
        shifted[r:] = ways[:total + 1 - r]
        ways += shifted
    probs = ways / ways.sum()
    deviation = np.abs(2 * np.arange(total + 1) - total)
    return _mid_p(probs, deviation, abs(2 * positive - total))
