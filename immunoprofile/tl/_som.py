"""The self-organising map's compiled loops, cached on disk across processes.

flowsom's own numba functions take the distance as a function argument (``distf=eucl``);
numba cannot cache a function whose signature holds another compiled function, so they
compiled again in every process (~2-3 s) and each compilation added an unused entry to a cache
beside the package. These loops fix the distance to Euclidean (FlowSOM's default and the only
one :func:`immunoprofile.tl.flowsom` uses) and follow FlowSOM's online SOM step for step, with
the same random draws, so the codes equal flowsom's ``SOMEstimator`` for the same seed
(``tests/test_cluster.py`` checks it).

Two threads can share the steps; they meet at every step through flags in shared memory,
read and written with LLVM's atomic loads and stores (numba has no CPU atomics; the
intrinsics below name no address, so numba still caches the loops on disk). They live in this
file because numba checks only a cached function's own file for changes.
"""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from immunoprofile._pool import in_threads

_AHEAD = 256  # events fetched ahead while training

#: POSIX's sched_yield and clock_gettime (with a 64-bit timespec); Windows has neither by
#: those names, and there the loops train in one thread (:func:`train_codes`), the calls left
#: out.
CAN_YIELD = sys.platform != "win32" and sys.maxsize > 2**32
_CLOCK = getattr(time, "CLOCK_MONOTONIC", 1)


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

    With ``threads=2`` (at least two grid rows; not on Windows) two threads share every step:
    each holds every other row of the grid, finds its own nearest code and moves its own
    codes, and they trade nearest codes at each step. Each code sees the same operations as
    with one thread, so the codes are equal too. When a thread spends over a quarter of its
    time waiting for the other in three windows of 32,768 steps running (the cores are busy
    with other work, and each wait lasts until the other thread is scheduled again), the
    second stops and the first finishes alone, holding both halves.
    """
    _train(data, codes, xdim, ydim, alpha_start, alpha_end, radius_start, radius_end, rlen,
           seed, threads)
    return codes


def _train(data: np.ndarray, codes: np.ndarray, xdim: int, ydim: int, alpha_start: float,
           alpha_end: float, radius_start: float, radius_end: float, rlen: int, seed: int,
           threads: int, alone_at: int = -1) -> int:
    """:func:`train_codes`, returning the step before which the second thread stopped for
    the first to finish alone (-1: it never did, or one thread trained); ``alone_at`` asks
    for that at a given step (for tests)."""
    if codes.shape[0] != xdim * ydim:
        raise ValueError(f"{codes.shape[0]} codes for a {xdim} × {ydim} grid")
    if not np.isfinite(radius_start) or not 0 <= radius_start < 2**62:
        raise ValueError(f"radius_start must be a finite grid distance, not {radius_start}")
    parts = 2 if threads >= 2 and xdim >= 2 and CAN_YIELD else 1
    # each part's codes: its grid rows, marker × code
    rows_of = [np.arange(xdim * ydim).reshape(xdim, ydim)[p::parts].ravel()
               for p in range(parts)]
    held = [np.ascontiguousarray(codes[rows].T, dtype=np.float64) for rows in rows_of]
    if parts == 1:
        held.append(np.empty((codes.shape[1], 0)))
    flags = np.zeros(_SLOTS * _LINE, np.int64)
    roots = np.zeros((2, _LINE))
    args = (data, held[0], held[1], parts, xdim, ydim, alpha_start, alpha_end, radius_start,
            radius_end, rlen, seed, flags, roots, alone_at, _CLOCK)
    if parts == 1:
        _train_rows(0, *args)
    else:
        other = threading.Thread(target=_train_rows, args=(1, *args), daemon=True)
        other.start()  # before this thread's half: a thread that cannot start raises here
        _train_rows(0, *args)
        other.join()
    for rows, part in zip(rows_of, held):
        codes[rows] = part.T
    return int(flags[_STOPPED * _LINE]) - 1


#: Flag slots of the two threads' handshake, two cache lines (16 int64) each: the step each
#: has published its nearest code for, the step each has read the other's codes for, the
#: nearest code each published (two steps' worth, as one may be a step ahead), the request
#: that the first finish alone, and the step before which the second stopped (plus one).
_LINE = 16
_SLOTS = 8
_STEP, _READ, _NEAREST, _ALONE, _STOPPED = 0, 2, 4, 6, 7
#: Checks of a flag before a waiting thread gives its core away (~1-2 µs of spinning; the
#: other thread is normally at most a step, ~0.1 µs, behind).
_SPINS = 2_000
#: Steps over which each thread compares its time waiting for the other with the time
#: elapsed (~20 ms when both run): over a quarter in ``_STRIKES`` windows running, the first
#: thread goes on alone (single such windows happen on an idle machine, when the system stops
#: a thread for a millisecond or two).
_WINDOW = 32_768
_STRIKES = 3


@njit(cache=True, nogil=True)
def _train_rows(p: int, data: np.ndarray, held0: np.ndarray, held1: np.ndarray, parts: int,
                xdim: int, ydim: int, alpha_start: float, alpha_end: float,
                radius_start: float, radius_end: float, rlen: int, seed: int,
                flags: np.ndarray, roots: np.ndarray, alone_at: int, clock: int) -> None:
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
    other_squared = np.empty(held1.shape[1] if p == 0 else 0)
    ahead = np.empty((_AHEAD, px))
    q = 1 - p
    shared = parts == 2  # two threads still meeting at every step
    waited = 0  # nanoseconds this window spent waiting for the other thread
    window = _now(clock) if shared else 0
    strikes = 0  # windows running that waited over a quarter of their time
    for k in range(niter):
        if shared and p == 1 and load_acquire(flags, _ALONE * _LINE) != 0:
            # every step before k is done and visible to the first thread
            store_release(flags, _STOPPED * _LINE, k + 1)
            return
        asked = k == alone_at and p == 0
        if shared and (asked or k % _WINDOW == _WINDOW - 1):
            now = _now(clock)
            strikes = strikes + 1 if 4 * waited > now - window else 0
            if asked or strikes == _STRIKES:
                store_release(flags, _ALONE * _LINE, 1)
            window, waited = now, 0
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
        root, nearest = _half_nearest(event, mine, squared, p, parts, ydim)
        if shared:
            roots[p, k % 2] = root  # two steps' slots: the other may still read the last one
            flags[(_NEAREST + p) * _LINE + k % 2] = nearest
            store_release(flags, (_STEP + p) * _LINE, k + 1)
            wait = _wait(flags, (_STEP + q) * _LINE, k + 1, p == 0, clock)
            if wait >= 0:
                nearest = first_of_two(root, nearest, roots[q, k % 2],
                                       flags[(_NEAREST + q) * _LINE + k % 2])
                waited += wait
            else:
                shared = False  # the second stopped before step k: this thread holds both
        if parts == 2 and not shared:
            other_root, other = _half_nearest(event, held1, other_squared, 1, parts, ydim)
            nearest = first_of_two(root, nearest, other_root, other)
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
            if shared:
                # neither moves its codes before both have read them (the second never
                # stops within a step)
                store_release(flags, (_READ + p) * _LINE, k + 1)
                waited += _wait(flags, (_READ + q) * _LINE, k + 1, False, clock)
        _move_rows(mine, event, p, parts, x0, x1, y0, width, ydim, alpha)
        if parts == 2 and not shared:
            _move_rows(held1, event, 1, parts, x0, x1, y0, width, ydim, alpha)
        threshold -= step


@njit(cache=True, nogil=True, inline="always")
def _half_nearest(event: np.ndarray, held: np.ndarray, squared: np.ndarray, p: int,
                  parts: int, ydim: int) -> tuple[float, int]:
    """The root distance and grid index of the nearest of part ``p``'s codes."""
    _squared_distances(event, held, squared)
    local = _first_nearest(squared)
    row = local // ydim
    return np.sqrt(squared[local]), (parts * row + p) * ydim + local - row * ydim


@njit(cache=True, nogil=True, inline="always")
def _move_rows(held: np.ndarray, event: np.ndarray, p: int, parts: int, x0: int, x1: int,
               y0: np.uint64, width: np.uint64, ydim: int, alpha: float) -> None:
    """Move part ``p``'s codes in grid rows ``x0..x1``, columns from ``y0`` (``width`` of
    them), towards the event by ``alpha``."""
    first = x0 + (p - x0) % parts  # this part's first row of the square
    lowest = np.uint64((first // parts) * ydim) + y0  # where it is held
    n_rows = (x1 - first) // parts + 1 if first <= x1 else 0
    for j in range(held.shape[0]):
        x = event[j]
        row = held[j]
        start = lowest
        for _ in range(n_rows):
            for cd in range(start, start + width):
                c = row[cd]
                row[cd] = c + (x - c) * alpha
            start += np.uint64(ydim)


@njit(cache=True, nogil=True)
def first_of_two(root_a: float, code_a: int, root_b: float, code_b: int) -> int:
    """Of two parts' nearest codes, the one FlowSOM's search over all codes picks: the
    smaller root distance, the lower code of equal ones; a part with none (NaN) loses, and
    with none anywhere code 0, as :func:`_first_nearest`."""
    if root_a == root_a and not root_b < root_a and (root_a < root_b or code_a < code_b
                                                     or root_b != root_b):
        return code_a
    return code_b if root_b == root_b else 0


@intrinsic
def load_acquire(typingctx, array, index):
    """``array[index]`` read atomically, ordered before every later read."""
    def codegen(context, builder, signature, args):
        ty = signature.args[0]
        view = context.make_array(ty)(context, builder, args[0])
        at = cgutils.get_item_pointer(context, builder, ty, view, [args[1]])
        return builder.load_atomic(at, ordering="acquire", align=ty.dtype.bitwidth // 8)
    return array.dtype(array, index), codegen


@intrinsic
def store_release(typingctx, array, index, value):
    """``array[index] = value`` atomically, after every earlier write is visible."""
    def codegen(context, builder, signature, args):
        ty, _, value_ty = signature.args
        view = context.make_array(ty)(context, builder, args[0])
        at = cgutils.get_item_pointer(context, builder, ty, view, [args[1]])
        stored = context.cast(builder, args[2], value_ty, ty.dtype)
        builder.store_atomic(stored, at, ordering="release", align=ty.dtype.bitwidth // 8)
        return context.get_dummy_value()
    return types.void(array, index, value), codegen


@intrinsic
def _sched_yield(typingctx):
    def codegen(context, builder, signature, args):
        if not CAN_YIELD:
            return context.get_constant(types.int32, 0)
        call = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield")
        return builder.call(call, [])
    return types.int32(), codegen


@intrinsic
def _clock_gettime(typingctx, clock):
    def codegen(context, builder, signature, args):
        word = ir.IntType(64)
        if not CAN_YIELD:
            return ir.Constant(word, 0)
        spec = cgutils.alloca_once(builder, ir.ArrayType(word, 2))  # struct timespec
        call = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(32), [ir.IntType(32), spec.type]),
            "clock_gettime")
        builder.call(call, [builder.trunc(args[0], ir.IntType(32)), spec])
        zero, one = ir.Constant(ir.IntType(32), 0), ir.Constant(ir.IntType(32), 1)
        seconds = builder.load(builder.gep(spec, [zero, zero]))
        nanoseconds = builder.load(builder.gep(spec, [zero, one]))
        return builder.add(builder.mul(seconds, ir.Constant(word, 1_000_000_000)), nanoseconds)
    return types.int64(clock), codegen


@njit(cache=True, nogil=True, inline="always")
def _now(clock: int) -> int:
    """Nanoseconds on ``clock`` (``time.CLOCK_MONOTONIC``)."""
    return _clock_gettime(clock)


@njit(cache=True, nogil=True, inline="always")
def _wait(flags: np.ndarray, slot: int, value: int, may_stop: bool, clock: int) -> int:
    """Wait until ``flags[slot] >= value`` (acquire: the other thread's step is visible) and
    return the nanoseconds waited beyond a short spin (0 when the spin sufficed, as it does
    unless the other thread is not running); -1 instead when ``may_stop`` and the second
    thread stopped before this step (``value`` is the step plus one, as its stop mark)."""
    spins = 0
    since = 0
    while load_acquire(flags, slot) < value:
        if may_stop and load_acquire(flags, _STOPPED * _LINE) == value:
            return -1
        spins += 1
        if spins == _SPINS:
            if since == 0:
                since = _now(clock)
            _sched_yield()
            spins = 0
    return _now(clock) - since if since else 0


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
