"""Acquisition QC as FlowJo gates, so a workspace's counts start from the events the run kept.

QC removes events at the margins of the scatter channels and the events of flagged time
windows. In a FlowJo workspace that becomes two gates above the template's tree:

- ``QC margins``: a rectangle on the margin channels (raw values), each bound half-way
  between the last kept value and the first removed one;
- ``QC time``: a comb-shaped polygon on Time × a scatter channel whose teeth span the kept
  time stretches and whose spine lies below every event, so an event is inside exactly when
  its time is in a kept stretch.

Bounds fall half-way between event values, never on one, so inclusive or exclusive edges do
not matter. Each representation is checked against the QC mask it stands for; a mask it cannot
reproduce (time running backwards, a removed event inside the kept box) is reported, never
silently approximated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.path import Path as MplPath

from immunoprofile.flowjo._xml import GateNode

MARGINS = "QC margins"
TIME = "QC time"
QC_NODES = (MARGINS, TIME)


@dataclass
class QCGates:
    """The gates standing for one sample's QC mask and what they could not represent."""

    nodes: list[GateNode]
    problem: str = ""


def _between(kept: np.ndarray, other: np.ndarray, side: str) -> float | None:
    """A bound half-way between the kept values' extreme and the nearest value beyond it."""
    if side == "high":
        edge = kept.max()
        beyond = other[other > edge]
        return None if beyond.size == 0 else float((edge + beyond.min()) / 2)
    edge = kept.min()
    beyond = other[other < edge]
    return None if beyond.size == 0 else float((edge + beyond.max()) / 2)


def margin_gate(events: np.ndarray, channels: list[str], columns: list[str],
                failed: np.ndarray, finite: np.ndarray) -> tuple[GateNode, np.ndarray]:
    """The rectangle keeping what margin QC kept, and the events it keeps."""
    keep = ~failed & finite
    mins, maxs = [], []
    inside = finite.copy()
    for ch in channels:
        x = events[:, columns.index(ch)]
        lo = _between(x[keep], x[finite], "low") if keep.any() else None
        hi = _between(x[keep], x[finite], "high") if keep.any() else None
        mins.append(lo)
        maxs.append(hi)
        if lo is not None:
            inside &= x >= lo
        if hi is not None:
            inside &= x < hi
    return GateNode(MARGINS, (), "rectangle", dims=list(channels), mins=mins, maxs=maxs), inside


def time_gate(t: np.ndarray, y: np.ndarray, failed: np.ndarray, path: tuple[str, ...],
              time_name: str, y_name: str) -> tuple[GateNode, np.ndarray]:
    """The comb polygon keeping the events of kept time stretches, and the events it keeps."""
    finite = np.isfinite(t) & np.isfinite(y)
    tk = t[finite]
    kept = ~failed[finite]
    # runs of kept events in file order become [left, right] time stretches
    edges = np.flatnonzero(np.diff(np.r_[0, kept.astype(np.int8), 0]))
    starts, stops = edges[::2], edges[1::2] - 1
    lows, highs = [], []
    for a, b in zip(starts, stops):
        before = tk[:a][~kept[:a]]
        after = tk[b + 1:][~kept[b + 1:]]
        lo = tk[a] - 1.0 if before.size == 0 else (before[-1] + tk[a]) / 2
        hi = tk[b] + 1.0 if after.size == 0 else (tk[b] + after[0]) / 2
        lows.append(float(lo))
        highs.append(float(hi))
    ymin, ymax = float(np.min(y[finite])), float(np.max(y[finite]))
    span = max(ymax - ymin, 1.0)
    base, spine, top = ymin - 2 * span, ymin - span, ymax + span
    if not lows:  # nothing kept: a sliver below the data
        lows, highs, top = [float(tk.min()) - 2], [float(tk.min()) - 1], spine
    verts = [[lows[0], base], [highs[-1], base]]
    for i in range(len(lows) - 1, -1, -1):
        verts += [[highs[i], top], [lows[i], top]]
        if i:
            verts += [[lows[i], spine], [highs[i - 1], spine]]
    inside = np.zeros(t.size, bool)
    inside[finite] = MplPath(np.asarray(verts)).contains_points(
        np.column_stack([tk, y[finite]]))
    return GateNode(TIME, path, "polygon", dims=[time_name, y_name], vertices=verts), inside


def qc_gates(events: np.ndarray, columns: list[str], mask: np.ndarray,
             failed: dict[str, np.ndarray], margin_channels: list[str],
             time_channel: str | None, y_channel: str | None) -> QCGates:
    """The QC gates standing for a sample's QC mask.

    Parameters
    ----------
    events
        The file's raw values (events × channels).
    columns
        ``$PnN`` of each column.
    mask
        The events QC kept.
    failed
        Per check (``margin``, ``time``), the events it removed.
    margin_channels
        Channels margin QC looked at.
    time_channel, y_channel
        The Time channel and a scatter channel for the time gate's second axis.

    Returns
    -------
    QCGates
        The nodes (``QC margins`` then ``QC time`` under it) and, when together they do not
        keep exactly ``mask``, why.
    """
    finite = np.isfinite(events).all(axis=1)
    nodes: list[GateNode] = []
    inside = np.ones(mask.size, bool)
    path: tuple[str, ...] = ()
    margin_failed = failed.get("margin")
    if margin_failed is not None and margin_channels:
        node, kept = margin_gate(events, margin_channels, columns, margin_failed, finite)
        nodes.append(node)
        inside &= kept
        path = (MARGINS,)
    time_failed = failed.get("time")
    if time_failed is not None and time_failed.any() and time_channel and y_channel:
        t = events[:, columns.index(time_channel)]
        y = events[:, columns.index(y_channel)]
        node, kept = time_gate(t, y, time_failed, path, time_channel, y_channel)
        nodes.append(node)
        inside &= kept
    problem = ""
    differ = int((inside != (mask & finite)).sum())
    if differ:
        problem = (f"the QC gates keep {int(inside.sum())} events where QC kept "
                   f"{int((mask & finite).sum())} ({differ} differ: time not in acquisition "
                   "order or a removed event inside the kept ranges); this sample's counts "
                   "in FlowJo will differ from the run's")
    return QCGates(nodes, problem)
