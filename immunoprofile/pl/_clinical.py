"""Clinical and cytokine plots: trajectories per arm, and a heatmap of subset correlations.

Inputs are the clinical table (:func:`immunoprofile.clinical.read_clinical`), the cytokine
table (``cytokines.parquet``) and the correlations table of
:func:`immunoprofile.tl.correlations`. Arms keep the colours of :mod:`immunoprofile.pl._compare`;
figures are built without ``pyplot`` and ``save=`` writes a PNG atomically.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colors, ticker
from matplotlib.figure import Figure

from immunoprofile.clinical import UNITS
from immunoprofile.errors import ImmunoprofileError
from immunoprofile.pl._figures import arm_colours, figure, finish, suptitle, visit_positions

_LINEAR = frozenset({"sledai", "prednisone_mg", "pga", "bilag_new_a", "bilag_new_b"})


def _long(data: pd.DataFrame, variable: str) -> tuple[pd.DataFrame, str]:
    """(patient_id, arm, timepoint[, week], y, censored) of one variable, and its unit."""
    if "analyte" in data.columns and "conc_pg_ml" in data.columns:
        rows = data[data["analyte"].astype(str) == variable]
        if rows.empty:
            raise ImmunoprofileError(f"analyte {variable!r} is not in the cytokine table "
                                     f"(analytes: {', '.join(map(str, data['analyte'].unique()))})")
        low = rows.get("below_lloq", pd.Series(False, index=rows.index)).fillna(False)
        low = low.astype(bool) & rows.get("lloq", pd.Series(np.nan, index=rows.index)).gt(0)
        y = rows["conc_pg_ml"].astype(float).where(~low, rows.get("lloq") / 2)
        out = rows.assign(y=y.astype(float), censored=low.to_numpy())
        return out, "pg/mL"
    if variable not in data.columns:
        raise ImmunoprofileError(f"{variable!r} is not a column of the clinical table")
    out = data.assign(y=pd.to_numeric(data[variable], errors="coerce").astype(float),
                      censored=False)
    return out, UNITS.get(variable, "")


def clinical_trajectories(data: pd.DataFrame, variable: str, *,
                          arms: Iterable[str] | None = None, log: bool | None = None,
                          save: str | Path | None = None, dpi: int = 110) -> Figure:
    """One clinical index or cytokine over the visits, per arm.

    Parameters
    ----------
    data
        The clinical table (``variable`` is a column) or the cytokine table (``variable`` is
        an analyte); both need ``patient_id``, ``arm`` and ``timepoint``.
    variable
        What to draw (``"sledai"``, ``"anti_dsdna"``, ``"IL-10"`` …).
    arms
        Arms to draw, in this order (default: all).
    log
        Log axis (default: for positive concentrations, not for scores and doses).
    save, dpi
        Write a PNG here (atomically) at this resolution.

    Returns
    -------
    matplotlib.figure.Figure
        Faint lines per patient (``gid="patient"``); bold arm medians (``gid="median:<arm>"``)
        with the interquartile range shaded. Cytokine values below the LLOQ are drawn as open
        circles at LLOQ/2 (dotted line: the LLOQ) and counted there in the medians.
    """
    rows, unit = _long(data, variable)
    if "arm" not in rows.columns:
        raise ImmunoprofileError("the table has no arm column")
    order, colours = arm_colours(rows, list(arms) if arms is not None else None)
    tps, xpos = visit_positions(rows)
    rows = rows[rows["arm"].astype(str).isin(order) & rows["y"].notna()]
    rows = rows.assign(x=rows["timepoint"].astype(str).map(xpos))
    if log is None:
        log = variable not in _LINEAR and bool((rows["y"] > 0).all())
    fig, ax = figure(7.0, 4.6)
    for arm in order:
        g = rows[rows["arm"].astype(str) == arm]
        if g.empty:
            continue
        for _, p in g.sort_values("x").groupby("patient_id", sort=False):
            ax.plot(p["x"], p["y"], color=colours[arm], lw=0.8, alpha=0.3, gid="patient")
        cens = g[g["censored"]]
        if len(cens):
            ax.scatter(cens["x"], cens["y"], s=18, facecolors="none", edgecolors=colours[arm],
                       lw=0.8, zorder=3, gid="censored")
        stats = g["y"].groupby(g["x"]).quantile([0.25, 0.5, 0.75]).unstack()
        ax.fill_between(stats.index, stats[0.25], stats[0.75], color=colours[arm], alpha=0.15,
                        lw=0)
        ax.plot(stats.index, stats[0.5], color=colours[arm], lw=2.6, marker="o", ms=5,
                zorder=4, gid=f"median:{arm}", label=f"{arm} (n={g['patient_id'].nunique()})")
    lloqs = rows.loc[rows["censored"], "y"].unique() * 2
    if len(lloqs) == 1:
        ax.axhline(lloqs[0], color="0.5", lw=0.8, ls=":", gid="lloq")
        ax.annotate("LLOQ", (1.0, lloqs[0]), xycoords=("axes fraction", "data"), ha="right",
                    va="bottom", fontsize=7, color="0.4")
    if log:
        ax.set_yscale("log")
        plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_xticks([xpos[t] for t in tps], tps)
    ax.set_xlabel("visit")
    ax.set_ylabel(f"{variable} ({unit})" if unit else variable)
    ax.grid(axis="y", color="0.9", lw=0.6)
    ax.legend(frameon=False, fontsize=8, loc="best")
    note = " (open circles: < LLOQ, drawn and counted at LLOQ/2)" if rows["censored"].any() else ""
    suptitle(fig, f"{variable} per arm: patients (faint), median and interquartile range"
              f"{note}")
    return finish(fig, save, dpi)


def correlation_heatmap(correlations: pd.DataFrame, *, method: str = "rmcorr",
                        timepoint: str | None = None, kind: str | None = None,
                        variables: Iterable[str] | None = None, fdr: float = 0.05,
                        max_subsets: int = 30, save: str | Path | None = None,
                        dpi: int = 110) -> Figure:
    """Subsets × clinical indexes / cytokines, coloured by the correlation coefficient.

    Parameters
    ----------
    correlations
        The table of :func:`immunoprofile.tl.correlations`.
    method
        ``"rmcorr"`` (across visits) or ``"spearman"`` (one visit: ``timepoint``, default the
        first).
    timepoint
        Visit for Spearman.
    kind
        ``"clinical"`` or ``"cytokine"`` (default: both, clinical first).
    variables
        Columns to show, in this order (default: all).
    fdr
        Cells with an FDR below this get a star.
    max_subsets
        Rows kept: the subsets with the smallest FDR over the columns.
    save, dpi
        Write a PNG here (atomically) at this resolution.

    Returns
    -------
    matplotlib.figure.Figure
        The heatmap (``gid="correlations"``) with a colour bar from −1 to 1.
    """
    rows = correlations[correlations["method"] == method]
    if rows.empty:
        raise ImmunoprofileError(f"no {method} correlations in the table")
    if method == "spearman":
        visits = list(dict.fromkeys(rows["timepoint"].astype(str)))
        timepoint = visits[0] if timepoint is None else str(timepoint)
        if timepoint not in visits:
            raise ImmunoprofileError(f"no Spearman correlations at {timepoint!r} "
                                     f"(visits: {', '.join(visits)})")
        rows = rows[rows["timepoint"].astype(str) == timepoint]
    if kind is not None:
        rows = rows[rows["kind"] == kind]
    order = rows.sort_values("kind", kind="stable")["variable"].astype(str)
    columns = list(variables) if variables is not None else list(dict.fromkeys(order))
    rows = rows[rows["variable"].astype(str).isin(columns)]
    if rows.empty:
        raise ImmunoprofileError("nothing to draw: no correlations match")
    best = rows.groupby("subset")["fdr"].min().sort_values(kind="stable")
    keep = list(best.index[:max_subsets])
    r = rows.pivot_table(index="subset", columns="variable", values="r", aggfunc="first")
    q = rows.pivot_table(index="subset", columns="variable", values="fdr", aggfunc="first")
    columns = [c for c in columns if c in r.columns]
    r, q = r.reindex(index=keep, columns=columns), q.reindex(index=keep, columns=columns)
    fig, ax = figure(1.6 + 0.55 * len(columns), 1.6 + 0.28 * len(keep))
    image = ax.imshow(r.to_numpy(float), cmap="RdBu_r", norm=colors.Normalize(-1, 1),
                      aspect="auto", interpolation="nearest")
    image.set_gid("correlations")
    stars = np.argwhere(q.to_numpy(float) < fdr)
    for i, j in stars:
        ax.text(j, i, "*", ha="center", va="center", fontsize=10, fontweight="bold",
                color="white" if abs(r.iat[i, j]) > 0.6 else "black")
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(keep)), keep, fontsize=7)
    fig.colorbar(image, ax=ax, shrink=0.6, label="r")
    where = f" at {timepoint}" if method == "spearman" else " across visits (within patients)"
    suptitle(fig, f"{'Spearman' if method == 'spearman' else 'Repeated-measures'} correlation"
              f"{where}; * FDR < {fdr:g}", size=9)
    return finish(fig, save, dpi)
