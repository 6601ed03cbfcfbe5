"""The self-organising map's compiled loops, cached on disk across processes.

flowsom's own numba functions take the distance as a function argument (``distf=eucl``);
numba cannot cache a function whose signature holds another compiled function, so they
compiled again in every process (~2-3 s) and each compilation added an unused entry to a cache
beside the package. These loops fix the distance to Euclidean (FlowSOM's default and the only
one :func:`immunoprofile.tl.flowsom` uses) and follow FlowSOM's online SOM step for step, with
the same random draws, so the codes equal flowsom's ``SOMEstimator`` for the same seed
(``tests/test_cluster.py`` checks it).
"""

from __future__ import annotations

import threading

import numpy as np
from numba import njit

from immunoprofile._pool import in_threads
from immunoprofile.tl._handshake import store_release, wait_until

_AHEAD = 256  # events fetched ahead while training


def train_codes(data: np.ndarray, codes: np.ndarray, xdim: int, ydim: int, alpha_start: float,
                alpha_end: float, radius_start: float, radius_end: float, rlen: int,
                seed: int, threads: int = 1) -> np.ndarray:
    """Train ``codes`` in place on ``rlen`` passes of random events (Kohonen's online SOM).

    Each step draws one event, finds its nearest code (Euclidean) and moves every code
    within the current radius of it on the ``xdim × ydim`` grid towards the event by the
    current learning rate. Code ``x * ydim + y`` sits at grid point (x, y) and grid
    distances are Chebyshev's, as FlowSOM's ``nhbrdist``: the codes within a radius form a
    square of whole rows. Rate and radius fall linearly over the ``rlen × n`` steps from
    their start to their end values; the radius never falls below 0.5 (the winner alone).
    As FlowSOM, a pass whose total movement was under 1 sets the rate to its end value for
    the first step of the next pass.

    The codes are held transposed (marker × code) so that every step's distances and moves
    run over many codes at once in vector registers; each number is the same operation in
    the same order as FlowSOM's code-by-code loop, so the codes are equal, not close.

    With ``threads=2`` (and at least two grid rows) two threads share every step: each holds
    every other row of the grid, finds its own nearest code and moves its own codes, and
    they trade nearest codes at each step (:mod:`~immunoprofile.tl._handshake`). Each code
    sees the same operations as with one thread, so the codes are equal too.
    """
    if codes.shape[0] != xdim * ydim:
        raise ValueError(f"{codes.shape[0]} codes for a {xdim} × {ydim} grid")
    parts = 2 if threads >= 2 and xdim >= 2 else 1
    # each part's codes: its grid rows, marker × code
    rows_of = [np.arange(xdim * ydim).reshape(xdim, ydim)[p::parts].ravel()
               for p in range(parts)]
    held = [np.ascontiguousarray(codes[rows].T, dtype=np.float64) for rows in rows_of]
    if parts == 1:
        held.append(np.empty((codes.shape[1], 0)))
    flags = np.zeros(_SLOTS * _LINE, np.int64)
    roots = np.zeros((2, _LINE))
    args = (data, held[0], held[1], parts, xdim, ydim, alpha_start, alpha_end, radius_start,
            radius_end, rlen, seed, flags, roots)
    if parts == 1:
        _train_rows(0, *args)
    else:
        other = threading.Thread(target=_train_rows, args=(1, *args), daemon=True)
        other.start()  # before this thread's half: a thread that cannot start raises here
        _train_rows(0, *args)
        other.join()
    for rows, part in zip(rows_of, held):
        codes[rows] = part.T
    return codes


#: Flag slots of the two threads' handshake, two cache lines (16 int64) each: the step each
#: has published its nearest code for, the step each has read the other's codes for, and
#: the nearest code each published (two steps' worth, as one may be a step ahead).
_LINE = 16
_SLOTS = 6
_STEP, _READ, _NEAREST = 0, 2, 4


@njit(cache=True, nogil=True)
def _train_rows(p: int, data: np.ndarray, held0: np.ndarray, held1: np.ndarray, parts: int,
                xdim: int, ydim: int, alpha_start: float, alpha_end: float,
                radius_start: float, radius_end: float, rlen: int, seed: int,
                flags: np.ndarray, roots: np.ndarray) -> None:
    """Part ``p`` of ``parts`` (1 or 2) of :func:`train_codes`: the grid rows ``p``,
    ``p + parts``, … held in ``held0``/``held1`` (marker × code)."""
    np.random.seed(seed)  # noqa: NPY002 - numba's per-thread state: each part draws the same
    n, px = data.shape
    niter = rlen * n
    threshold = radius_start
    step = (radius_start - radius_end) / niter
    change = 1.0
    mine = held0 if p == 0 else held1
    squared = np.empty(mine.shape[1])
    ahead = np.empty((_AHEAD, px))
    q = 1 - p
    for k in range(niter):
        at = k
        if k % n == 0:
            if change < 1.0:
                at = niter
            change = 0.0
        slot = k % _AHEAD
        if slot == 0:
            # The next steps' events, drawn as FlowSOM draws them one step at a time, fetched
            # together: independent reads overlap, where one event per step waited on memory
            # (events picked at random from a million are rarely in cache).
            for s in range(min(_AHEAD, niter - k)):
                i = np.random.randint(n)  # noqa: NPY002
                for j in range(px):
                    ahead[s, j] = data[i, j]
        event = ahead[slot]
        _squared_distances(event, mine, squared)
        local = _first_nearest(squared)
        wx = local // ydim
        wy = local - wx * ydim
        wx = parts * wx + p  # the grid row of this part's row
        if parts == 2:
            nearest = _trade_nearest(p, k, np.sqrt(squared[local]), wx * ydim + wy, flags,
                                     roots)
            wx = nearest // ydim
            wy = nearest - wx * ydim
        if threshold < 1.0:
            threshold = 0.5
        alpha = alpha_start - (alpha_start - alpha_end) * at / niter
        # Chebyshev distances are whole numbers: within the radius <=> within its floor on
        # both axes. Unsigned indices spare every element numba's negative-index check.
        reach = int(threshold)
        x0 = max(wx - reach, 0)
        x1 = min(wx + reach, xdim - 1)
        y0 = np.uint64(max(wy - reach, 0))
        width = np.uint64(min(wy + reach, ydim - 1) + 1) - y0
        # The pass's total movement only decides "under 1": once it is reached no later
        # (non-negative) term can undo it, so it is summed, in FlowSOM's order, until then
        # (both parts alike, over both parts' codes, before either moves them).
        if change < 1.0:
            for gx in range(x0, x1 + 1):
                row_codes = held0 if gx % parts == 0 else held1
                start = np.uint64((gx // parts) * ydim) + y0
                for cd in range(start, start + width):
                    for j in range(px):
                        change += abs(event[j] - row_codes[j, cd])
                    if change >= 1.0:
                        break
                if change >= 1.0:
                    break
            if parts == 2:
                store_release(flags, (_READ + p) * _LINE, k + 1)
                wait_until(flags, (_READ + q) * _LINE, k + 1)
        # this part's rows of the square: from its first (held at row `lowest` of `mine`)
        first = x0 + (p - x0) % parts
        lowest = np.uint64((first // parts) * ydim) + y0
        n_rows = (x1 - first) // parts + 1 if first <= x1 else 0
        for j in range(px):
            x = event[j]
            row = mine[j]
            start = lowest
            for _ in range(n_rows):
                for cd in range(start, start + width):
                    c = row[cd]
                    row[cd] = c + (x - c) * alpha
                start += np.uint64(ydim)
        threshold -= step


@njit(cache=True, nogil=True, inline="always")
def _trade_nearest(p: int, k: int, root: float, nearest: int, flags: np.ndarray,
                   roots: np.ndarray) -> int:
    """Publish this part's nearest code of step ``k`` (its root distance and grid index),
    wait for the other's, and return the step's nearest code over both parts."""
    q = 1 - p
    roots[p, k % 2] = root  # two steps' slots: the other may still read the last one
    flags[(_NEAREST + p) * _LINE + k % 2] = nearest
    store_release(flags, (_STEP + p) * _LINE, k + 1)
    wait_until(flags, (_STEP + q) * _LINE, k + 1)
    theirs = flags[(_NEAREST + q) * _LINE + k % 2]
    return first_of_two(root, nearest, roots[q, k % 2], theirs)


@njit(cache=True, nogil=True)
def first_of_two(root_a: float, code_a: int, root_b: float, code_b: int) -> int:
    """Of two parts' nearest codes, the one FlowSOM's search over all codes picks: the
    smaller root distance, the lower code of equal ones; a part with none (NaN) loses, and
    with none anywhere code 0, as :func:`_first_nearest`."""
    if root_a == root_a and not root_b < root_a and (root_a < root_b or code_a < code_b
                                                     or root_b != root_b):
        return code_a
    return code_b if root_b == root_b else 0


@njit(cache=True, nogil=True, inline="always")
def _squared_distances(event: np.ndarray, by_marker: np.ndarray, out: np.ndarray) -> None:
    # Over all codes at once (vectorised), each code's sum in marker order as FlowSOM's
    # per-code loop adds it; four markers per pass over the codes, so the running sums are
    # loaded and stored a quarter as often (the same additions, in the same order).
    px, ncodes = by_marker.shape
    x = event[0]
    row = by_marker[0]
    for cd in range(ncodes):
        diff = x - row[cd]
        out[cd] = diff * diff
    j = 1
    while j + 4 <= px:
        xa, xb, xc, xd = event[j], event[j + 1], event[j + 2], event[j + 3]
        ra, rb, rc, rd = by_marker[j], by_marker[j + 1], by_marker[j + 2], by_marker[j + 3]
        for cd in range(ncodes):
            da = xa - ra[cd]
            db = xb - rb[cd]
            dc = xc - rc[cd]
            dd = xd - rd[cd]
            out[cd] = (((out[cd] + da * da) + db * db) + dc * dc) + dd * dd
        j += 4
    while j < px:
        x = event[j]
        row = by_marker[j]
        for cd in range(ncodes):
            diff = x - row[cd]
            out[cd] += diff * diff
        j += 1


@njit(cache=True, nogil=True, inline="always")
def _first_nearest(squared: np.ndarray) -> int:
    """The first code whose distance is the smallest, where FlowSOM compares the square
    roots (two squared distances one rounding step apart can share a root: the first wins)."""
    ncodes = squared.shape[0]
    # four independent running minima in registers: the exact minimum without one long
    # chain of compares; a NaN distance (a code gone NaN) is passed over, as FlowSOM's
    # compare does
    whole = ncodes - ncodes % 4
    m0 = m1 = m2 = m3 = np.inf
    for b in range(0, whole, 4):
        v = squared[b]
        m0 = v if v < m0 else m0
        v = squared[b + 1]
        m1 = v if v < m1 else m1
        v = squared[b + 2]
        m2 = v if v < m2 else m2
        v = squared[b + 3]
        m3 = v if v < m3 else m3
    best = min(min(m0, m1), min(m2, m3))
    for cd in range(whole, ncodes):
        if squared[cd] < best:
            best = squared[cd]
    root = np.sqrt(best)
    # a square root equal to the smallest one needs a square within two rounding steps of
    # it: the first such square (a vectorised search), then the first with an equal root
    near = best * (1.0 + 1e-15)
    first = ncodes
    for cd in range(ncodes):
        first = min(first, cd if squared[cd] <= near else ncodes)
    for cd in range(first, ncodes):
        if squared[cd] <= near and np.sqrt(squared[cd]) == root:
            return cd
    return 0  # no finite distance: events must be finite (marker_matrix refuses others)


def nearest_codes(data: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each event's nearest code (first of equals) and its Euclidean distance, on every core
    (:func:`~immunoprofile._pool.in_threads`: numba's OpenMP loops would kill a later fork)."""
    nodes = np.empty(data.shape[0], np.int64)
    dists = np.empty(data.shape[0])
    in_threads(_nearest, data.shape[0], data, codes, nodes, dists)
    return nodes, dists


@njit(cache=True, nogil=True)
def _nearest(start: int, stop: int, data: np.ndarray, codes: np.ndarray, nodes: np.ndarray,
             dists: np.ndarray) -> None:
    by_marker = np.ascontiguousarray(codes.T)
    squared = np.empty(codes.shape[0])
    event = np.empty(codes.shape[1], data.dtype)
    for i in range(start, stop):
        for j in range(event.shape[0]):
            event[j] = data[i, j]
        _squared_distances(event, by_marker, squared)
        best = _first_nearest(squared)
        nodes[i] = best
        dists[i] = np.sqrt(squared[best])
