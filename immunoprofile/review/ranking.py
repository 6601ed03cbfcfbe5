"""Which samples of a run most need a look, and why.

Every sample gets a score that adds up what a reviewer would check first, each part on a
robust scale so a 1,000-sample trial is ranked by its outliers, not by its size:

- **gates** far from where the run put them for the other samples (robust SD: 1.4826 × MAD
  over all samples of each range/rectangle bound and polygon or ellipse centre, as the run
  applied them: adaptive positions and overrides; runs gated before gates were recorded use
  the adaptive positions in qc.csv);
- **adaptive fallbacks** (a gate that found no landmark and kept its default);
- **QC loss** (% of events acquisition QC removed);
- **rare populations** in a sample where the run's median has plenty (≥ 10× the threshold);
- **counts far from the patient's other visits** (logit % of parent against the median of the
  patient's other samples of the same template, on the run's robust scale for that
  population).

Components are capped at :data:`CAP` so one absurd value cannot hide every other sample.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from immunoprofile.gating.landmarks import MAD_TO_SD
from immunoprofile.gating.rows import RARE_THRESHOLD
from immunoprofile.run import Run
from immunoprofile.template.model import EllipseGate, PolygonGate, RectangleGate, Template

CAP = 10.0
_POSITION_PREFIXES = ("shift_", "min_", "max_", "center_", "ratio_low", "ratio_high")
_DIAGNOSTIC_PREFIXES = ("peak_", "sd_", "ref_", "fit_", "range_", "fraction_", "scale_",
                        "landmark_", "n_reference", "components", "weight", "candidates",
                        "distance_square", "ratio_mode")


def _robust_z(values: pd.Series) -> pd.Series:
    x = pd.to_numeric(values, errors="coerce")
    med = x.median()
    mad = MAD_TO_SD * (x - med).abs().median()
    scale = mad if mad and np.isfinite(mad) and mad > 0 else np.nan
    if not np.isfinite(scale):
        spread = x.std()
        scale = spread if spread and np.isfinite(spread) and spread > 0 else np.nan
    return ((x - med).abs() / scale).clip(upper=CAP).fillna(0.0)


def _position_columns(qc: pd.DataFrame) -> list[str]:
    out = []
    for col in qc.columns:
        parts = col.split("/")
        if len(parts) != 3 or parts[2] == "fallback":
            continue
        key = parts[2]
        if key.startswith(_DIAGNOSTIC_PREFIXES):
            continue
        if key.startswith(_POSITION_PREFIXES) or key[:1].isalpha():
            out.append(col)
    return out


def _gate_scores(qc: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    cols = _position_columns(qc)
    if not cols:
        zero = pd.Series(0.0, index=qc.index)
        return zero, pd.Series("", index=qc.index)
    z = pd.DataFrame({c: _robust_z(qc[c]) for c in cols}, index=qc.index)
    worst = z.idxmax(axis=1)
    score = z.max(axis=1)
    why = [f"{c.split('/')[1]} gate ({c.split('/')[2]}) {s:.1f} robust SD from the run's "
           f"median" if s >= 3 else "" for c, s in zip(worst, score)]
    return score, pd.Series(why, index=qc.index)


def _gate_features(template: Template) -> dict[str, float]:
    """Where a sample's gates sit: rectangle and range bounds, polygon and ellipse centres."""
    out: dict[str, float] = {}
    for pop in template.populations:
        g = pop.gate
        names = [d.marker for d in g.dims]
        if isinstance(g, RectangleGate):
            for name, lo, hi in zip(names, g.mins, g.maxs):
                if lo is not None:
                    out[f"{template.name}/{pop.name}/{name} min"] = float(lo)
                if hi is not None:
                    out[f"{template.name}/{pop.name}/{name} max"] = float(hi)
        elif isinstance(g, PolygonGate | EllipseGate):
            centre = (np.mean(np.asarray(g.vertices, float), axis=0)
                      if isinstance(g, PolygonGate) else np.asarray(g.mean, float))
            for name, c in zip(names, centre):
                out[f"{template.name}/{pop.name}/{name} centre"] = float(c)
    return out


def _placed_scores(run: Run, sample_ids: list[str]) -> pd.DataFrame | None:
    """Per sample, its gate furthest from where the run put that gate for the other samples
    (adaptive positions and overrides alike), or None when the run recorded no gates."""
    rows = {}
    for sid in sample_ids:
        placed = run.placed_templates(sid)
        if placed:
            rows[sid] = {k: v for t in placed.values() for k, v in _gate_features(t).items()}
    if not rows:
        return None
    table = pd.DataFrame.from_dict(rows, orient="index")
    z = pd.DataFrame({c: _robust_z(table[c]) for c in table.columns}, index=table.index)
    worst, score = z.idxmax(axis=1), z.max(axis=1)
    why = [f"{c.split('/')[1]} gate ({c.split('/')[2]}) {v:.1f} robust SD from where the run "
           "put it" if v >= 3 else "" for c, v in zip(worst, score)]
    return pd.DataFrame({"sample_id": table.index.astype(str), "gate_score": score.to_numpy(),
                         "gate_why": why})


def _leave_one_out_median(values: pd.Series) -> np.ndarray:
    """For each of a patient's visits, the median of the others (NaN for a single visit)."""
    a = values.to_numpy(float)
    if a.size < 2:
        return np.full(a.size, np.nan)
    return np.array([np.median(np.delete(a, i)) for i in range(a.size)])


def _patient_scores(subsets: pd.DataFrame) -> pd.DataFrame:
    """Per sample, the population furthest from the patient's other visits."""
    sub = subsets[subsets["measured"] & (subsets["parent_count"].fillna(0) > 0)].copy()
    if sub.empty or "patient_id" not in sub.columns:
        return pd.DataFrame(columns=["sample_id", "patient_score", "patient_why"])
    p = ((sub["count"].astype(float) + 0.5) / (sub["parent_count"].astype(float) + 1.0))
    sub["logit"] = np.log(p / (1 - p))
    keys = ["patient_id", "template", "population"]
    sub["other"] = sub.groupby(keys, observed=True)["logit"].transform(_leave_one_out_median)
    sub["dev"] = (sub["logit"] - sub["other"]).abs()
    sub["z"] = sub.groupby(["template", "population"], observed=True)["dev"].transform(
        _robust_z)
    sub = sub[sub["count"].fillna(0) >= 20].dropna(subset=["other"])
    if sub.empty:
        return pd.DataFrame(columns=["sample_id", "patient_score", "patient_why"])
    best = sub.loc[sub.groupby("sample_id")["z"].idxmax()]
    why = [f"{r.population}: {r.z:.1f} robust SD from the patient's other visits"
           if r.z >= 3 else "" for r in best.itertuples()]
    return pd.DataFrame({"sample_id": best["sample_id"].astype(str).to_numpy(),
                         "patient_score": best["z"].to_numpy(), "patient_why": why})


def _rare_scores(subsets: pd.DataFrame) -> pd.DataFrame:
    sub = subsets[subsets["measured"]].copy()
    typical = sub.groupby(["template", "population"], observed=True)["count"].transform(
        "median")
    unusual = sub["flag_rare"] & (typical >= 10 * RARE_THRESHOLD)
    hits = sub[unusual]
    rows = []
    for sid, g in hits.groupby("sample_id"):
        names = ", ".join(f"{r.population} ({int(r.count)} events)" for r in g.itertuples())
        rows.append({"sample_id": str(sid), "rare_score": float(len(g)),
                     "rare_why": f"rare where the run has plenty: {names}"})
    return pd.DataFrame(rows, columns=["sample_id", "rare_score", "rare_why"])


def rank_samples(run: str | Run) -> pd.DataFrame:
    """The run's samples, those that most need a look first.

    Parameters
    ----------
    run
        A gated run folder.

    Returns
    -------
    pandas.DataFrame
        One row per gated sample: ``sample_id``, ``templates``, the sheet's ``patient_id``,
        ``arm``, ``timepoint``, ``batch`` (when present), ``score`` and ``reasons`` (the
        components that made it, ``; ``-joined), ``override`` (a gate of it was corrected),
        sorted by ``score`` descending.
    """
    run = Run.open(run)
    subsets = run.subsets
    meta_cols = [c for c in ("patient_id", "arm", "timepoint", "batch") if c in subsets.columns]
    samples = subsets.groupby("sample_id", sort=False).agg(
        templates=("template", lambda s: ", ".join(dict.fromkeys(s.astype(str)))),
        override=("override", "any") if "override" in subsets.columns else
        ("template", lambda s: False),
        **{c: (c, "first") for c in meta_cols}).reset_index()
    samples["sample_id"] = samples["sample_id"].astype(str)
    qc = run.qc.copy()
    parts = pd.DataFrame({"sample_id": samples["sample_id"]})
    # the gates themselves, overrides included; runs gated before they were recorded: the
    # adaptive positions in qc.csv
    placed = _placed_scores(run, list(samples["sample_id"]))
    if placed is not None:
        parts = parts.merge(placed, on="sample_id", how="left")
    if not qc.empty:
        qc["sample_id"] = qc["sample_id"].astype(str)
        if placed is None:
            gate_score, gate_why = _gate_scores(qc)
            parts = parts.merge(pd.DataFrame({"sample_id": qc["sample_id"],
                                              "gate_score": gate_score, "gate_why": gate_why}),
                                on="sample_id", how="left")
        fallbacks = qc.filter(like="/fallback")
        # a fallback most samples share is the template's norm on these data, not a sign
        weight = 1.0 - fallbacks.mean(axis=0, skipna=True).fillna(0.0)
        fallbacks = fallbacks.fillna(0)
        fell = [", ".join(c.split("/")[1] for c in fallbacks.columns
                          if row[c] and weight[c] >= 0.5) for _, row in fallbacks.iterrows()]
        pct = pd.to_numeric(qc.get("pct_removed", 0), errors="coerce").fillna(0.0)
        part = pd.DataFrame({
            "sample_id": qc["sample_id"],
            "fallback_score": 3.0 * (fallbacks * weight).sum(axis=1).clip(upper=3),
            "fallback_why": [f"adaptive gate fell back: {f}" if f else "" for f in fell],
            "qc_score": (pct / 5.0).clip(upper=CAP),
            "qc_why": [f"QC removed {v:.1f}% of events" if v >= 5 else "" for v in pct]})
        parts = parts.merge(part, on="sample_id", how="left")
    parts = parts.merge(_patient_scores(subsets), on="sample_id", how="left")
    parts = parts.merge(_rare_scores(subsets), on="sample_id", how="left")
    score_cols = [c for c in parts.columns if c.endswith("_score")]
    why_cols = [c for c in parts.columns if c.endswith("_why")]
    parts[score_cols] = parts[score_cols].astype(float).fillna(0.0)
    parts[why_cols] = parts[why_cols].fillna("")
    samples["score"] = parts[score_cols].sum(axis=1).round(2).to_numpy()
    order = [c.replace("_score", "_why") for c in score_cols]

    def reasons(i: int) -> str:
        ranked = sorted(((parts.at[i, s], parts.at[i, w]) for s, w in zip(score_cols, order)),
                        key=lambda t: -t[0])
        return "; ".join(w for _, w in ranked if w)

    samples["reasons"] = [reasons(i) for i in range(len(parts))]
    return samples.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
