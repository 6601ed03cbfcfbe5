"""Figure helpers shared by the plotting modules: atomic PNG writing, constrained-layout
figures on their own canvas, wrapped titles, and arm colours and visit positions taken the
same way in every comparison plot."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from immunoprofile._atomic import atomic_write
from immunoprofile.errors import ImmunoprofileError

ARM_COLOURS = ["#ff7f0e", "#2ca02c", "#9467bd", "#7f7f7f", "#8c564b", "#e377c2", "#17becf",
               "#bcbd22", "#1f77b4", "#d62728"]


def save_png(fig: Figure, path: Path, dpi: int) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


def arm_colours(rows, wanted) -> tuple[list[str], dict[str, str]]:
    """Arms to draw, and each arm's colour from its place among all of the table's arms."""
    col = rows["arm"]
    present = set(col.astype(str))
    every = ([str(c) for c in col.cat.categories] if isinstance(col.dtype, pd.CategoricalDtype)
             else list(pd.unique(col.astype(str))))
    colours = {a: ARM_COLOURS[i % len(ARM_COLOURS)] for i, a in enumerate(every)}
    unknown = [a for a in wanted or () if str(a) not in present]
    if unknown:
        raise ImmunoprofileError(f"arms {unknown} are not in the table (arms: "
                                 f"{', '.join(a for a in every if a in present)})")
    return [a for a in every if a in present] if wanted is None else list(map(str, wanted)), colours


def visit_positions(rows) -> tuple[list[str], dict[str, float]]:
    """Visits in order and their x positions (weeks when the table has them)."""
    col = rows["timepoint"].astype(str)
    present = list(pd.unique(col))
    weeks = rows.groupby(col)["week"].median() if "week" in rows.columns else None
    if isinstance(rows["timepoint"].dtype, pd.CategoricalDtype):
        present = [str(c) for c in rows["timepoint"].cat.categories if str(c) in set(present)]
    elif weeks is not None:
        present.sort(key=lambda t: weeks[t])
    if weeks is not None and weeks.notna().all() and weeks.is_unique:
        return present, {t: float(weeks[t]) for t in present}
    return present, {t: float(i) for i, t in enumerate(present)}


def figure(width: float, height: float, nrows: int = 1, ncols: int = 1, **kw):
    """A constrained-layout figure on its own Agg canvas: (fig, ax) or (fig, [axes])."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw).ravel()
    return (fig, axes[0]) if nrows * ncols == 1 and not kw else (fig, list(axes))


def suptitle(fig: Figure, text: str, size: float = 10) -> None:
    """A figure title whose lines wrap at the figure's width rather than run off it."""
    chars = int(fig.get_figwidth() * 72 / (0.56 * size))
    fig.suptitle("\n".join(textwrap.fill(line, chars) for line in text.split("\n")),
                 fontsize=size)


def finish(fig: Figure, save, dpi: int) -> Figure:
    if save is not None:
        save_png(fig, Path(save), dpi)
    return fig
