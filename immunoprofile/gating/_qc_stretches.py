"""Acquisition QC: flagged windows into flagged stretches, with refitted edges (see :mod:`.qc`)."""

from __future__ import annotations

import itertools
import math

import numpy as np

_ALLOWANCE = 2.0  # CUSUM allowance (SD) for rate edges: a clog starts and ends at once
_CUSUM_LIMIT = 1.5  # SD the sum may fall below its peak before the search stops
_EDGE_REACH = 30  # windows an edge fit looks at on either side of a stretch's edge
_MAX_GAP = 2  # clean windows between two flagged stretches that are closed


def _blocks(flag: np.ndarray) -> list[tuple[int, int]]:
    edges = np.diff(np.concatenate([[0], flag.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def _close_gaps(flag: np.ndarray) -> np.ndarray:
    out = flag.copy()
    for (_, b), (a2, _) in itertools.pairwise(_blocks(flag)):
        if a2 - b <= _MAX_GAP:
            out[b:a2] = True
    return out


def stretches(flag: np.ndarray, strength: np.ndarray, k: float, z: np.ndarray, ok: np.ndarray,
               ramp: bool) -> np.ndarray:
    """Flagged windows → flagged stretches: gaps closed, lone windows under 1.5 k dropped (one
    window among hundreds of tests is chance; a real artefact lasts longer), edges refitted.

    Each edge is refitted on the evidence ``z`` (windows × trajectories) projected on the
    stretch's mean direction, standardised and centred on the unflagged windows: by a CUSUM
    (steps: rate) or by a ramp-or-step fit that may also trim clean windows a segment took in.
    """
    closed = _close_gaps(flag)
    for a, b in _blocks(closed):
        if flag[a:b].sum() < 2 and strength[a:b].max() < 1.5 * k:
            closed[a:b] = False
    out = closed.copy()
    blocks = _blocks(closed)
    for i, (a, b) in enumerate(blocks):
        direction = z[a:b][ok[a:b]].mean(axis=0) if ok[a:b].any() else np.zeros(z.shape[1])
        if not np.linalg.norm(direction) > 0:
            continue
        proj = z @ (direction / np.linalg.norm(direction))
        sd = 1.4826 * float(np.median(np.abs(np.diff(proj[ok])))) / math.sqrt(2)
        centre = float(np.median(proj[ok & ~closed])) if (ok & ~closed).any() else 0.0
        ev = np.where(ok, (proj - centre) / (sd if sd > 0 else 1.0), 0.0)
        prev = blocks[i - 1][1] if i else 0
        nxt = blocks[i + 1][0] if i + 1 < len(blocks) else len(flag)
        inner = min(b - a, _EDGE_REACH)
        for side in (-1, 1):  # outward to the left, then to the right
            if side < 0:
                sl = slice(max(prev, a - _EDGE_REACH), a + inner)
                x, o = ev[sl][::-1], ok[sl][::-1]
            else:
                sl = slice(b - inner, min(nxt, b + _EDGE_REACH))
                x, o = ev[sl], ok[sl]
            ext = _ramp_extent(x, o, inner) if ramp else _cusum_extent(x, inner)
            edge = a if side < 0 else b
            lo, hi = sorted((edge, edge + side * ext))
            out[lo:hi] = ext > 0
    return _close_gaps(out)


def _cusum_extent(x: np.ndarray, inner: int) -> int:
    """Windows beyond a stretch (``x`` outward, the first ``inner`` inside) to where the CUSUM
    of ``x - allowance`` peaks: the classical estimate of where a step change began."""
    total = best = 0.0
    reach = 0
    for j, value in enumerate(x[inner:]):
        total += value - _ALLOWANCE
        if total > best:
            best, reach = total, j + 1
        elif total < best - _CUSUM_LIMIT:
            break
    return reach


def _ramp_extent(x: np.ndarray, o: np.ndarray, inner: int) -> int:
    """Windows to add (or, negative, to trim) at a stretch's edge whose change may fade in.

    ``x`` is the evidence going outward (the first ``inner`` values inside the stretch), ``o``
    True where a window has evidence. Least squares of ``x = beta * h`` with ``h`` 1 up to
    ``r``, falling linearly to 0 at ``t`` and 0 beyond (a step when ``r = t - 1``); the stretch
    then ends at ``t``.
    """
    j, ox = np.arange(x.size), np.where(o, x, 0.0)
    best, best_t = 0.0, inner
    for t in range(1, x.size + 1):
        h = np.clip((t - j[None, :]) / (t - np.arange(t)[:, None]), 0.0, 1.0)
        num, den = h @ ox, (h * h) @ o.astype(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            score = np.where((num > 0) & (den > 0), num * num / den, 0.0)
        if score.max() > best:
            best, best_t = float(score.max()), t
    return best_t - inner
