"""Arm-comparison plots: trajectories, boxplots, volcanoes and a heatmap of effects.

Inputs are the tables of :mod:`immunoprofile.tl`: the patients table of
:func:`~immunoprofile.tl.response`, the subsets table, and the differential abundance (or state)
table. An arm keeps its colour in every plot (its place in the category order, else in order of
appearance); visits keep their order. Titles say what is plotted and on which scale. Figures
are built on an Agg canvas without ``pyplot`` (see :mod:`immunoprofile.pl._gating`); ``save=``
writes a PNG atomically and the figure is returned either way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.figure import Figure
from scipy import stats

from immunoprofile.errors import ImmunoprofileError
from immunoprofile.pl._figures import (
    arm_colours,
    figure,
    finish,
    suptitle,
    visit_positions,
)

# tab10 with its blue and red last: they mean "down" and "up" in the volcano and heatmap.
UP, DOWN, NOT_SIGNIFICANT = "#c0392b", "#2166ac", "0.72"
_FOLD_TICKS = [1 / 16, 1 / 8, 1 / 4, 1 / 3, 1 / 2, 2 / 3, 0.8, 1, 1.25, 1.5, 2, 3, 4, 8, 16]


def trajectories(patients: pd.DataFrame, *, population: str, template: str | None = None,
                 measure: str = "fold_change", arms: list[str] | None = None,
                 save: str | Path | None = None, dpi: int = 110) -> Figure:
    """One population over the visits: faint per-patient lines, bold arm means with 95% CI.

    Parameters
    ----------
    patients
        The patients table of :func:`immunoprofile.tl.response`.
    population, template
        What to draw; ``template`` (or ``"template/population"``) is needed only when the
        name occurs in several templates.
    measure
        ``"fold_change"`` (geometric mean and CI on a log₂ axis with a line at 1) or
        ``"value"`` (arithmetic mean and t interval).
    arms
        Arms to draw, in this order (default: all).
    save, dpi
        Write a PNG here (atomically) at this resolution.

    Returns
    -------
    matplotlib.figure.Figure
        One axes; each arm's mean line has ``gid="mean:<arm>"``, patient lines ``"patient"``.
    """
    if measure not in ("fold_change", "value"):
        raise ImmunoprofileError(f"measure must be 'fold_change' or 'value', not {measure!r}")
    rows, name = _select(patients, population, template, measure, "trajectories")
    log = measure == "fold_change"
    order, colours = arm_colours(rows, arms)
    tps, xpos = visit_positions(rows)
    rows = _finite(rows, measure, log, name)
    rows = rows[rows["arm"].astype(str).isin(order)].assign(
        x=rows["timepoint"].astype(str).map(xpos))
    fig, ax = figure(7.0, 4.6)
    ends = [1.0] if log else []
    for arm in order:
        g = rows[rows["arm"].astype(str) == arm]
        for _, p in g.sort_values("x").groupby("patient_id", sort=False, observed=True):
            ax.plot(p["x"], p["y"], color=colours[arm], lw=0.8, alpha=0.3, gid="patient")
        if g.empty:
            continue
        x, mean, lo, hi = map(np.asarray, zip(*[(x, *_mean_ci(v.to_numpy(), log))
                                                for x, v in g.groupby("x")["y"]]))
        ax.fill_between(x, lo, hi, color=colours[arm], alpha=0.18, lw=0)
        ax.plot(x, mean, color=colours[arm], lw=2.6, marker="o", ms=5, zorder=4,
                gid=f"mean:{arm}", label=f"{arm} (n={g['patient_id'].nunique()})")
        ends += [g["y"].min(), g["y"].max(), np.nanmin(lo), np.nanmax(hi)]
    ax.set_xticks([xpos[t] for t in tps], tps)
    ax.set_xlabel("visit")
    base = _baseline(rows) if log else ""
    ax.set_ylabel(_value_label(measure, base))
    if log:
        _fold_axis(ax, np.nanmin(ends), np.nanmax(ends))
        ax.axhline(1, color="0.3", lw=1, ls="--", zorder=1)
    what = f"fold change from {base}" if log else "value per visit"
    ax.set_title(f"{name}: {what}\npatients (faint), arm {'geometric ' if log else ''}mean "
                 "± 95% CI", fontsize=10)
    ax.legend(title="arm", fontsize=8, title_fontsize=8, frameon=False,
              loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(axis="y", color="0.92", lw=0.8)
    return finish(fig, save, dpi)


def boxplots(subsets_or_patients: pd.DataFrame, *, population: str, template: str | None = None,
             value: str = "pct_parent", results: pd.DataFrame | None = None,
             contrast_type: str = "arm_vs_control", save: str | Path | None = None,
             dpi: int = 110) -> Figure:
    """One population per visit: a box per arm with its patients as points, q-values on top.

    Parameters
    ----------
    subsets_or_patients
        The subsets table, or the patients table of :func:`immunoprofile.tl.response` (whose
        ``value`` column is drawn for the default ``value``).
    population, template
        What to draw (as in :func:`trajectories`).
    value
        Column to draw (``pct_parent``, ``pct_of_<reference>``, ``mfi_median_<marker>``,
        ``fold_change``: log₂ axis, baseline visit left out, ...).
    results
        A differential abundance (or state) table: each arm × visit is annotated with the FDR
        of its ``contrast_type`` row, as ``q=0.003`` with stars (* < 0.05, ** < 0.01,
        *** < 0.001); the reference is ``parent`` (``<reference>`` for ``pct_of_<reference>``).
    contrast_type
        Which contrast the q-values come from.
    save, dpi
        Write a PNG here (atomically) at this resolution.

    Returns
    -------
    matplotlib.figure.Figure
        One axes per visit; q-value texts have ``gid="q"``.
    """
    table, column = subsets_or_patients, value
    if (value == "pct_parent" and table is not None and value not in table.columns
            and {"value", "fold_change"} <= set(table.columns)):
        column = "value"  # a patients table: its value is the response measure
    rows, name = _select(table, population, template, column, "boxplots")
    log = column == "fold_change"
    (order, colours), (tps, _) = arm_colours(rows, None), visit_positions(rows)
    rows = _finite(rows, column, log, name)
    base = _baseline(rows) if log else ""
    tps = [t for t in tps if t != base] or tps  # every fold change is 1 at baseline
    qs, used = ({}, None) if results is None else _q_values(results, rows, contrast_type, value)
    fig, axes = figure(max(6.5, 1.0 + 0.75 * len(order) * len(tps)), 4.6, ncols=len(tps),
                        sharey=True)
    rng = np.random.default_rng(0)  # the same jitter on every call
    for ax, tp in zip(axes, tps):
        sub = rows[rows["timepoint"].astype(str) == tp]
        for j, arm in enumerate(order):
            v = sub.loc[sub["arm"].astype(str) == arm, "y"].to_numpy()
            if v.size:
                box = ax.boxplot([v], positions=[j], widths=0.6, patch_artist=True,
                                 showfliers=False, medianprops=dict(color="black", lw=1.5))
                box["boxes"][0].set(facecolor=colours[arm], alpha=0.45, edgecolor="0.2")
                ax.scatter(j + rng.uniform(-0.14, 0.14, v.size), v, s=12, color="0.15",
                           alpha=0.75, lw=0, zorder=3)
            text, weight = qs.get((arm, tp), ("", "normal"))
            ax.text(j, 0.985, text, transform=ax.get_xaxis_transform(), ha="center", va="top",
                    fontsize=7, fontweight=weight, gid="q" if "q=" in text else None)
        ax.set_xticks(range(len(order)), order, rotation=30 if len(order) > 3 else 0)
        ax.set_xlim(-0.6, len(order) - 0.4)
        base_tp = used is not None and tp in set(used.get("baseline", pd.Series()).astype(str))
        ax.set_title(f"{tp} (baseline)" if base_tp else tp, fontsize=10)
        ax.grid(axis="y", color="0.92", lw=0.8)
    if log:
        _fold_axis(axes[0], rows["y"].min(), rows["y"].max())
    lo, hi = axes[0].get_ylim()  # headroom for the q-values: a fifth of the axis
    axes[0].set_ylim(lo, hi * (hi / lo) ** 0.25 if log else hi + 0.25 * (hi - lo))
    axes[0].set_ylabel(_value_label(column, base))
    title = f"{name}: {_value_label(column, base)} per visit and arm"
    if qs:
        title += f"\nq = FDR of {_what(used, contrast_type)}\n* q<0.05 ** q<0.01 *** q<0.001"
    suptitle(fig, title)
    return finish(fig, save, dpi)


def volcano(results: pd.DataFrame, *, contrast_type: str, arm: str | None = None,
            timepoint: str | None = None, reference: str | None = "parent", fdr: float = 0.05,
            label: int = 10, save: str | Path | None = None, dpi: int = 110) -> Figure:
    """Estimate against −log₁₀ p for every population, one panel per arm × visit.

    Points with FDR below ``fdr`` are coloured (red up, blue down) and the ``label`` most
    significant of them per panel are named (texts with ``gid="label"``); the dashed line is
    the p-value cut ``fdr`` implies in that panel. ``arm``/``timepoint`` keep one arm or visit;
    ``reference`` selects the counts' reference (``None``: no selection).

    Parameters
    ----------
    results
        A differential abundance or state table
        (:func:`~immunoprofile.tl.differential_abundance`,
        :func:`~immunoprofile.tl.differential_state`); complement rows (``complement_of``,
        the mirror of a sibling's test) are left out.
    contrast_type
        The contrast to plot (``change_vs_control``, ``arm_vs_control``, ``change_vs_arm``,
        ``change_from_baseline``).
    arm, timepoint
        Keep only this arm or visit (all by default).
    reference
        Keep rows with this ``reference`` (``"parent"`` by default); None keeps all, as does
        a table without the column.
    fdr
        FDR threshold for colouring and the dashed line.
    label
        Most significant points named per panel.
    save, dpi
        Write a PNG here (atomically) at this resolution.

    Returns
    -------
    matplotlib.figure.Figure
        One panel per arm (or arm pair) × visit, axes shared.

    Raises
    ------
    ImmunoprofileError
        The table is empty, lacks columns, or has no finite rows for the selection.
    """
    rows = _contrast_rows(results, contrast_type, reference, "volcano")
    keep = (np.isfinite(rows["estimate"].astype(float)) & np.isfinite(rows["pvalue"].astype(float))
            & ((rows["arm"].astype(str) == str(arm)) if arm is not None else True)
            & ((rows["timepoint"].astype(str) == str(timepoint)) if timepoint is not None
               else True))
    rows = rows[keep]
    if rows.empty:
        raise ImmunoprofileError(f"volcano: no {contrast_type} rows with an estimate and p-value"
                                 f" for arm={arm!r}, timepoint={timepoint!r}")
    rows = rows.assign(y=-np.log10(rows["pvalue"].astype(float).clip(lower=1e-300)),
                       name=_row_names(rows), panel=rows["arm"].astype(str) + _vs(rows))
    arms, tps = list(pd.unique(rows["panel"])), list(pd.unique(rows["timepoint"].astype(str)))
    fig, axes = figure(0.8 + 3.1 * len(tps), 0.9 + 2.7 * len(arms), nrows=len(arms),
                        ncols=len(tps), sharex=True, sharey=True)
    xmax = 1.15 * float(rows["estimate"].astype(float).abs().max()) or 1.0
    ymax = 1.18 * float(rows["y"].max()) or 1.0
    for k, ax in enumerate(axes):
        a, tp = arms[k // len(tps)], tps[k % len(tps)]
        _volcano_panel(ax, rows[(rows["panel"] == a) & (rows["timepoint"].astype(str) == tp)],
                       fdr, label, xmax, ymax)
        ax.set_title(f"{a} · {tp}", fontsize=9)
        ax.set_xlabel(_scale(rows) if k >= len(axes) - len(tps) else "", fontsize=8)
        ax.set_ylabel("−log₁₀ p" if k % len(tps) == 0 else "", fontsize=8)
    suptitle(fig, f"{_what(rows, contrast_type)}\ncoloured: FDR < {fdr:g} (red up, blue "
                   f"down); named: up to {label} most significant per panel")
    return finish(fig, save, dpi)


def effects_heatmap(results: pd.DataFrame, *, contrast_type: str = "change_vs_control",
                    reference: str | None = "parent", fdr: float = 0.05,
                    save: str | Path | None = None, dpi: int = 110) -> Figure:
    """Effects of one contrast type: populations (rows) × arm@visit (columns).

    Colour is the estimate on a diverging scale centred at 0; each cell prints its estimate,
    bold with ``*`` when its FDR is below ``fdr`` (texts with ``gid="significant"``). Untested
    cells are light grey.

    Parameters
    ----------
    results
        A differential abundance or state table (complement rows left out, as in
        :func:`volcano`).
    contrast_type
        The contrast to show (``change_vs_control`` by default).
    reference
        Keep rows with this ``reference`` (``"parent"`` by default); None keeps all, which
        fails when a population then has several rows per cell.
    fdr
        FDR threshold for the bold ``*`` cells.
    save, dpi
        Write a PNG here (atomically) at this resolution.

    Returns
    -------
    matplotlib.figure.Figure
        The heatmap, rows named ``template/population`` (with the marker for state).

    Raises
    ------
    ImmunoprofileError
        The table is empty, lacks columns, has no such rows, or has several rows per
        population and column.
    """
    rows = _contrast_rows(results, contrast_type, reference, "effects_heatmap")
    rows = rows.assign(name=_row_names(rows, full=True), column=rows["arm"].astype(str)
                       + _vs(rows) + "@" + rows["timepoint"].astype(str))
    if rows.duplicated(["name", "column"]).any():
        raise ImmunoprofileError("effects_heatmap: several rows per population and contrast; "
                                 "pass reference= to choose one reference")
    names, columns = list(pd.unique(rows["name"])), list(pd.unique(rows["column"]))
    est, q = (rows.pivot(index="name", columns="column", values=v)
              .reindex(index=names, columns=columns).to_numpy(float) for v in ("estimate", "fdr"))
    fig, ax = figure(2.6 + 0.95 * len(columns) + 0.06 * max(map(len, names)),
                      1.5 + 0.42 * len(names))
    vmax = float(np.nanmax(np.abs(est))) if np.isfinite(est).any() else 1.0
    ax.set_facecolor("0.9")  # untested cells (NaN) show the background
    image = ax.imshow(np.ma.masked_invalid(est), cmap="RdBu_r", vmin=-vmax, vmax=vmax,
                      aspect="auto", interpolation="nearest")
    for (r, c), e in np.ndenumerate(est):
        if np.isfinite(e):
            sig = bool(q[r, c] < fdr)
            text = f"{e:+.2f}".replace("-0.00", "+0.00") + ("*" if sig else "")
            ax.text(c, r, text, ha="center", va="center", fontsize=7.5,
                    fontweight="bold" if sig else "normal", gid="significant" if sig else None,
                    color="white" if abs(e) > 0.6 * vmax else "0.1")
    ax.set_xticks(range(len(columns)), columns, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.tick_params(length=0)
    fig.colorbar(image, ax=ax, shrink=0.9, pad=0.02).set_label(_scale(rows), fontsize=8)
    suptitle(fig, f"{_what(rows, contrast_type)}\nrows: populations; columns: arm@visit; "
                   f"* FDR < {fdr:g}")
    return finish(fig, save, dpi)


# -- selection -------------------------------------------------------------------------------
def _select(table, population, template, column, what) -> tuple[pd.DataFrame, str]:
    """The rows of one population, and its ``template/population`` name."""
    if table is None or len(table) == 0:
        raise ImmunoprofileError(f"{what}: the table is empty (nothing to plot)")
    missing = [c for c in ("population", "patient_id", "arm", "timepoint", column)
               if c not in table.columns]
    if missing:
        raise ImmunoprofileError(f"{what}: the table lacks column(s) {', '.join(missing)}")
    pop, has_template = str(population), "template" in table.columns
    if template is None and "/" in pop and pop not in set(table["population"].astype(str)):
        template, pop = pop.split("/", 1)
    rows = table[table["population"].astype(str) == pop]
    if template is not None and has_template:
        rows = rows[rows["template"].astype(str) == str(template)]
    if rows.empty:
        where = "" if template is None else f" in template {template!r}"
        raise ImmunoprofileError(f"{what}: no population {population!r}{where} (the table has "
                                 f"{', '.join(sorted(set(_row_names(table, full=True))))})")
    found = sorted(set(rows["template"].astype(str))) if has_template else []
    if len(found) > 1:
        raise ImmunoprofileError(f"{what}: {pop!r} is in templates {', '.join(found)}; "
                                 "pass template=")
    return rows, f"{found[0]}/{pop}" if found else pop


def _finite(rows, column, log, name) -> pd.DataFrame:
    """Rows with a drawable value (positive on a log axis) in ``y``."""
    y = rows[column].astype(float)
    rows = rows.assign(y=y)[np.isfinite(y) & ((y > 0) if log else True)]
    if rows.empty:
        raise ImmunoprofileError(f"{name} has no finite {column!r} values to plot")
    return rows


def _contrast_rows(results, contrast_type, reference, what) -> pd.DataFrame:
    if results is None or len(results) == 0:
        raise ImmunoprofileError(f"{what}: the results table is empty (nothing to plot)")
    missing = [c for c in ("population", "contrast_type", "arm", "timepoint", "estimate",
                           "pvalue", "fdr") if c not in results.columns]
    if missing:
        raise ImmunoprofileError(f"{what}: the results lack column(s) {', '.join(missing)}")
    rows = results[results["contrast_type"] == contrast_type]
    if reference is not None and "reference" in rows.columns:
        rows = rows[rows["reference"].astype(str) == str(reference)]
    if what != "boxplots" and "complement_of" in rows.columns:
        # a complement is its sibling's test mirrored: drawn once, as the sibling
        rows = rows[rows["complement_of"].fillna("").astype(str) == ""]
    if rows.empty:
        kinds = sorted(set(results["contrast_type"].astype(str)) - {""})
        refs = sorted(set(results.get("reference", pd.Series(dtype=str)).astype(str)))
        raise ImmunoprofileError(
            f"{what}: no {contrast_type!r} rows with reference {reference!r} (the table has "
            f"contrasts {', '.join(kinds) or 'none'}; references {', '.join(refs) or 'none'})")
    return rows


def _q_values(results, rows, contrast_type, value) -> tuple[dict, pd.DataFrame]:
    """``{(arm, visit): (annotation, font weight)}`` and the contrast rows they come from."""
    ref = value.removeprefix("pct_of_") if value.startswith("pct_of_") else "parent"
    table = _contrast_rows(results, contrast_type, ref, "boxplots")
    table = table[table["population"].astype(str) == str(rows["population"].iloc[0])]
    if "template" in rows.columns and "template" in table.columns:
        table = table[table["template"].astype(str) == str(rows["template"].iloc[0])]
    if "marker" in table.columns:
        table = table[table["marker"].astype(str) == value.removeprefix("mfi_median_")]
    if table.empty:
        raise ImmunoprofileError(f"boxplots: results have no {contrast_type} row for "
                                 f"{_row_names(rows.iloc[:1], full=True).iloc[0]}")
    out: dict = {}
    for r in table.itertuples(index=False):
        q, key = float(r.fdr), (str(r.arm), str(r.timepoint))
        text = "q=n/a" if q != q else f"q={q:.2g}" if q >= 0.001 else f"q={q:.0e}"
        stars = "***" if q < 0.001 else "**" if q < 0.01 else "*" if q < 0.05 else ""
        vs = f"vs {r.reference_arm}" if contrast_type == "change_vs_arm" else ""
        out[key] = ("\n".join(filter(None, [out.get(key, ("",))[0], vs, stars, text])),
                    "bold" if stars else "normal")
        if contrast_type in ("arm_vs_control", "change_vs_control") and r.reference_arm:
            out.setdefault((str(r.reference_arm), str(r.timepoint)), ("ref.", "normal"))
    return out, table


def _baseline(rows: pd.DataFrame) -> str:
    """The visit the fold changes are computed against (where all of them are 1)."""
    for tp, g in rows.groupby(rows["timepoint"].astype(str), sort=False):
        if np.allclose(g["y"], 1.0):
            return tp
    return "baseline"


# -- text ------------------------------------------------------------------------------------
def _row_names(rows, full: bool = False) -> pd.Series:
    """Population names; with the template when ``full`` or ambiguous; with the marker."""
    name = rows["population"].astype(str)
    if "template" in rows.columns and (full or rows.groupby("population")["template"]
                                       .nunique().gt(1).any()):
        name = rows["template"].astype(str) + "/" + name
    return name + " · " + rows["marker"].astype(str) if "marker" in rows.columns else name


def _vs(rows) -> np.ndarray:
    """`` vs REF`` for change_vs_arm (an arm may be paired with several), else nothing."""
    ref = rows.get("reference_arm", pd.Series("", index=rows.index)).fillna("").astype(str)
    return np.where(rows["contrast_type"] == "change_vs_arm", " vs " + ref, "")


def _scale(rows) -> str:
    models = " ".join(set(rows.get("model", pd.Series(dtype=str)).astype(str)))
    return ("log fold change of median MFI" if "lmm_log_mfi" in models
            else "Δ arcsinh(MFI/150)" if "lmm_asinh_mfi" in models else "log odds ratio")


def _what(rows, contrast_type) -> str:
    """E.g. ``"change vs control: log odds ratio of change from W0 vs SOC (counts vs parent)"``."""
    def one(col):
        vals = sorted(set(rows.get(col, pd.Series(dtype=str)).astype(str)) - {"", "nan"})
        return vals[0] if len(vals) == 1 else col.replace("_", " ")

    phrase = {"arm_vs_control": f"vs {one('reference_arm')}",
              "change_from_baseline": f"change from {one('baseline')}",
              "change_vs_control": f"of change from {one('baseline')} vs {one('reference_arm')}",
              "change_vs_arm": f"of change from {one('baseline')} vs the paired arm",
              }.get(contrast_type, "")
    refs = set(rows.get("reference", pd.Series(dtype=str)).astype(str))
    return (f"{contrast_type.replace('_', ' ')}: {_scale(rows)} {phrase}"
            + (f" (counts vs {refs.pop()})" if len(refs) == 1 else ""))


def _value_label(column: str, base: str) -> str:
    if column.startswith("pct_of_"):
        return f"% of {column.removeprefix('pct_of_')}"
    if column.startswith("mfi_median_"):
        return f"median {column.removeprefix('mfi_median_')} MFI"
    return {"pct_parent": "% of parent", "abs_per_ul": "cells/µL",
            "fold_change": f"fold change from {base} (log₂ axis)",
            "value": "value (the response measure)"}.get(column, column)


# -- drawing ---------------------------------------------------------------------------------
def _mean_ci(v: np.ndarray, log: bool) -> tuple[float, float, float]:
    """Mean and 95% t interval; on the log scale (geometric) for fold changes."""
    v = np.log(v) if log else v
    mean, sd = float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else np.nan
    half = 0.0 if sd == 0 else float(stats.t.ppf(0.975, v.size - 1) * sd / np.sqrt(v.size))
    back = np.exp if log else float
    return back(mean), back(mean - half), back(mean + half)


def _fold_axis(ax, lo: float, hi: float) -> None:
    """A log₂ fold-change axis with round fold ticks (0.5, 0.8, 1, 1.25, 2, ...)."""
    ax.set_yscale("log", base=2)
    pad = (hi / lo) ** 0.06
    lo, hi = lo / pad, hi * pad
    ax.set_ylim(lo, hi)
    ticks = [t for t in _FOLD_TICKS if lo <= t <= hi]
    ax.yaxis.set_major_locator(ticker.FixedLocator([*ticks[::max(1, len(ticks) // 7)], 1]))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.yaxis.set_minor_locator(ticker.NullLocator())


def _volcano_panel(ax, rows, fdr, label, xmax, ymax) -> None:
    ax.axvline(0, color="0.5", lw=0.8, zorder=1)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(5, symmetric=True))
    ax.set_xlim(-xmax, xmax)
    ax.set_ylim(0, ymax)
    if rows.empty:
        ax.text(0.5, 0.5, "not tested", transform=ax.transAxes, ha="center", color="0.5")
        return
    sig = rows["fdr"].astype(float).lt(fdr).to_numpy()
    up = rows["estimate"].astype(float).gt(0).to_numpy()
    ax.scatter(rows["estimate"], rows["y"], c=np.where(sig, np.where(up, UP, DOWN),
                                                        NOT_SIGNIFICANT),
               s=np.where(sig, 30, 16), lw=0, zorder=3)
    if sig.any():  # BH: significant are the p-values up to the largest significant one
        edge = rows[sig].sort_values("pvalue").iloc[-1]
        cut, side = -np.log10(float(edge["pvalue"])), -1 if edge["estimate"] > 0 else 1
        ax.axhline(cut, color="0.45", lw=0.8, ls="--", zorder=1)
        ax.text(0.97 * side * xmax, cut, f"FDR {fdr:g}", fontsize=6.5, color="0.4",
                va="bottom", ha="right" if side > 0 else "left")  # away from the point
    placed: list[tuple[float, float]] = []
    for r in rows[sig].sort_values("pvalue").head(label).itertuples(index=False):
        x, y = float(r.estimate) / xmax, float(r.y) / ymax  # panel fractions, for nudging
        while any(abs(y - py) < 0.07 and abs(x - px) < 0.5 for px, py in placed):
            y -= 0.07  # below a label already placed nearby
        placed.append((x, y))
        right = x < 0.4  # text right of the point unless it would run off the panel
        ax.annotate(r.name, (r.estimate, r.y), xytext=((x + (0.04 if right else -0.04)) * xmax,
                                                       y * ymax),
                    fontsize=7, ha="left" if right else "right", va="center", gid="label",
                    arrowprops=dict(arrowstyle="-", color="0.5", lw=0.5, shrinkA=0, shrinkB=2))
