"""Polygon and ellipse gates on transformed axes, decided without transforming most events.

A 2-D gate lives on transformed axes (logicle, arcsinh, …), so testing an event exactly needs
its compensated value (a linear solve) and the transform of it (logicle is an iterative
solve): that was most of a polygon's or ellipse's gating time. Instead, the gate's bounding box
is cut into a grid of cells, uniform on the transformed axes. A cell that no edge of the gate
crosses lies wholly inside or wholly outside it (decided once, by FlowUtils' own test on the
cell's centre, so the rule — winding count, inclusive edges — is the exact test's). The cell
edges are taken back to linear values with the transform's closed-form inverse, so an event
finds its cell by a binary search on its *linear* value, computed as one dot product with the
inverse spillover's column (:meth:`EventSpace.linear_weights`). Only events in a cell an edge
crosses, or nearer a cell edge than the error bound of that cheap value, are tested exactly
(returned as *unsure*); memberships equal the exact test's event for event.
"""

from __future__ import annotations

import numpy as np
from flowutils import gating as fu_gating
from numba import njit

from immunoprofile._pool import in_threads

#: Cells per axis: more cells leave fewer events on crossed cells, at a fixed cost per gate
#: (the search in :func:`_cell_of` is unrolled for exactly this many).
GRID = 256

OUT, IN, UNSURE = 0, 1, 2


def polygon_cells(vertices: np.ndarray, edges_x: np.ndarray, edges_y: np.ndarray) -> np.ndarray:
    """Per cell: :data:`IN`, :data:`OUT`, or :data:`UNSURE` where an edge crosses it.

    Parameters
    ----------
    vertices
        ``(k, 2)`` polygon vertices on the transformed axes (closed implicitly).
    edges_x, edges_y
        Cell boundaries on the transformed axes, increasing.

    Returns
    -------
    numpy.ndarray
        ``int8`` of shape ``(len(edges_x) - 1, len(edges_y) - 1)``.
    """
    cells = np.zeros((edges_x.size - 1, edges_y.size - 1), np.int8)
    _mark_crossed(np.ascontiguousarray(vertices, dtype=np.float64), edges_x, edges_y, cells)
    free = cells != UNSURE
    if free.any():
        ix, iy = np.nonzero(free)
        centres = np.column_stack([(edges_x[ix] + edges_x[ix + 1]) / 2,
                                   (edges_y[iy] + edges_y[iy + 1]) / 2])
        inside = fu_gating.points_in_polygon(np.asarray(vertices, dtype=np.float64), centres)
        cells[ix, iy] = np.where(inside, IN, OUT)
    return cells


def ellipse_cells(mean: np.ndarray, covariance: np.ndarray, distance_square: float,
                  edges_x: np.ndarray, edges_y: np.ndarray) -> np.ndarray:
    """As :func:`polygon_cells` for an ellipse (Mahalanobis distance² ≤ ``distance_square``):
    from the quadratic form's range over each cell, :data:`IN` when its largest value is
    below the boundary, :data:`OUT` when its smallest is above, :data:`UNSURE` otherwise (a
    margin of 1e-9 × ``distance_square`` absorbs FlowUtils' own rounding)."""
    inv = np.linalg.inv(np.asarray(covariance, dtype=np.float64))
    cells = np.zeros((edges_x.size - 1, edges_y.size - 1), np.int8)
    _mark_ellipse(np.asarray(mean, dtype=np.float64), np.ascontiguousarray(inv),
                  float(distance_square), edges_x, edges_y, cells)
    return cells


def _pad(lo: float, hi: float) -> float:
    # Cells are widened by this before the crossing tests: the exact test of an event near a
    # cell edge sees its transformed value, which may differ from the grid's in the last bits.
    return 1e-9 * max(abs(lo), abs(hi), 1.0)


@njit(cache=True)
def _segment_hits_box(x0: float, y0: float, x1: float, y1: float, bx0: float, bx1: float,
                      by0: float, by1: float) -> bool:
    # Liang-Barsky: clip the segment to the closed box; it hits when something is left.
    t0, t1 = 0.0, 1.0
    dx, dy = x1 - x0, y1 - y0
    for p, q in ((-dx, x0 - bx0), (dx, bx1 - x0), (-dy, y0 - by0), (dy, by1 - y0)):
        if p == 0.0:
            if q < 0.0:
                return False
        else:
            r = q / p
            if p < 0.0:
                if r > t1:
                    return False
                if r > t0:
                    t0 = r
            else:
                if r < t0:
                    return False
                if r < t1:
                    t1 = r
    return True


@njit(cache=True)
def _mark_crossed(vertices: np.ndarray, ex: np.ndarray, ey: np.ndarray,
                  cells: np.ndarray) -> None:
    nx, ny = ex.size - 1, ey.size - 1
    pad = 1e-9 * max(abs(ex[0]), abs(ex[nx]), abs(ey[0]), abs(ey[ny]), 1.0)
    k = vertices.shape[0]
    for e in range(k):
        x0, y0 = vertices[e, 0], vertices[e, 1]
        x1, y1 = vertices[(e + 1) % k, 0], vertices[(e + 1) % k, 1]
        # only the cells of the edge's own bounding box can be crossed by it
        i0 = max(np.searchsorted(ex, min(x0, x1) - pad) - 1, 0)
        i1 = min(np.searchsorted(ex, max(x0, x1) + pad), nx - 1)
        j0 = max(np.searchsorted(ey, min(y0, y1) - pad) - 1, 0)
        j1 = min(np.searchsorted(ey, max(y0, y1) + pad), ny - 1)
        for i in range(i0, i1 + 1):
            for j in range(j0, j1 + 1):
                if cells[i, j] != 2 and _segment_hits_box(
                        x0, y0, x1, y1, ex[i] - pad, ex[i + 1] + pad, ey[j] - pad,
                        ey[j + 1] + pad):
                    cells[i, j] = 2


@njit(cache=True)
def _quad(inv: np.ndarray, dx: float, dy: float) -> float:
    return inv[0, 0] * dx * dx + (inv[0, 1] + inv[1, 0]) * dx * dy + inv[1, 1] * dy * dy


@njit(cache=True)
def _min_on_segment(inv: np.ndarray, ax: float, ay: float, bx: float, by: float) -> float:
    # min over t in [0, 1] of Q(a + t (b - a)), Q positive definite
    dx, dy = bx - ax, by - ay
    qa = _quad(inv, dx, dy)
    lin = 2 * inv[0, 0] * ax * dx + (inv[0, 1] + inv[1, 0]) * (ax * dy + ay * dx) \
        + 2 * inv[1, 1] * ay * dy
    t = 0.0 if qa <= 0.0 else min(max(-lin / (2 * qa), 0.0), 1.0)
    return _quad(inv, ax + t * dx, ay + t * dy)


@njit(cache=True)
def _mark_ellipse(mean: np.ndarray, inv: np.ndarray, d2: float, ex: np.ndarray,
                  ey: np.ndarray, cells: np.ndarray) -> None:
    nx, ny = ex.size - 1, ey.size - 1
    pad = 1e-9 * max(abs(ex[0]), abs(ex[nx]), abs(ey[0]), abs(ey[ny]), 1.0)
    tol = 1e-9 * d2 + 1e-12
    for i in range(nx):
        x0, x1 = ex[i] - pad - mean[0], ex[i + 1] + pad - mean[0]
        for j in range(ny):
            y0, y1 = ey[j] - pad - mean[1], ey[j + 1] + pad - mean[1]
            top = max(_quad(inv, x0, y0), _quad(inv, x0, y1), _quad(inv, x1, y0),
                      _quad(inv, x1, y1))
            if x0 <= 0.0 <= x1 and y0 <= 0.0 <= y1:
                low = 0.0
            else:
                low = min(_min_on_segment(inv, x0, y0, x1, y0),
                          _min_on_segment(inv, x1, y0, x1, y1),
                          _min_on_segment(inv, x1, y1, x0, y1),
                          _min_on_segment(inv, x0, y1, x0, y0))
            if top < d2 - tol:
                cells[i, j] = 1
            elif low > d2 + tol:
                cells[i, j] = 0
            else:
                cells[i, j] = 2


# inline: a call per event and axis cost a fifth of the pass
@njit(cache=True, inline="always")
def _cell_of(x: float, edges: np.ndarray, margins: np.ndarray, inv_step: float,
             tol: float) -> int:
    """The cell holding ``x`` (-1 below the grid, ``n`` above), or -2 when ``x`` lies within
    its error margin of a cell edge, or is NaN. ``inv_step`` > 0: the edges are evenly
    spaced on the linear scale (a linear axis), 1 / their spacing, and ``tol`` (in cells)
    bounds every margin and the edges' distance from even spacing."""
    n = edges.size - 1
    if inv_step > 0.0:
        # A linear axis: the cell is a multiplication away, no table read.
        f = (x - edges[0]) * inv_step
        c = f if f > 0.0 else 0.0  # NaN lands on cell 0, and is caught below
        lo = int(c if c < n - 1.0 else n - 1.0)
        frac = f - lo
        cell = -2 if (frac <= tol) | (frac >= 1.0 - tol) | (x - x != 0.0) else lo
        cell = -1 if f < -tol else cell
        return n if f > n + tol else cell
    # Eight halvings, unrolled (n == GRID == 256), and selects instead of branches: events
    # fall on either side at random, so every data-dependent branch costs a misprediction,
    # several times the search itself.
    lo = 128 * (edges[128] <= x)
    lo += 64 * (edges[lo + 64] <= x)
    lo += 32 * (edges[lo + 32] <= x)
    lo += 16 * (edges[lo + 16] <= x)
    lo += 8 * (edges[lo + 8] <= x)
    lo += 4 * (edges[lo + 4] <= x)
    lo += 2 * (edges[lo + 2] <= x)
    lo += 1 * (edges[lo + 1] <= x)
    near = (x - edges[lo] <= margins[lo]) | (edges[lo + 1] - x <= margins[lo + 1]) \
        | (x - x != 0.0)  # NaN or ±inf: the exact path says
    cell = -2 if near else lo
    cell = -1 if x < edges[0] - margins[0] else cell
    return n if x > edges[n] + margins[n] else cell


def classify_events(events: np.ndarray, idx: np.ndarray, axes: list[tuple],
                    cells: list[np.ndarray]) -> np.ndarray:
    """:data:`IN`, :data:`OUT` or :data:`UNSURE` for the events ``idx`` of ``events``, for
    several gates at once (one read of each event's row serves them all).

    Parameters
    ----------
    events, idx
        The event matrix and the rows to classify.
    axes
        Per gate, ``(wx, edges_x, margins_x, wy, edges_y, margins_y)``: a weight per channel
        giving each axis's linear value from an event's row (float64 products), the cell
        edges on the linear scale and their margins (that value's error bound plus the
        transform's).
    cells
        Per gate, its cells (:func:`polygon_cells`, :func:`ellipse_cells`).

    Returns
    -------
    numpy.ndarray
        ``int8`` of shape ``(n_gates, idx.size)``. Runs on every core
        (:func:`~immunoprofile._pool.in_threads`).
    """
    g = len(axes)
    weights = np.array([[a[0], a[3]] for a in axes])  # (g, 2, p)
    edges = np.array([[a[1], a[4]] for a in axes])  # (g, 2, GRID + 1)
    margins = np.array([[a[2], a[5]] for a in axes])
    # An axis reading one channel (scatter, an uncompensated marker) reads just that column
    # (and its weight); a compensated one, the channels any compensated axis reads.
    cols = np.array([[int(np.flatnonzero(w)[0]) if np.count_nonzero(w) == 1 else -1
                      for w in pair] for pair in weights], dtype=np.int64).reshape(g, 2)
    single = np.where(cols >= 0, np.take_along_axis(
        weights, np.maximum(cols, 0)[..., None], axis=2)[..., 0], 0.0)
    dense = weights[cols < 0]
    used = np.flatnonzero(np.any(dense != 0, axis=0)) if dense.size else np.zeros(0, np.int64)
    out = np.empty((g, idx.size), np.int8)
    in_threads(_classify, idx.size, events, idx, cols, single, used,
               np.ascontiguousarray(weights[:, :, used]), edges, margins,
               *_even_spacing(edges, margins), np.ascontiguousarray(np.array(cells)), out)
    return out


def _even_spacing(edges: np.ndarray, margins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per gate and axis: 1 / the spacing of its linear cell edges when they are evenly
    spaced (a linear transform), else 0 (the search); and, in cells, a bound on every margin
    plus the edges' distance from exact even spacing (and the rounding of the division)."""
    first, last = edges[..., :1], edges[..., -1:]
    n = edges.shape[-1] - 1
    step = (last - first) / n
    even = first + step * np.arange(n + 1)
    off = np.abs(edges - even).max(axis=-1)
    with np.errstate(divide="ignore", over="ignore"):
        inverse = 1.0 / np.where(step[..., 0] > 0, step[..., 0], 1.0)
    # a spacing so small that its inverse overflows: the search
    uniform = (step[..., 0] > 0) & (off <= 1e-6 * step[..., 0]) & np.isfinite(inverse)
    inv = np.where(uniform, inverse, 0.0)
    tol = (margins.max(axis=-1) + off) * inv + 1e-9
    return inv, tol


#: Events whose axis values are computed together: each axis is then a loop over events,
#: which vectorises (a dot product per event is a chain of dependent additions).
_BATCH = 128


@njit(cache=True, nogil=True)
def _classify(start: int, stop: int, events: np.ndarray, idx: np.ndarray, cols: np.ndarray,
              single: np.ndarray, used: np.ndarray, weights: np.ndarray, edges: np.ndarray,
              margins: np.ndarray, inv_steps: np.ndarray, tols: np.ndarray, cells: np.ndarray,
              out: np.ndarray) -> None:
    # Per gate g: cols[g] the one column each axis reads (times single[g]) or -1 for a
    # compensated axis, whose weights[g, axis] are over the ``used`` columns;
    # edges/margins/inv_steps/tols[g, axis]; cells[g]; out[g].
    n_gates = weights.shape[0]
    p = used.size
    nx = edges.shape[2] - 1
    dense = False
    for g in range(n_gates):
        dense |= (cols[g, 0] < 0) | (cols[g, 1] < 0)
    rows = np.empty((p, _BATCH))
    val = np.empty((2, _BATCH))
    for first in range(start, stop, _BATCH):
        m = min(_BATCH, stop - first)
        if dense:  # the batch's rows widened and transposed once, for every gate
            for t in range(m):
                row = idx[first + t]
                for j in range(p):
                    rows[j, t] = events[row, used[j]]
        for g in range(n_gates):
            for ax in range(2):
                c = cols[g, ax]
                if c >= 0:
                    w = single[g, ax]
                    for t in range(m):
                        val[ax, t] = np.float64(events[idx[first + t], c]) * w
                else:
                    for t in range(m):
                        val[ax, t] = 0.0
                    for j in range(p):
                        w = weights[g, ax, j]
                        if w != 0.0:
                            for t in range(m):
                                val[ax, t] += rows[j, t] * w
            ex, ey, mx, my = edges[g, 0], edges[g, 1], margins[g, 0], margins[g, 1]
            sx, sy, tx, ty = inv_steps[g, 0], inv_steps[g, 1], tols[g, 0], tols[g, 1]
            for t in range(m):
                a, b = val[0, t], val[1, t]
                # Surely outside the gate's box: no search (most events of a small gate end
                # here); an infinite value is left to the exact path (compensation makes it
                # NaN).
                if ((a < ex[0] - mx[0]) | (a > ex[nx] + mx[nx]) | (b < ey[0] - my[0])
                        | (b > ey[nx] + my[nx])) & (a - a == 0.0) & (b - b == 0.0):
                    out[g, first + t] = 0
                    continue
                ka = _cell_of(a, ex, mx, sx, tx)
                kb = _cell_of(b, ey, my, sy, ty)
                inside = cells[g, min(max(ka, 0), nx - 1), min(max(kb, 0), nx - 1)]
                off = (ka < 0) | (ka >= nx) | (kb < 0) | (kb >= nx)
                state = 0 if off else inside
                out[g, first + t] = 2 if (ka == -2) | (kb == -2) else state
