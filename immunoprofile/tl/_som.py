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

import numpy as np
from numba import njit

from immunoprofile._pool import in_threads


@njit(cache=True, nogil=True)
def train_codes(data: np.ndarray, codes: np.ndarray, nhbrdist: np.ndarray, alpha_start: float,
                alpha_end: float, radius_start: float, radius_end: float, rlen: int,
                seed: int) -> np.ndarray:
    """Train ``codes`` in place on ``rlen`` passes of random events (Kohonen's online SOM).

    Each step draws one event, finds its nearest code (Euclidean) and moves every code
    within the current radius of it on the grid (``nhbrdist``) towards the event by the
    current learning rate. Rate and radius fall linearly over the ``rlen × n`` steps from
    their start to their end values; the radius never falls below 0.5 (the winner alone).
    As FlowSOM, a pass whose total movement was under 1 sets the rate to its end value for
    the first step of the next pass.
    """
    np.random.seed(seed)  # noqa: NPY002 - numba's per-thread state, as flowsom draws
    n, px = data.shape
    ncodes = codes.shape[0]
    niter = rlen * n
    threshold = radius_start
    step = (radius_start - radius_end) / niter
    change = 1.0
    dists = np.zeros(ncodes)
    for k in range(niter):
        at = k
        if k % n == 0:
            if change < 1.0:
                at = niter
            change = 0.0
        i = np.random.randint(n)  # noqa: NPY002
        nearest = 0
        for cd in range(ncodes):
            d = 0.0
            for j in range(px):
                diff = data[i, j] - codes[cd, j]
                d += diff * diff
            dists[cd] = np.sqrt(d)
            if dists[cd] < dists[nearest]:
                nearest = cd
        if threshold < 1.0:
            threshold = 0.5
        alpha = alpha_start - (alpha_start - alpha_end) * at / niter
        for cd in range(ncodes):
            if nhbrdist[cd, nearest] > threshold:
                continue
            for j in range(px):
                diff = data[i, j] - codes[cd, j]
                change += abs(diff)
                codes[cd, j] += diff * alpha
        threshold -= step
    return codes


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
    ncodes, px = codes.shape
    for i in range(start, stop):
        best = -1
        best_d = np.inf
        for cd in range(ncodes):
            d = 0.0
            for j in range(px):
                diff = data[i, j] - codes[cd, j]
                d += diff * diff
            d = np.sqrt(d)
            if d < best_d:
                best_d = d
                best = cd
        nodes[i] = best
        dists[i] = best_d
