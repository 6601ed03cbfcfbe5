"""Gating plots: every gate of one sample drawn over its parent population.

One panel per gate (a quadrant group is one panel), in hierarchy order, in the template's
transformed coordinates: a 2-D density of a seeded subsample of the parent's events with the gate
outline, or for 1-D gates a histogram with the threshold and the shaded interval. Adaptive gates
show the template's default position dashed grey under the placed one; a placement that fell
back to the default is drawn red (orange when only one dimension fell back) and says why.

Figures are built on :class:`matplotlib.figure.Figure` with an Agg canvas rather than through
``pyplot``: no display is needed, pyplot's global backend and figure registry are left alone
(nothing leaks in batch use) and notebooks still render the returned figure.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import patheffects, ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from immunoprofile.errors import ImmunoprofileError, TemplateError
from immunoprofile.gating.engine import GatingResult
from immunoprofile.gating.events import EventSpace
from immunoprofile.io.fcs import FCSSample
from immunoprofile.pl._figures import save_png
from immunoprofile.template.model import (
    BooleanGate,
    EllipseGate,
    Gate,
    PolygonGate,
    Population,
    RectangleGate,
    Template,
)
from immunoprofile.template.yaml_io import load_template

APPLIED, DEFAULT, FALLBACK, PARTIAL = "black", "0.5", "#d62728", "#ff7f0e"
_CMAP = "viridis"
# A white halo keeps gate lines readable over both dense (yellow) and sparse (purple) regions.
_HALO = [patheffects.withStroke(linewidth=3.2, foreground="white")]
_SCATTER_BELOW = 2_000  # below this many events a density image is mostly empty pixels


def gating(
    result: GatingResult,
    sample: FCSSample | None = None,
    *,
    populations: Sequence[str] | None = None,
    max_events: int = 30_000,
    random_state: int = 0,
    ncols: int | None = None,
    save: str | Path | None = None,
    dpi: int = 110,
    seed: int | None = None,
) -> Figure:
    """Draw every gate of one gated sample over its parent population.

    Parameters
    ----------
    result
        What :func:`immunoprofile.gate_sample` returned for ``sample``.
    sample
        The sample that was gated (its events are drawn); default the one the result keeps
        (``result.prepared``), whose computed values are then reused.
    populations
        Population or quadrant-group names to draw (default: every measured, non-boolean
        gate); naming one quadrant draws its group's panel.
    max_events
        At most this many parent events per panel (a seeded random subsample).
    random_state
        Seed of the subsample, so the same call gives the same picture.
    ncols
        Panels per row (default: up to 4).
    save
        Write a PNG here (atomically: temporary file, then rename).
    dpi
        Resolution of the saved PNG.
    seed
        Former name of ``random_state`` (kept as an alias).

    Returns
    -------
    matplotlib.figure.Figure
        The figure (also when saved).

    Raises
    ------
    ImmunoprofileError
        ``sample`` is not the file ``result`` was gated on, or ``populations`` names an
        unknown population.
    """
    seed = random_state if seed is None else seed
    prepared = result.prepared
    if sample is None:
        if prepared is None:
            raise ImmunoprofileError(f"result {result.sample_id!r} keeps no sample: pass the "
                                     "sample it was gated on")
        sample = prepared.sample
    if sample.n_events != result.n_events:
        raise ImmunoprofileError(
            f"sample {Path(sample.path).name} has {sample.n_events} events but result "
            f"{result.sample_id!r} was gated on {result.n_events}: pass the sample it came from")
    template = result.template
    panels = _panels(result, populations)
    if prepared is not None and prepared.sample is sample:
        # the values gating computed, and the template as written (no YAML re-read)
        space, defaults = prepared.space, _same_version(prepared.template, template)
    else:
        space = EventSpace(sample, template, result.channels)
        defaults = _default_template(template)
    counts = result.counts.set_index("population")

    ncols = max(1, min(ncols or 4, len(panels) or 1))
    nrows = max(1, math.ceil(len(panels) / ncols))
    fig = Figure(figsize=(_PANEL_W * ncols, _PANEL_H * nrows + _TOP + _BOTTOM))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, gridspec_kw=_grid(fig, nrows, ncols))
    axes = axes.ravel()
    for ax, members in zip(axes, panels):
        _panel(ax, members, result, space, defaults, counts, max_events, seed)
    for ax in axes[len(panels):]:
        fig.delaxes(ax)  # so fig.axes is exactly one axes per panel
    height = fig.get_figheight()
    fig.suptitle(f"{result.sample_id}  ·  template {template.name} v{template.version}  ·  "
                 f"{result.n_events:,} events (≤ {max_events:,} drawn per panel)",
                 fontsize=11, fontweight="bold", y=1 - 0.12 / height, va="top")
    keys = [(APPLIED, "-", "gate as applied"), (DEFAULT, "--", "template default (adaptive)"),
            (FALLBACK, "-", "adaptive fell back"), (PARTIAL, "-", "partly fell back")]
    fig.legend(handles=[Line2D([], [], color=c, ls=ls, lw=1.5, label=t) for c, ls, t in keys],
               loc="lower center", bbox_to_anchor=(0.5, 0.04 / height), ncols=4, fontsize=8,
               frameon=False)
    if save is not None:
        save_png(fig, Path(save), dpi)
    return fig


# Fixed geometry in inches: the panels all have the same furniture (three title lines, one
# axis label each way); constrained layout would measure every text again at save time
# (~0.3 s of CPU for the Treg figure, saving 0.67 s → 0.39 s).
_PANEL_W, _PANEL_H, _TOP, _BOTTOM = 3.4, 3.3, 0.3, 0.35
_LEFT, _RIGHT, _GAP_W, _GAP_H, _LABELS = 0.7, 0.15, 0.75, 1.05, 0.45


def _grid(fig: Figure, nrows: int, ncols: int) -> dict[str, float]:
    """Subplot parameters leaving room for titles, tick labels and axis labels."""
    width, height = fig.get_size_inches()
    axes_w = (width - _LEFT - _RIGHT - (ncols - 1) * _GAP_W) / ncols
    axes_h = (height - _TOP - _BOTTOM - _LABELS - (nrows - 1) * _GAP_H - 0.65) / nrows
    return dict(left=_LEFT / width, right=1 - _RIGHT / width,
                bottom=(_BOTTOM + _LABELS) / height, top=1 - (_TOP + 0.65) / height,
                wspace=_GAP_W / axes_w, hspace=_GAP_H / axes_h)


def save_gating_plot(result: GatingResult, path: str | Path, **kwargs: Any) -> Path:
    """Draw one gated sample's gating plot to a PNG and free the figure (the batch's plotter).

    Parameters
    ----------
    result
        A gating result that keeps its prepared sample (as :func:`immunoprofile.gate_sample`
        returns it).
    path
        The PNG to write (atomically).
    **kwargs
        Passed to :func:`gating`.

    Returns
    -------
    pathlib.Path
        The PNG written.
    """
    fig = gating(result, save=path, **kwargs)
    fig.clear()  # free the artists now rather than at the next garbage collection
    return Path(path)


def save_gating_pngs(results: Iterable[tuple[GatingResult, FCSSample]], out_dir: str | Path,
                     **kwargs: Any) -> list[Path]:
    """Write one ``<sample_id>_<template>.png`` gating plot per (result, sample) pair.

    Parameters
    ----------
    results
        Pairs of a gating result and the sample it was gated on.
    out_dir
        Directory for the PNGs (created if missing).
    **kwargs
        Passed to :func:`gating` (``max_events``, ``seed``, ``dpi``, ...).

    Returns
    -------
    list of Path
        The PNGs written, in input order.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for result, sample in results:
        path = out / f"{result.sample_id}_{result.template.name}.png"
        fig = gating(result, sample, save=path, **kwargs)
        fig.clear()  # free the artists now rather than at the next garbage collection
        paths.append(path)
    return paths


# -- which panels ----------------------------------------------------------------------------
def _panels(result: GatingResult, wanted: Sequence[str] | None) -> list[list[Population]]:
    """Drawable gates in template order; each quadrant group is one list of its members."""
    template = result.template
    groups: dict[str, list[Population]] = {}
    panels: list[list[Population]] = []
    for pop in template.populations:
        if (isinstance(pop.gate, BooleanGate) or not pop.gate.dims
                or pop.name in result.not_measured or pop.name not in result.membership
                or any(m not in result.channels for d in pop.gate.dims for m in d.markers())):
            continue  # boolean, not measured, or passed through for lack of a marker
        if pop.group is None:
            panels.append([pop])
        elif pop.group in groups:
            groups[pop.group].append(pop)
        else:
            groups[pop.group] = [pop]
            panels.append(groups[pop.group])
    if wanted is None:
        return panels
    known = {p.group or p.name for p in template.populations} | set(template.population_names)
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise ImmunoprofileError(f"template {template.name} has no population {unknown} "
                                 f"(it has {', '.join(template.population_names)})")
    return [m for m in panels if m[0].group in wanted or any(p.name in wanted for p in m)]


def _default_template(applied: Template) -> Template | None:
    """The template as written (default gate positions), or None when it cannot be reread."""
    if not applied.source or not Path(applied.source).exists():
        return None
    try:
        t = load_template(applied.source)
    except TemplateError:
        return None
    return _same_version(t, applied)


def _same_version(written: Template, applied: Template) -> Template | None:
    # The file may have changed since gating; defaults from another version would mislead.
    return written if (written.name, written.version) == (applied.name, applied.version) \
        else None


# -- one panel -------------------------------------------------------------------------------
def _panel(ax, members: list[Population], result: GatingResult, space: EventSpace,
           defaults: Template | None, counts, max_events: int, seed: int) -> None:
    pop = members[0]
    gate = pop.gate
    dims = gate.dims[:2]
    record = result.gate_positions.get(pop.name, {})
    colour = (FALLBACK if record.get("fallback")
              else PARTIAL if (record.get("placed") or {}).get("partial_fallback") else APPLIED)
    muted = "0.25" if colour == APPLIED else colour  # notes in the gate's colour, or grey
    default = _default_gate(pop, defaults, space) if pop.adaptive else None
    if default is not None and record.get("fallback"):
        default = None  # it is the gate drawn in red

    idx = _parent_events(result, pop, space.sample.n_events)
    if idx.size > max_events:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_events, replace=False))
    notes = []
    if isinstance(gate, RectangleGate) and len(gate.dims) > 2:
        # Show the events the other dimensions let through, so the 2-D box is the population.
        for d, lo, hi in zip(gate.dims[2:], gate.mins[2:], gate.maxs[2:]):
            idx = idx[space.in_range(d, idx, lo, hi)]
            notes.append(f"pre-gated {_interval_text(d.marker, lo, hi)}")
    values = [space.values(d, idx) for d in dims]
    ok = np.all([np.isfinite(v) for v in values], axis=0)
    values = [v[ok] for v in values]

    gates = [m.gate for m in members] + ([] if default is None else list(default))
    limits = [_limits(v, [g.extent()[i] for g in gates if len(g.dims) > i],
                      soft=not isinstance(gate, RectangleGate))
              for i, v in enumerate(values)]
    if len(dims) == 1:
        _histogram(ax, values[0], limits[0])
    else:
        _density(ax, values[0], values[1], limits)
    for i, d in enumerate(dims):
        label = _axis_label(d.marker, result.channels)
        (ax.set_xlabel if i == 0 else ax.set_ylabel)(label, fontsize=8)
        if limits[i][1] - limits[i][0] > 5_000:
            fmt = ticker.FuncFormatter(lambda v, _: f"{v / 1000:g}k" if v else "0")
            (ax.xaxis if i == 0 else ax.yaxis).set_major_formatter(fmt)
    ax.tick_params(labelsize=7)
    # four intervals an axis, as FlowJo's thumbnails: matplotlib's default eight made a
    # tick, its label and their drawing the larger part of a batch's plotting time
    ax.locator_params(nbins=4)

    if pop.group is None:
        if default is not None:
            _draw_gate(ax, default[0], DEFAULT, "--", 1.2, shade=False)
        _draw_gate(ax, gate, colour, "-", 1.6, shade=len(dims) == 1)
        title = f"{pop.name}\n{_count_text(counts, pop.name)}"
    else:
        if default is not None:
            _draw_dividers(ax, default, DEFAULT, "--", 1.2)
        _draw_dividers(ax, [m.gate for m in members], colour, "-", 1.6)
        for m in members:
            _quadrant_label(ax, m, counts)
        title = f"{pop.group}\n({len(members)} quadrants of {pop.parent})"
    if pop.parent is None and counts.loc[pop.name, "parent_count"] != result.n_events:
        notes.append("gated within an event mask; all events shown")
    if getattr(gate, "complement", False):
        notes.append("complement: events outside the outline")
    partial = (record.get("placed") or {}).get("partial_fallback")
    if record.get("fallback") or partial:
        notes.append(f"fallback: {record.get('reason')}" if record.get("fallback")
                     else f"partial fallback: {partial}")
    if notes:
        text = "\n".join(textwrap.fill(n, 44) for n in notes)
        ax.text(0.02, 0.98, text, transform=ax.transAxes, fontsize=6.5, va="top", ha="left",
                color=muted, zorder=6,
                bbox=dict(boxstyle="round,pad=0.25", fc="white", ec="none", alpha=0.85))
    pad = 4.0
    if record:
        # Where the adaptive gate landed, as a subtitle line above the frame, where it hides
        # no events; the title is lifted to make room.
        ax.annotate(_placement_text(record, default), xy=(0.5, 1.0), xycoords="axes fraction",
                    xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                    fontsize=6.5, color=muted)
        pad = 12.0
    # an explicit y skips matplotlib's search for overlapping top ticks (none here): a
    # fifth of the drawing time
    ax.set_title(title, fontsize=9, pad=pad, y=1.0)


def _parent_events(result: GatingResult, pop: Population, n: int) -> np.ndarray:
    if pop.parent is not None:
        return np.flatnonzero(result.membership[pop.parent])
    # The engine does not keep the root event mask (e.g. QC); a result that carries one is
    # honoured, otherwise roots are drawn over every event of the file.
    mask = getattr(result, "event_mask", None)
    return np.arange(n) if mask is None else np.flatnonzero(mask)


def _default_gate(pop: Population, defaults: Template | None,
                  space: EventSpace) -> list[Gate] | None:
    """The template's default gate(s) of ``pop``'s panel, if drawable in the same axes."""
    if defaults is None or pop.name not in defaults:
        return None
    names = ([p for p in defaults.populations if p.group == pop.group] if pop.group
             else [defaults[pop.name]])
    gates = [p.gate for p in names]
    for g in gates:
        same = len(g.dims) == len(pop.gate.dims) and all(
            a.marker == b.marker
            and defaults.transform_for(a).for_channel(space.range_top(b)) == space.transform(b)
            for a, b in zip(g.dims, pop.gate.dims))
        if not same:
            return None  # other axes or transform: the outline would be misplaced
    return gates


# -- drawing ---------------------------------------------------------------------------------
def _limits(v: np.ndarray, extents: list[tuple[float, float]],
            soft: bool = False) -> tuple[float, float]:
    """Axis range: the bulk of the data, widened to show the gate's finite edges.

    A threshold is the gate, so it is always shown. A polygon's far corners (one closed at
    CD25 = 10) would squeeze the data into a corner, so with ``soft`` the range widens by at
    most a third of the data's span and the outline runs off the edge.
    """
    lo, hi = (np.percentile(v, [0.5, 99.5]) if v.size else (0.0, 1.0))
    reach = (hi - lo or 1.0) / 3 if soft else np.inf
    for e in (e for pair in extents for e in pair if np.isfinite(e)):
        lo, hi = min(lo, max(e, lo - reach)), max(hi, min(e, hi + reach))
    pad = 0.05 * (hi - lo or 1.0)
    return float(lo - pad), float(hi + pad)


def _density(ax, x: np.ndarray, y: np.ndarray, limits: list[tuple[float, float]]) -> None:
    (x0, x1), (y0, y1) = limits
    bins = 140 if x.size > 20_000 else 100
    h, xe, ye = np.histogram2d(x, y, bins=bins, range=[[x0, x1], [y0, y1]])
    if x.size == 0:
        ax.text(0.5, 0.5, "no events", transform=ax.transAxes, ha="center", color="0.4")
    elif x.size < _SCATTER_BELOW:
        # Few events: dots coloured by local density read better than a sparse image.
        ix = np.clip(np.searchsorted(xe, x) - 1, 0, bins - 1)
        iy = np.clip(np.searchsorted(ye, y) - 1, 0, bins - 1)
        dens = h[ix, iy]
        order = np.argsort(dens)
        ax.scatter(x[order], y[order], c=dens[order], s=4, cmap=_CMAP, lw=0,
                   norm=LogNorm(vmin=1, vmax=max(2.0, float(dens.max()))), rasterized=True)
    elif h.max() > 0:
        ax.imshow(np.ma.masked_equal(h.T, 0), origin="lower", extent=(x0, x1, y0, y1),
                  aspect="auto", cmap=_CMAP, norm=LogNorm(vmin=1, vmax=max(2.0, h.max())),
                  interpolation="nearest")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)


def _histogram(ax, v: np.ndarray, limits: tuple[float, float]) -> None:
    h, edges = np.histogram(v, bins=80 if v.size > 2_000 else 40, range=limits)
    ax.stairs(h, edges, fill=True, color="#9ecae1", zorder=1)
    ax.stairs(h, edges, color="#3182bd", lw=0.8, zorder=2)
    ax.set_xlim(*limits)
    ax.set_ylim(0, max(1, h.max()) * 1.18)  # headroom for the labels along the top
    ax.set_ylabel("events", fontsize=8)
    if v.size == 0:
        ax.text(0.5, 0.5, "no events", transform=ax.transAxes, ha="center", color="0.4")


def _draw_gate(ax, gate: Gate, colour: str, ls: str, lw: float, *, shade: bool) -> None:
    (x0, x1) = ax.get_xlim()
    kw = dict(color=colour, ls=ls, lw=lw, zorder=5, path_effects=_HALO)
    if len(gate.dims) == 1 and isinstance(gate, RectangleGate):
        lo, hi = gate.mins[0], gate.maxs[0]
        for b in (lo, hi):
            if b is not None:
                ax.axvline(b, **kw)
        a, b = (x0 if lo is None else lo), (x1 if hi is None else hi)
        for s0, s1 in ([(x0, a), (b, x1)] if gate.complement else [(a, b)]) if shade else []:
            ax.axvspan(s0, s1, color=colour, alpha=0.1, zorder=0)
        return
    xy = _outline(gate, ax.get_xlim(), ax.get_ylim())
    if xy is not None:
        ax.plot(xy[:, 0], xy[:, 1], **kw)


def _draw_dividers(ax, gates: list[Gate], colour: str, ls: str, lw: float) -> None:
    """A quadrant group's divider lines, each once (its quadrants share them)."""
    kw = dict(color=colour, ls=ls, lw=lw, zorder=5, path_effects=_HALO)
    for i, line in enumerate((ax.axvline, ax.axhline)[:len(gates[0].dims)]):
        cuts = {b for g in gates if isinstance(g, RectangleGate)
                for b in (g.mins[i], g.maxs[i]) if b is not None}
        for cut in sorted(cuts):
            line(cut, **kw)


def _outline(gate: Gate, xlim: tuple[float, float],
             ylim: tuple[float, float]) -> np.ndarray | None:
    """A closed polyline of the gate's boundary in its first two dimensions."""
    if isinstance(gate, RectangleGate):
        # Open sides go beyond the view, so only the real edges are visible.
        far = [(xlim[0] - (xlim[1] - xlim[0]), xlim[1] + (xlim[1] - xlim[0])),
               (ylim[0] - (ylim[1] - ylim[0]), ylim[1] + (ylim[1] - ylim[0]))]
        (a, b), (c, d) = [(far[i][0] if lo is None else lo, far[i][1] if hi is None else hi)
                          for i, (lo, hi) in enumerate(zip(gate.mins[:2], gate.maxs[:2]))]
        return np.array([(a, c), (b, c), (b, d), (a, d), (a, c)], dtype=float)
    if isinstance(gate, PolygonGate) and len(gate.dims) == 2:
        v = np.asarray(gate.vertices, dtype=float)
        return np.vstack([v, v[:1]])
    if isinstance(gate, EllipseGate) and len(gate.dims) == 2:
        try:
            chol = np.linalg.cholesky(np.asarray(gate.covariance, dtype=float))
        except np.linalg.LinAlgError:
            return None  # not a real ellipse (GatingML allows that); membership still holds
        t = np.linspace(0, 2 * np.pi, 121)
        circle = np.vstack([np.cos(t), np.sin(t)]) * math.sqrt(gate.distance_square)
        return (np.asarray(gate.mean, dtype=float)[:, None] + chol @ circle).T
    return None


def _quadrant_label(ax, pop: Population, counts) -> None:
    high = [lo is not None for lo in getattr(pop.gate, "mins", ())]
    x = 0.97 if high[0] else 0.03
    y = (0.97 if high[1] else 0.03) if len(high) > 1 else 0.86
    text = f"{pop.name}\n{_count_text(counts, pop.name, of=False)}"
    ax.text(x, y, text, transform=ax.transAxes, fontsize=6.5, zorder=7,
            ha="right" if high[0] else "left", va="top" if y > 0.5 else "bottom",
            bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="0.6", alpha=0.85))


# -- text ------------------------------------------------------------------------------------
def _count_text(counts, name: str, of: bool = True) -> str:
    row = counts.loc[name]
    pct = row["pct_parent"]
    text = f"{int(row['count']):,} ({'–' if pct != pct else f'{pct:.1f}'}%"  # NaN: empty parent
    if not of:
        return text + ")"
    return text + (f" of {row['parent']})" if row["parent"] else " of events)")


def _axis_label(marker: str, channels: dict[str, str]) -> str:
    channel = channels.get(marker)
    return marker if channel in (None, marker) else f"{marker} [{channel}]"


def _interval_text(marker: str, lo: float | None, hi: float | None) -> str:
    return ("" if lo is None else f"{lo:.3g} ≤ ") + marker + ("" if hi is None else f" < {hi:.3g}")


def _placement_text(record: dict[str, Any], default: list[Gate] | None) -> str:
    """One line saying where the adaptive gate landed, for auditing at a glance."""
    method = record.get("method") or "adaptive"
    placed = record.get("placed") or {}
    if record.get("fallback"):
        return f"{method}: fell back to the template default"
    if method in ("valley", "reference"):
        return f"{method}: " + " · ".join(f"{m} at {cut:.2f}{_default_cut(default, m)}"
                                          for m, cut in placed.items() if m != "partial_fallback")
    if method == "align":
        return "align: " + ", ".join(f"{k.removeprefix('shift_')} {round(v, 2) + 0.0:+.2f}"
                                     for k, v in placed.items() if k.startswith("shift_"))
    if method == "mixture":
        return (f"mixture: {placed.get('components', '?')} comp., "
                f"{100 * placed.get('weight', float('nan')):.0f}% of events")
    if method == "singlets":
        return f"singlets: H/A {placed.get('ratio_low', 0):.2f}–{placed.get('ratio_high', 0):.2f}"
    if method == "tail":
        return "tail: " + " · ".join(f"{m} at {cut:.2f} ({placed.get(f'rule_{m}')})"
                                     for m, cut in placed.items()
                                     if isinstance(cut, float) and f"rule_{m}" in placed)
    if method == "relative":
        return f"relative to {placed.get('reference')}: " + " · ".join(
            f"{k[4:]} {'<' if k.startswith('max_') else '≥'} {v:.2f}"
            for k, v in placed.items() if k.startswith(("max_", "min_")))
    if method == "scatter":
        return (f"scatter: FSC peak {placed.get('landmark_x', float('nan')):.3g} "
                f"({100 * placed.get('fraction_x', float('nan')):.0f}% of range), "
                f"{100 * placed.get('weight', float('nan')):.0f}% of events")
    return str(method)


def _default_cut(default: list[Gate] | None, marker: str) -> str:
    cuts = [lo if lo is not None else hi for g in default or [] if isinstance(g, RectangleGate)
            for d, lo, hi in zip(g.dims, g.mins, g.maxs) if d.marker == marker]
    return f" (default {cuts[0]:.2f})" if cuts and cuts[0] is not None else ""
