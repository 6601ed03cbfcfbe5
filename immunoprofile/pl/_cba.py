"""Standard curves of a cytometric bead array: one panel per analyte for one plate.

Reporter (median PE) against concentration on log axes. The zero standard and the blank sit at
a "0" tick left of the lowest standard. Standards are black dots (open red when their recovery
failed), the fitted curve is a line (dashed red when the curve was not accepted), the
quantification range is shaded, and samples are marked at the concentration they read in the
well; censored samples are drawn at the edges: below LLOQ at the "<LLOQ" column, above ULOQ
at the ">ULOQ" column. Built on an Agg canvas without ``pyplot`` (see ``pl._gating``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from immunoprofile.cba_fit import logistic
from immunoprofile.errors import ImmunoprofileError
from immunoprofile.pl._figures import save_png
from immunoprofile.run import CytokineRun

STANDARD, FAILED, SAMPLE, CENSORED = "black", "#d62728", "#1f77b4", "#ff7f0e"


def _tables(source: Any) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(curves, standards, cytokines) from a CBAResult, a mapping or a run folder."""
    if isinstance(source, Mapping):
        return source["curves"], source["standards"], source.get("cytokines", pd.DataFrame())
    if isinstance(source, str | Path):
        return CytokineRun(source).tables()
    return source.curves, source.standards, source.cytokines


def standard_curves(result_or_tables: Any, *, plate: str | None = None,
                    analytes: Sequence[str] | None = None, ncols: int = 4,
                    save: str | Path | None = None, dpi: int = 110) -> Figure:
    """Draw one plate's standard curves with its standards and samples.

    Parameters
    ----------
    result_or_tables
        A :class:`immunoprofile.cba.CBAResult`, a mapping with ``curves``, ``standards`` and
        (optionally) ``cytokines`` tables, or the folder of a ``cytokines`` run.
    plate
        Plate to draw; may be omitted when there is only one.
    analytes
        Analytes to draw (default: all, in bead order).
    ncols
        Panels per row.
    save, dpi
        Write a PNG here (atomically) at this resolution.

    Returns
    -------
    matplotlib.figure.Figure
    """
    curves, stds, cyto = _tables(result_or_tables)
    plates = list(dict.fromkeys(curves["plate"].astype(str)))
    if plate is None:
        if len(plates) != 1:
            raise ImmunoprofileError(f"several plates ({', '.join(plates)}): choose one "
                                     "with plate=")
        plate = plates[0]
    if str(plate) not in plates:
        raise ImmunoprofileError(f"no plate {plate!r}; plates: {', '.join(plates)}")
    plate = str(plate)
    cv = curves[curves["plate"].astype(str) == plate].set_index("analyte")
    st = stds[stds["plate"].astype(str) == plate]
    sm = (cyto[cyto["plate"].astype(str) == plate] if len(cyto) else pd.DataFrame(
        columns=["analyte", "reporter_median", "conc_pg_ml", "below_lloq", "above_uloq",
                 "dilution"]))
    names = list(analytes) if analytes is not None else list(cv.index)
    ncols = max(1, min(ncols, len(names)))
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(3.3 * ncols, 2.9 * nrows + 0.5))
    FigureCanvasAgg(fig)
    positive = st.loc[st["expected_pg_ml"] > 0, "expected_pg_ml"]
    lo = float(positive.min()) if len(positive) else 1.0
    hi = float(positive.max()) if len(positive) else 1e4
    x_zero, x_below, x_above = lo / 6, lo / 2.5, hi * 2.5
    for k, analyte in enumerate(names):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        _panel(ax, analyte, cv.loc[analyte] if analyte in cv.index else None,
               st[st["analyte"] == analyte], sm[sm["analyte"] == analyte],
               (x_zero, x_below, x_above, lo, hi), k == 0)
    fig.suptitle(f"Standard curves, plate {plate}: reporter vs concentration in the well",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0.04, 1, 0.96))
    if save is not None:
        save_png(fig, Path(save), dpi)
    return fig


def _panel(ax, analyte: str, curve: pd.Series | None, st: pd.DataFrame, sm: pd.DataFrame,
           xs: tuple[float, float, float, float, float], first: bool) -> None:
    x_zero, x_below, x_above, lo, hi = xs
    ok = curve is not None and curve.get("status") == "ok"
    if curve is not None and np.isfinite(curve.get("bottom", np.nan)):
        grid = np.geomspace(x_below / 1.5, x_above, 200)
        y = logistic(grid, curve["bottom"], curve["top"], curve["ec50"], curve["hill"],
                     curve["asymmetry"])
        colour = "0.25" if ok else FAILED
        ax.plot(grid, y, color=colour, lw=1.4, ls="-" if ok else "--", zorder=2)
        # The curve's value at 0 (its bottom), drawn at the "0" tick.
        ax.plot([x_zero / 1.3, x_zero * 1.3], [curve["bottom"]] * 2, color=colour, lw=1.4)
    if ok:
        ax.axvspan(curve["lloq_pg_ml"], curve["uloq_pg_ml"], color="#2ca02c", alpha=0.08)
    x = st["expected_pg_ml"].to_numpy(float)
    xp = np.where(x > 0, x, x_zero)
    acc = st["accepted"].astype(bool).to_numpy()
    ax.scatter(xp[acc], st["reporter_median"][acc], s=22, color=STANDARD, zorder=4)
    ax.scatter(xp[~acc], st["reporter_median"][~acc], s=30, facecolors="none",
               edgecolors=FAILED, zorder=4)
    if len(sm):
        dil = sm["dilution"].astype(float) if "dilution" in sm else 1.0
        well = sm["conc_pg_ml"].astype(float) / dil
        below, above = sm["below_lloq"].astype(bool), sm["above_uloq"].astype(bool)
        meas = well.notna()
        ax.scatter(well[meas], sm["reporter_median"][meas], s=14, marker="D",
                   color=SAMPLE, alpha=0.7, zorder=3)
        ax.scatter(np.full(int(below.sum()), x_below), sm["reporter_median"][below],
                   s=16, marker="<", color=CENSORED, alpha=0.7, zorder=3)
        ax.scatter(np.full(int(above.sum()), x_above), sm["reporter_median"][above],
                   s=16, marker=">", color=CENSORED, alpha=0.7, zorder=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = [x_zero, x_below, *[t for t in (10, 100, 1000, 10_000) if lo / 2 < t < hi * 2],
             x_above]
    ax.xaxis.set_major_locator(ticker.FixedLocator(ticks))
    ax.xaxis.set_major_formatter(ticker.FixedFormatter(
        ["0", "<LLOQ", *[f"{t:g}" for t in ticks[2:-1]], ">ULOQ"]))
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.tick_params(axis="x", labelsize=7, rotation=45)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlim(x_zero / 1.6, x_above * 1.6)
    if curve is None:
        title = f"{analyte}: no curve"
    elif ok:
        title = (f"{analyte}: {curve['fit_model']}, {curve['lloq_pg_ml']:g}–"
                 f"{curve['uloq_pg_ml']:g} pg/mL")
    else:
        title = f"{analyte}: curve FAILED"
    ax.set_title(title, fontsize=9, color="black" if ok else FAILED)
    ax.set_xlabel("pg/mL", fontsize=8)
    ax.set_ylabel("median PE", fontsize=8)
    if first:
        proxies = [Line2D([], [], ls="", marker="o", color=STANDARD, label="standard"),
                   Line2D([], [], ls="", marker="o", mfc="none", color=FAILED,
                          label="standard, recovery failed"),
                   Line2D([], [], ls="", marker="D", color=SAMPLE, label="sample, in range"),
                   Line2D([], [], ls="", marker="<", color=CENSORED,
                          label="sample < LLOQ / > ULOQ (censored)"),
                   Line2D([], [], color="0.25", label="accepted curve"),
                   Line2D([], [], color=FAILED, ls="--", label="curve not accepted")]
        ax.figure.legend(handles=proxies, loc="lower center", ncol=6, fontsize=7,
                         frameon=False)
