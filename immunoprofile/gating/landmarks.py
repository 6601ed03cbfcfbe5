"""Landmarks of one sample's distributions: densities, peaks, valleys, tails, robust spreads.

Pure numpy/scipy functions on arrays of (transformed) values; :mod:`immunoprofile.gating.adaptive`
turns the landmarks into gate positions. A function that cannot find its landmark raises
:class:`NoLandmark` with the reason, which the caller records as the gate's fallback reason.

Definitions used throughout:

- *density*: a binned Gaussian kernel density (histogram smoothed by a Gaussian filter).
- *peak*: the highest point of the density (optionally inside a window).
- *robust SD*: ``1.4826 × MAD`` (the SD of a normal sample); the *half* version uses only the
  events on one side of a centre (``1.4826 × median |x − centre|``, the SD of a half-normal),
  for a peak whose other side carries a shoulder or a second population.
"""

from __future__ import annotations

import hashlib
import itertools
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter, gaussian_filter1d, maximum_filter
from scipy.signal import find_peaks

from immunoprofile._memo import RecentResults

# 1.4826 × MAD is the SD of normally distributed data.
MAD_TO_SD = 1.4826


class NoLandmark(Exception):
    """The data hold no such landmark; the message says why."""


def density(v: np.ndarray, lo: float, hi: float, bins: int = 512, adjust: float = 0.5,
            bandwidth: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A binned Gaussian KDE of ``v`` on ``[lo, hi]``.

    Parameters
    ----------
    v
        Finite values.
    lo, hi
        Range of the grid.
    bins
        Grid points.
    adjust
        Multiplier of Silverman's bandwidth (ignored when ``bandwidth`` is given).
    bandwidth
        Kernel SD in the units of ``v``.

    Returns
    -------
    tuple of numpy.ndarray
        Grid centres and (unnormalised) density.
    """
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centers = (edges[:-1] + edges[1:]) / 2
    if bandwidth is None:
        spread = min(np.std(v), np.subtract(*np.percentile(v, [75, 25])) / 1.34) or np.std(v)
        bandwidth = adjust * 0.9 * max(spread, 1e-9) * v.size ** -0.2
    sigma_bins = max(bandwidth / (edges[1] - edges[0]), 1.0)
    return centers, gaussian_filter1d(hist.astype(float), sigma_bins, mode="constant")


def find_valley(v: np.ndarray, window: tuple[float, float], *, min_events: int = 100,
                min_peak_fraction: float = 0.02) -> float:
    """The deepest density minimum inside ``window`` lying between two real peaks.

    Raises ``NoLandmark`` when there are too few events or no such valley (one peak).

    Parameters
    ----------
    v
        Values on one (transformed) axis; non-finite values are dropped.
    window
        ``(low, high)`` where the valley may lie; the density is estimated over all the data
        (0.5th to 99.5th percentile, widened to the window), so peaks may lie outside it.
    min_events
        Fewest finite values needed.
    min_peak_fraction
        A peak counts when its prominence is at least this fraction of the density's maximum.

    Returns
    -------
    float
        The valley's position: the lowest density point between two adjacent peaks.
    """
    v = v[np.isfinite(v)]
    if v.size < min_events:
        raise NoLandmark(f"{v.size} events, fewer than {min_events}")
    lo = min(np.percentile(v, 0.5), window[0])
    hi = max(np.percentile(v, 99.5), window[1])
    x, d = density(v, lo, hi)
    peaks, _ = find_peaks(d, prominence=d.max() * min_peak_fraction)
    if peaks.size < 2:
        raise NoLandmark("one peak: no valley to place the gate in")
    best: tuple[float, float] | None = None
    for a, b in itertools.pairwise(peaks):
        k = a + int(np.argmin(d[a:b + 1]))
        if window[0] <= x[k] <= window[1] and (best is None or d[k] < best[1]):
            best = (float(x[k]), float(d[k]))
    if best is None:
        raise NoLandmark(f"no valley between two peaks inside {list(window)}")
    return best[0]


def find_peak(v: np.ndarray, window: tuple[float, float], *, min_events: int = 50) -> float:
    """The highest density peak strictly inside ``window`` (not at its edge).

    Parameters
    ----------
    v
        Values on one (transformed) axis; only finite values inside ``window`` are used.
    window
        ``(low, high)`` range searched.
    min_events
        Fewest values inside the window needed.

    Returns
    -------
    float
        The peak's position.

    Raises
    ------
    NoLandmark
        Too few events, or the maximum is within three grid points (of 256) of an edge.
    """
    v = v[np.isfinite(v) & (v >= window[0]) & (v <= window[1])]
    if v.size < min_events:
        raise NoLandmark(f"{v.size} events in {list(window)}, fewer than {min_events}")
    x, d = density(v, window[0], window[1], bins=256, adjust=1.0)
    k = int(np.argmax(d))
    if k < 3 or k > d.size - 4:
        raise NoLandmark(f"the peak sits at the edge of {list(window)}")
    return float(x[k])


def mode(v: np.ndarray, window: tuple[float, float] | None = None) -> float:
    """The highest density peak of ``v`` (inside ``window`` when given).

    Unlike :func:`find_peak`, a peak at the window's edge is accepted: the caller asks for
    the location of a population known to be there, not for evidence that it exists.

    Parameters
    ----------
    v
        Values; non-finite values are dropped.
    window
        ``(low, high)``: only values inside it are used; all by default.

    Returns
    -------
    float
        Position of the density maximum (the median when the values barely vary).

    Raises
    ------
    NoLandmark
        Fewer than 3 values.
    """
    v = v[np.isfinite(v)]
    if window is not None:
        v = v[(v >= window[0]) & (v <= window[1])]
    if v.size < 3:
        raise NoLandmark(f"{v.size} events: no peak")
    lo, hi = np.percentile(v, [0.5, 99.5])
    if hi <= lo:
        return float(np.median(v))
    x, d = density(v, lo, hi, bins=256, adjust=1.0)
    return float(x[int(np.argmax(d))])


def robust_sd(v: np.ndarray, center: float | None = None, half: str | None = None) -> float:
    """Robust SD of ``v``: ``1.4826 × MAD`` around ``center`` (median by default).

    Parameters
    ----------
    v
        Values.
    center
        Centre of the deviations; the median when ``None``.
    half
        ``"low"`` or ``"high"``: use only the events on that side of ``center`` (the SD of a
        half-normal). A peak with a shoulder on one side is measured on its clean side.
    """
    v = v[np.isfinite(v)]
    c = float(np.median(v)) if center is None else float(center)
    if half == "low":
        v = v[v <= c]
    elif half == "high":
        v = v[v >= c]
    if v.size < 3:
        raise NoLandmark(f"{v.size} events on the {half or 'whole'} side: no spread")
    return MAD_TO_SD * float(np.median(np.abs(v - c)))


def locate(v: np.ndarray, window: tuple[float, float], *, stat: str = "peak",
           min_events: int = 50) -> float:
    """Where a population sits inside ``window``: its density peak, or its median.

    Parameters
    ----------
    v
        The population's values.
    window
        Only values inside it count.
    stat
        ``"peak"`` (:func:`find_peak`) or ``"median"``: steadier for a broad continuum (the
        conventional CD4 cells' CD25), where a peak wanders with the noise of the density.
    min_events
        Fewer values inside the window raise :class:`NoLandmark`.
    """
    if stat == "peak":
        return find_peak(v, window, min_events=min_events)
    if stat != "median":
        raise ValueError(f"stat is peak or median, not {stat!r}")
    v = v[np.isfinite(v) & (v >= window[0]) & (v <= window[1])]
    if v.size < min_events:
        raise NoLandmark(f"{v.size} events in {list(window)}, fewer than {min_events}")
    return float(np.median(v))

def relative_cut(v: np.ndarray, side: str, *, n_sd: float | None = None,
                 by: float | None = None, stat: str = "peak") -> tuple[float, float, float]:
    """A cut ``below`` or ``above`` a reference population's location.

    Parameters
    ----------
    v
        The reference population's values.
    side
        ``"below"`` (cut = location − step) or ``"above"`` (location + step).
    n_sd, by
        The step: ``n_sd`` robust SDs, or ``by`` in the units of ``v`` (wins when given).
    stat
        ``"peak"``: the location is the density peak and the SD that of the half away from
        the cut (the cells sought lie on the other half and would widen it). ``"median"``:
        the median and 1.4826·MAD of all values (the bulk of a spread population).

    Returns
    -------
    tuple of float
        (cut, location, robust SD).
    """
    if side not in ("below", "above"):
        raise ValueError(f"side must be below or above, not {side!r}")
    if stat not in ("peak", "median"):
        raise ValueError(f"stat must be peak or median, not {stat!r}")
    if n_sd is None and by is None:
        raise ValueError("give n_sd or by")
    if stat == "peak":
        loc = mode(v)
        sd = robust_sd(v, loc, half="high" if side == "below" else "low")
    else:
        loc, sd = float(np.median(v[np.isfinite(v)])), robust_sd(v)
    step = float(by) if by is not None else float(n_sd) * sd
    return (loc - step if side == "below" else loc + step), loc, sd


def _adjacent_valley(x: np.ndarray, d: np.ndarray, k: int, side: str,
                     window: tuple[float, float], depth: float) -> float | None:
    """The valley between peak ``k`` and the next real peak on ``side``, if it is a real dip
    (``d(valley) ≤ depth × d(that peak)``) inside ``window``."""
    peaks, _ = find_peaks(d, prominence=0.05 * d.max())
    others = peaks[peaks < k][::-1] if side == "low" else peaks[peaks > k]
    if not others.size:
        return None
    j = int(others[0])
    a, b = sorted((j, k))
    m = a + int(np.argmin(d[a:b + 1]))
    if d[m] > depth * d[j] or not window[0] <= x[m] <= window[1]:
        return None
    return float(x[m])


def tail_threshold(v: np.ndarray, side: str, *, window: tuple[float, float] | None = None,
                   peak_window: tuple[float, float] | None = None, rule: str = "slope",
                   tol: float = 0.05, n_sd: float = 2.5, prefer_valley: bool = True,
                   min_events: int = 100) -> dict[str, Any]:
    """Where one main peak ends on one side: a cut for a shoulder or a tail with no valley.

    Parameters
    ----------
    v
        Values (transformed scale).
    side
        ``"low"`` (the shoulder or tail lies below the peak: the cut is the peak's lower end)
        or ``"high"``.
    window
        Where the cut may land; outside it, :class:`NoLandmark`.
    peak_window
        Where to look for the main peak; the highest peak of all the data by default.
    rule
        ``"slope"``: moving from the peak towards ``side``, past its steepest flank, the first
        point where the density's slope has fallen to ``tol`` × its steepest value, or, if
        nearer, where the density becomes twice its mirror image across the peak (there the
        shoulder's own events outnumber the peak's, so a shoulder never drags the cut into
        itself). ``"mirror"``: only that second criterion. ``"sd"``: ``n_sd`` robust SDs
        from the peak, the SD measured on the peak's clean half (the side away from ``side``).
        ``"valley"``: only a real valley (see ``prefer_valley``).
    tol, n_sd
        Settings of the rules above.
    prefer_valley
        When the next real peak on ``side`` is separated from the main one by a real dip
        (density at most 75 % of that peak) inside ``window``, cut there (``rule: valley``).
    min_events
        Fewer finite values: :class:`NoLandmark`.

    Returns
    -------
    dict
        ``threshold``, ``peak``, ``sd`` (clean-half robust SD), ``rule`` (the rule that set
        the cut: ``valley``, ``slope``, ``mirror`` or ``sd``).
    """
    if side not in ("low", "high"):
        raise ValueError(f"side must be 'low' or 'high', not {side!r}")
    if rule not in ("slope", "mirror", "sd", "valley"):
        raise ValueError(f"rule must be slope, mirror, sd or valley, not {rule!r}")
    v = np.asarray(v, dtype=float)
    v = v[np.isfinite(v)]
    if v.size < min_events:
        raise NoLandmark(f"{v.size} events, fewer than {min_events}")
    lo, hi = np.percentile(v, [0.5, 99.5])
    if window is not None:
        lo, hi = min(lo, window[0]), max(hi, window[1])
    pad = 0.1 * (hi - lo)
    # The peak and any valley from a smooth density (Silverman's bandwidth): a rougher one
    # shows noise as peaks.
    x, d = density(v, lo - pad, hi + pad, adjust=1.0)
    inside = np.ones(x.size, bool) if peak_window is None else (
        (x >= peak_window[0]) & (x <= peak_window[1]))
    if not inside.any() or d[inside].max() <= 0:
        raise NoLandmark(f"no events to make a peak inside {list(peak_window or [])}")
    k = int(np.flatnonzero(inside)[np.argmax(d[inside])])
    peak = float(x[k])
    clean = "high" if side == "low" else "low"
    sd = robust_sd(v, peak, half=clean)
    if sd <= 0:
        raise NoLandmark("the main peak has no spread on its clean side")
    out: dict[str, Any] = {"peak": peak, "sd": sd}
    win = window or (-np.inf, np.inf)
    if prefer_valley or rule == "valley":
        cut = _adjacent_valley(x, d, k, side, win, depth=0.75)
        if cut is not None:
            return {**out, "threshold": cut, "rule": "valley"}
        if rule == "valley":
            raise NoLandmark(f"no valley next to the peak at {peak:.3g} inside {list(win)}")
    sign = -1.0 if side == "low" else 1.0
    if rule == "sd":
        t, used = peak + sign * n_sd * sd, "sd"
    else:
        t, used = _slope_end(v, peak, sd, sign, lo - pad, hi + pad, tol, rule == "mirror")
    if not win[0] <= t <= win[1]:
        raise NoLandmark(f"the peak at {peak:.3g} ends at {t:.3g} ({used}), outside "
                         f"{list(win)}")
    return {**out, "threshold": float(t), "rule": used}


def _slope_end(v: np.ndarray, peak: float, sd: float, sign: float, lo: float, hi: float,
               tol: float, mirror_only: bool) -> tuple[float, str]:
    """The slope/mirror end of a peak (see :func:`tail_threshold`); ``sign`` −1 walks down."""
    # A bandwidth tied to the peak's own width: the slope of a density is far noisier than
    # the density, and Silverman's bandwidth on a two-population sample is not the peak's.
    # The grid reaches 6 SDs past the peak on both sides: the walk must not meet its edge.
    lo, hi = min(lo, peak - 6 * sd), max(hi, peak + 6 * sd)
    x, d = density(v, lo, hi, bins=1024, bandwidth=0.3 * sd)
    k = int(np.argmin(np.abs(x - peak)))
    # Walk away from the peak: slope s > 0 means the density falls in the walking direction.
    order = np.arange(k, -1, -1) if sign < 0 else np.arange(k, x.size)
    xs, ds = x[order], d[order]
    dist = np.abs(xs - xs[0])
    s = -np.gradient(ds, dist)
    # Mirror image of the density across the peak (the clean side reflected).
    mirror = np.interp(peak - (xs - peak), x, d)
    shoulder = np.flatnonzero((dist > 0.5 * sd) & (ds >= 2 * mirror)
                              & (ds - mirror >= 0.02 * ds[0]))
    if mirror_only:
        if not shoulder.size:
            raise NoLandmark(f"no shoulder beside the peak at {peak:.3g}")
        return float(xs[shoulder[0]]), "mirror"
    flank = np.flatnonzero(dist <= 2.5 * sd)
    j = int(flank[np.argmax(s[flank])])  # the steepest point (inflection) of the flank
    after = np.flatnonzero((np.arange(xs.size) > j) & (s <= tol * s[j]))
    if not after.size and not shoulder.size:
        raise NoLandmark(f"the density beside the peak at {peak:.3g} never flattens")
    i_tol = int(after[0]) if after.size else xs.size
    i_sh = int(shoulder[0]) if shoulder.size else xs.size
    return float(xs[min(i_tol, i_sh)]), ("slope" if i_tol <= i_sh else "mirror")

_DIAGONAL_TOLERANCE = 0.15  # decades: candidates this close to the lowest diagonal compete
_DEBRIS_FSC = 0.15  # a candidate under this share of the largest candidate's FSC is debris


def scatter_landmark(log_fsc: np.ndarray, log_ssc: np.ndarray, *, step: float = 0.02,
                     smooth: float = 0.04, min_peak: float = 0.1) -> dict[str, Any]:
    """The lymphocyte cloud's peak on log FSC × log SSC.

    The candidates are the local maxima of the smoothed 2-D histogram at least ``min_peak``
    of the highest one, except those piled against the lowest FSC of the data (debris cut
    by the trigger threshold). The lymphocyte peak is, among the candidates lying lowest
    below the diagonal (within 0.15 decades of the smallest log SSC − log FSC), the one with
    the lowest SSC: lymphocytes are the least granular cells for their size; dead cells and
    granulocytes lie above them, and monocytes, which can lie as low, scatter more. Debris
    (under 0.15 of the largest candidate's FSC) is no candidate.
    A detector's gain multiplies all its values, which on log scale shifts every cloud by
    the same amount: the order, hence the choice, does not depend on the instrument.

    Parameters
    ----------
    log_fsc, log_ssc
        log10 of positive linear FSC-A and SSC-A of the same events.
    step, smooth
        Histogram bin width and Gaussian smoothing SD, in decades. Fixed in log units (not a
        fraction of the data's range) so that a file holding only the lymphocyte gate is not
        cut into noise peaks; 0.04 decades is below a lymphocyte cloud's spread (≈ 0.05 in
        FSC, 0.1 in SSC).
    min_peak
        Candidate peaks must reach this fraction of the highest.

    Returns
    -------
    dict
        ``peak`` (log10 FSC, log10 SSC), ``candidates`` (list of (log FSC, log SSC)).
    """
    if log_fsc.size < 50:
        raise NoLandmark(f"{log_fsc.size} events with positive scatter, too few")
    xr = np.percentile(log_fsc, [0.5, 99.5])
    yr = np.percentile(log_ssc, [0.5, 99.5])
    if xr[1] <= xr[0] or yr[1] <= yr[0]:
        raise NoLandmark("scatter values without spread")
    # At most 400 bins a side (4 decades at 0.01): a grid of FSC noise to saturation.
    nx, ny = (int(np.clip(np.ceil((r[1] - r[0]) / step), 8, 400)) for r in (xr, yr))
    hist, xe, ye = np.histogram2d(log_fsc, log_ssc, bins=[nx, ny], range=[xr, yr])
    h = gaussian_filter(hist, (smooth / (xe[1] - xe[0]), smooth / (ye[1] - ye[0])))
    # Neighbourhood of ±2 smoothing SDs: two maxima closer than that are one cloud.
    size = (2 * max(1, round(2 * smooth / (xe[1] - xe[0]))) + 1,
            2 * max(1, round(2 * smooth / (ye[1] - ye[0]))) + 1)
    is_max = (h == maximum_filter(h, size=size)) & (h >= min_peak * h.max())
    ii, jj = np.nonzero(is_max)
    keep = ii >= 2  # not piled against the lowest FSC (the trigger threshold cuts debris)
    ii, jj = ii[keep], jj[keep]
    if not ii.size:
        raise NoLandmark("no scatter peak above the lowest FSC")
    px = (xe[ii] + xe[ii + 1]) / 2
    py = (ye[jj] + ye[jj + 1]) / 2
    # Monocytes can lie as far below the diagonal as lymphocytes (a real-looking cohort put
    # them 0.02 decades further): among the candidates near the lowest diagonal, lymphocytes
    # are the least granular (lowest SSC). Debris stays out: it lies well above the diagonal.
    # Debris can lie as low too (a FlowJo 9 file's, at 7.6k FSC): it is far smaller than
    # every cell cloud, so candidates under _DEBRIS_FSC of the largest candidate's FSC go.
    cells = px >= px.max() + np.log10(_DEBRIS_FSC)
    px, py = px[cells], py[cells]
    diagonal = py - px
    near = np.flatnonzero(diagonal <= diagonal.min() + _DIAGONAL_TOLERANCE)
    best = int(near[np.argmin(py[near])])
    return {"peak": (float(px[best]), float(py[best])),
            "candidates": [(float(a), float(b)) for a, b in zip(px, py)]}


def mahalanobis(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> float:
    """Mahalanobis distance of ``x`` from a Gaussian (``mean``, ``cov``).

    Parameters
    ----------
    x
        A point.
    mean, cov
        Centre and covariance matrix of the Gaussian.

    Returns
    -------
    float
        ``sqrt((x - mean)ᵀ cov⁻¹ (x - mean))``.
    """
    d = np.asarray(x, float) - np.asarray(mean, float)
    return float(np.sqrt(d @ np.linalg.solve(cov, d)))


def density_peak_2d(pts: np.ndarray, bins: int = 64) -> np.ndarray:
    """The densest point of a 2-D cloud (smoothed histogram mode).

    Parameters
    ----------
    pts
        ``(n, 2)`` points.
    bins
        Histogram bins per axis (smoothed with a 1.5-bin Gaussian).

    Returns
    -------
    numpy.ndarray
        The ``(x, y)`` centre of the densest bin.
    """
    hist, xe, ye = np.histogram2d(pts[:, 0], pts[:, 1], bins=bins)
    i, j = np.unravel_index(np.argmax(gaussian_filter(hist, 1.5)), hist.shape)
    return np.array([(xe[i] + xe[i + 1]) / 2, (ye[j] + ye[j + 1]) / 2])


def mixture_cloud(pts: np.ndarray, peak: np.ndarray, *, components: int = 5,
                  min_weight: float = 0.02,
                  merge_distance: float = 3.0) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The cloud at ``peak`` as one Gaussian: a mixture's component best explaining the peak
    and those within ``merge_distance`` of it (T/B and NK cells differ in side scatter).

    Deterministic (``random_state=0``). Raises :class:`NoLandmark` when no component of at
    least ``min_weight`` lies within 3 Mahalanobis units of the peak.

    Parameters
    ----------
    pts
        ``(n, 2)`` points (e.g. FSC-A, SSC-A of a window).
    peak
        The cloud's densest point (see :func:`density_peak_2d`).
    components
        Components of the Gaussian mixture.
    min_weight
        Components lighter than this mixture weight are ignored.
    merge_distance
        Components whose means lie within this Mahalanobis distance of the chosen one (in
        its covariance) are merged into the cloud.

    Returns
    -------
    tuple
        Centre, covariance, and a record (``center_x/y``, ``peak_x/y``, ``components``,
        ``weight``).
    """
    weights, means, covs = _mixture(pts, components)
    ok = weights >= min_weight
    dist = np.array([mahalanobis(peak, m, c) for m, c in zip(means, covs)])
    if not np.any(ok & (dist < 3.0)):
        raise NoLandmark("no mixture component at the densest point of the window")
    k = int(np.argmin(np.where(ok, dist, np.inf)))
    chosen = np.flatnonzero(ok & (np.array([mahalanobis(m, means[k], covs[k])
                                            for m in means]) <= merge_distance))
    w = weights[chosen] / weights[chosen].sum()
    center = (w[:, None] * means[chosen]).sum(axis=0)
    cov = sum(wi * (covs[j] + np.outer(means[j] - center, means[j] - center))
              for wi, j in zip(w, chosen))
    record = {"center_x": float(center[0]), "center_y": float(center[1]),
              "peak_x": float(peak[0]), "peak_y": float(peak[1]),
              "components": int(chosen.size), "weight": float(weights[chosen].sum())}
    return center, np.asarray(cov), record


def _mixture(pts: np.ndarray, components: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights, means and covariances of the seeded Gaussian mixture of ``pts``.

    Templates gating one file often fit the same scatter window (the B-cell and plasma
    templates' lymphocyte gates, a template's lymphocytes with and without blasts): the fit
    (~80 ms) is kept for the last few windows, found by their exact bytes."""
    # start-up time: a heavy library, loaded on first use
    from sklearn.mixture import GaussianMixture

    # the key from the values in C order, the fit on ``pts`` as given (the order of np.std's
    # sums, hence the scale's last bits, follows the array's layout)
    key = (hashlib.sha256(np.ascontiguousarray(pts).tobytes()).digest(), pts.shape,
           pts.dtype.str, pts.strides, components)

    def fit() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # Standardised axes: FSC and SSC differ in scale by up to an order of magnitude.
        scale = np.std(pts, axis=0) + 1e-12
        gmm = GaussianMixture(n_components=components, random_state=0,
                              covariance_type="full").fit(pts / scale)
        fitted = (gmm.weights_, gmm.means_ * scale, gmm.covariances_ * np.outer(scale, scale))
        for array in fitted:  # shared by every caller of the same window
            array.setflags(write=False)
        return fitted

    return _MIXTURES.get(key, fit)


_MIXTURES: RecentResults[tuple[np.ndarray, np.ndarray, np.ndarray]] = RecentResults(4)
