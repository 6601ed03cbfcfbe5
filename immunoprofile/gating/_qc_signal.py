"""Acquisition QC, signal check: per-channel density-peak trajectories over time windows,
segments of constant level and the windows whose signal moved (see :mod:`.qc`)."""

from __future__ import annotations

import itertools

import numpy as np
from scipy import ndimage, stats
from scipy.signal import find_peaks

from immunoprofile.gating._qc_stretches import stretches

COFACTOR = 150.0
FULL_RANGE = 262144.0  # the 18-bit scale the conventional arcsinh cofactor 150 is meant for
MIN_WINDOWS = 10
_MIN_SIGNAL_SHIFT = 0.2  # arcsinh units (~20% of a bright signal; batch shifts are σ 0.08)
_MIN_LINEAR_SHIFT = 50.0  # ... and at least this on the 18-bit scale (a negative's SD is 60-150)
_MIN_BASIN = 0.10  # a density peak holding fewer events is merged into its neighbour
_MIN_IN_BASIN = 10  # events a window needs in a peak's basin for that peak's median
_LONG = 5  # windows a segment needs for one channel alone to flag it


def _basins(y: np.ndarray) -> np.ndarray:
    """Cut points between a channel's major density peaks (arcsinh units; empty if unimodal).

    A window median of a channel with two similar peaks jumps between them with the window's
    composition; the median within each peak's basin does not (PeacoQC tracks peaks for this).
    ``y`` holds the channel's finite values, thinned to about 50,000.
    """
    lo, hi = np.quantile(y, [0.001, 0.999]) if y.size >= 100 else (0.0, 0.0)
    if hi <= lo:
        return np.empty(0)
    hist, edges = np.histogram(y, bins=128, range=(lo, hi))
    dens = ndimage.gaussian_filter1d(hist.astype(float), 2.0)
    peaks = find_peaks(dens, prominence=0.05 * dens.max())[0]
    valleys = [a + int(np.argmin(dens[a:b])) for a, b in itertools.pairwise(peaks)]
    while valleys:  # merge small basins into a neighbour, across the shallower valley
        share = np.bincount(np.searchsorted(edges[np.array(valleys) + 1], y),
                            minlength=len(valleys) + 1) / y.size
        small = int(np.argmin(share))
        if share[small] >= _MIN_BASIN:
            break
        sides = [v for v in (small - 1, small) if 0 <= v < len(valleys)]
        valleys.pop(max(sides, key=lambda v: dens[valleys[v]]))
    return edges[np.array(valleys, dtype=int) + 1]


def _basin_spreads(y: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Robust SD (MAD × 1.4826, arcsinh units) of the events in each basin of ``_basins``.

    A shift matters for gating in proportion to the population's own width: a negative peak
    moving by a third of its width moves few events across any gate, however significant the
    move is over thousands of events (real files drift that much in a run).
    """
    which = np.searchsorted(cuts, y)
    out = np.zeros(cuts.size + 1)
    for b in range(cuts.size + 1):
        v = y[which == b]
        if v.size:
            out[b] = 1.4826 * float(np.median(np.abs(v - np.median(v))))
    return out


def _run_medians(s: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Medians of the runs ``s[lo:hi]`` of a sorted array, NaN for an empty run.

    Computed as pandas' groupby median (which this replaces) does: the middle value, or the
    float64 mean of the two middle ones, so window medians and trajectories are unchanged.
    """
    n = hi - lo
    a = s[np.maximum(lo + (n - 1) // 2, 0)].astype(np.float64)
    b = s[np.minimum(lo + n // 2, s.size - 1)].astype(np.float64)
    with np.errstate(invalid="ignore"):  # -inf and inf in one run: NaN, as pandas gives
        return np.where(n > 0, (a + b) / 2, np.nan)


def signal_evidence(events, idx, counts, min_events, k, tops, min_shift_sd):
    """Per-window medians, largest |z| and flags of the signal check (and a note if skipped)."""
    w_n, k_n = counts.size, len(idx)
    ok = counts >= min_events
    skip = not idx or ok.sum() < MIN_WINDOWS
    cuts: list[np.ndarray] = []
    spreads: list[np.ndarray] = []
    if not skip:
        # The cofactor follows the channel's range so files on a 0-1000 scale are treated alike.
        cof = COFACTOR * np.where(np.isfinite(tops), tops + 1, FULL_RANGE) / FULL_RANGE
        for j in range(k_n):
            x = events[:, idx[j]]
            x = x[np.isfinite(x)][:: max(1, x.size // 50_000)]  # finite x: finite arcsinh
            yj = np.arcsinh(x.astype(np.float64) / cof[j])
            cuts.append(_basins(yj))
            spreads.append(_basin_spreads(yj, cuts[-1]))
    # Windows are contiguous event ranges, so each window's medians come from sorting its small
    # block of the float32 matrix: no float64 copy of whole channels and no groupby (together
    # 3.5x the event matrix at the peak). NaNs sort last; they are skipped, as pandas did.
    starts = np.concatenate([[0], np.cumsum(counts)])
    med = np.full((w_n, k_n), np.nan)
    traj = [np.full((w_n, c.size + 1), np.nan) for c in cuts]
    size = [np.zeros((w_n, c.size + 1)) for c in cuts]
    for w in np.flatnonzero(counts) if idx else []:
        xs = np.sort(events[starts[w]:starts[w + 1], idx], axis=0)
        m = xs.shape[0]
        valid = m - np.count_nonzero(np.isnan(xs), axis=0)
        lo = np.arange(k_n) * m  # the channels' runs, end to end
        med[w] = _run_medians(xs.ravel(order="F"), lo, lo + valid)
        if skip:
            continue
        # Peak basins are ranges of arcsinh values, so in a sorted window each is one run.
        # arcsinh of sorted values is sorted (checked: re-sorted should rounding ever break it).
        y = np.arcsinh(xs.astype(np.float64) / cof)
        if not np.all((y[1:] >= y[:-1]) | np.isnan(y[1:])):
            y = np.sort(y, axis=0)
        for j, c in enumerate(cuts):
            edges = np.concatenate([[0], np.searchsorted(y[:valid[j], j], c, side="right"),
                                    [m]])  # NaNs count in the last basin's size, as before
            size[j][w] = np.diff(edges)
            traj[j][w] = _run_medians(y[:, j], edges[:-1], np.minimum(edges[1:], valid[j]))
    nothing = (med, np.full(w_n, np.nan), np.zeros(w_n, bool))
    if skip:
        return (*nothing, "signal QC skipped: " + ("no signal channels" if not idx
                                                   else "too few windows with enough events"))
    owner = [j for j, c in enumerate(cuts) for _ in range(c.size + 1)]
    y, n_in = np.hstack(traj), np.hstack(size)
    good = ok[:, None] & (n_in >= _MIN_IN_BASIN)
    # A median's sampling error is sigma / sqrt(n); sigma from neighbour differences, which a
    # slow drift or a single step barely affect. A basin holding a mix of populations (dead
    # cells and debris) has heavy-tailed medians: the 90th percentile of the differences keeps
    # their tails from passing for shifts (and equals the MAD estimate for Gaussian noise).
    sigma = np.zeros(y.shape[1])
    for j in range(y.shape[1]):
        pair = good[:-1, j] & good[1:, j]
        if good[:, j].sum() >= MIN_WINDOWS and pair.sum() >= 5:
            dn = np.abs(np.diff(y[:, j])[pair]) / np.sqrt(1 / n_in[:-1, j][pair]
                                                          + 1 / n_in[1:, j][pair])
            sigma[j] = max(1.4826 * np.median(dn), np.quantile(dn, 0.9) / 1.6449)
    # Each channel is judged by its brightest peak. Acquisition faults (a clog, a laser or
    # pressure drift) scale signals, so they move the positive peak at least as much as the
    # negative one; a negative peak moving alone is a change in background or in the mix of
    # cells under it (cells settle in the tube), which real files show and gates absorb.
    brightest = np.array([b == c.size for c in cuts for b in range(c.size + 1)])
    use = (sigma > 0) & brightest
    if not use.any():
        return (*nothing, "signal QC skipped: no channel varies")
    y, sigma, owner = np.where(good, y, 0.0)[:, use], sigma[use], np.array(owner)[use]
    width = np.hstack(spreads)[use]
    weight = np.where(good, n_in, 0.0)[:, use]
    # flowAI's idea: cut the run into segments of constant level. The reference is the level
    # shared (within _MIN_SIGNAL_SHIFT on every trajectory) by the most events, so neither a
    # drift over half the run nor a spurious cut in a clean stretch passes for the norm.
    bounds = [0, *_segment(y, weight, sigma, k), w_n]
    seg_w = np.array([weight[a:b].sum(axis=0) for a, b in itertools.pairwise(bounds)])
    level = (np.array([(weight[a:b] * y[a:b]).sum(axis=0) for a, b in itertools.pairwise(bounds)])
             / np.maximum(seg_w, 1e-300))
    both = (seg_w[:, None, :] > 0) & (seg_w[None, :, :] > 0)
    same = (np.where(both, np.abs(level[:, None] - level[None, :]), 0.0)
            <= _MIN_SIGNAL_SHIFT).all(axis=2)
    seg_n = np.array([counts[a:b][ok[a:b]].sum() for a, b in itertools.pairwise(bounds)])
    members = same[int(np.argmax(same @ seg_n))]
    ref_n = seg_w[members].sum(axis=0)
    ref = (seg_w[members] * level[members]).sum(axis=0) / np.maximum(ref_n, 1e-300)
    lin = cof[owner] / COFACTOR * _MIN_LINEAR_SHIFT

    def relevant(value: np.ndarray) -> np.ndarray:
        # |shift| in arcsinh units, 0 where it moves a dim population by less than
        # _MIN_LINEAR_SHIFT (arcsinh is linear near 0, where 0.1 is only 15 units).
        moved = np.abs(np.sinh(value) - np.sinh(ref)) * cof[owner]
        large = np.abs(value - ref) >= min_shift_sd * width
        return np.where((moved >= lin) & large, np.abs(value - ref), 0.0)

    # Acquisition artefacts move several detectors; one trajectory alone is more often a mixed
    # basin whose median flips for a window or two. So a segment is shifted when trajectories of
    # two channels (one, if it lasts _LONG windows) differ from the reference beyond k and by
    # _MIN_SIGNAL_SHIFT, or all of them together do (chi-square, each term capped at k²).
    flag = np.zeros(w_n, bool)
    chi2_limit = stats.chi2.isf(2 * stats.norm.sf(k), y.shape[1])  # as unlikely as |z| > k
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        if members[i]:
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.nan_to_num((level[i] - ref) / (sigma * np.sqrt(1 / seg_w[i] + 1 / ref_n)),
                              posinf=0.0, neginf=0.0)
        shift = np.where(seg_w[i] > 0, relevant(level[i]), 0.0)
        big = (np.abs(t) > k) & (shift > _MIN_SIGNAL_SHIFT)
        joint = (np.minimum(t**2, k**2).sum() > chi2_limit and shift.mean() > _MIN_SIGNAL_SHIFT / 2)
        flag[a:b] = np.unique(owner[big]).size >= (1 if b - a >= _LONG else 2) or joint
    dev = np.where(weight > 0, y - ref, 0.0)
    z = dev * np.sqrt(weight) / sigma
    big = (np.abs(z) > k) & (relevant(y) > _MIN_SIGNAL_SHIFT)  # spikes shorter than a segment
    flag |= np.array([np.unique(owner[row]).size >= 2 for row in big])
    top_z = np.where(ok, np.abs(z).max(axis=1), np.nan)
    return med, top_z, stretches(flag & ok, np.nan_to_num(top_z), k, z, ok, ramp=True), ""


def _segment(y: np.ndarray, weight: np.ndarray, sigma: np.ndarray, k: float) -> list[int]:
    """Binary segmentation of windows × trajectories into stretches of constant level.

    A stretch is split where the weighted means on either side differ most (sum over
    trajectories of squared two-sample z, each capped at k² so one trajectory cannot split
    alone) if that beats a chi-square limit Bonferroni-corrected over the windows tried.
    """
    n_w, n_k = y.shape
    limit = float(stats.chi2.isf(1e-4 / n_w, n_k))
    cs_wy = np.vstack([np.zeros(n_k), np.cumsum(weight * y, axis=0)])
    cs_w = np.vstack([np.zeros(n_k), np.cumsum(weight, axis=0)])
    cuts, todo = [], [(0, n_w)]
    while todo:
        a, b = todo.pop()
        t = np.arange(a + 2, b - 1)  # segments of at least two windows
        if t.size == 0:
            continue
        wl, wr = cs_w[t] - cs_w[a], cs_w[b] - cs_w[t]
        with np.errstate(divide="ignore", invalid="ignore"):
            stat = ((cs_wy[t] - cs_wy[a]) / wl - (cs_wy[b] - cs_wy[t]) / wr) ** 2 / (
                sigma**2 * (1 / wl + 1 / wr))
        stat = np.minimum(np.nan_to_num(stat, posinf=0.0), k**2).sum(axis=1)
        best = int(np.argmax(stat))
        if stat[best] > limit:
            cuts.append(int(t[best]))
            todo += [(a, int(t[best])), (int(t[best]), b)]
    return sorted(cuts)
