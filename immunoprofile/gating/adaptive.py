"""Data-adaptive gates: the gate's position is found per sample, inside declared bounds.

A population's ``gate`` in the template is its *default* position; its ``adaptive`` block says
how to move it for each sample. Every placement is recorded (where the gate landed, from what
evidence) and falls back to the default, with a flag, whenever the data do not support it (a
single peak, too few events, a peak at the edge of its window), so no gate moves silently.

Methods (``adaptive: {method: …}``):

``valley``
    A threshold at the density valley between two peaks, searched inside a window, for each
    listed dimension of a range, rectangle or quadrant gate:
    ``{method: valley, dims: {CD3: {window: [1.5, 3.5]}}}`` (or ``window:`` directly for a 1-D
    gate). The gate bound(s) equal to the default cut move to the valley.
``reference``
    A threshold at ``median + n_sd·MAD`` (or a ``quantile``) of the marker in a reference
    population known to be negative: ``{method: reference, marker: CD19, reference: T cells,
    n_sd: 4, window: [1.5, 3.5]}``.
``align``
    Shift the gate along markers by how far a population's peak sits from where the template
    expects it (per-batch staining shifts of continuum markers such as CD25, where no valley
    exists): ``{method: align, align: [{marker: CD25, window: [3.2, 5.5], expected: 4.0,
    within: {CD127: [null, 2.2]}}]}``.
``mixture``
    A 2-D Gaussian mixture (lymphocyte cloud on FSC/SSC): the component nearest ``expected``
    inside ``window`` becomes an ellipse at Mahalanobis distance² ``distance_square``.
``singlets``
    A robust band of FSC-H / FSC-A around its mode (``n_mad`` MADs, limited to ``window``),
    drawn as a polygon on the gate's two dimensions.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.signal import find_peaks

from immunoprofile.errors import TemplateError
from immunoprofile.gating.events import EventSpace
from immunoprofile.template.model import (
    Dimension,
    EllipseGate,
    Gate,
    PolygonGate,
    Population,
    RectangleGate,
)
from immunoprofile.template.transforms import Identity

METHODS = ("valley", "reference", "align", "mixture", "singlets")
_MAX_FIT_EVENTS = 20_000
# A mixture on FSC/SSC is stable from a few thousand events; more only costs time.
_MIXTURE_EVENTS = 5_000


class _Fallback(Exception):
    """The data do not support moving the gate; the reason is the message."""


def _density(v: np.ndarray, lo: float, hi: float, bins: int = 512,
             adjust: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """A binned Gaussian KDE on [lo, hi] (Silverman bandwidth × ``adjust``)."""
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centers = (edges[:-1] + edges[1:]) / 2
    spread = min(np.std(v), np.subtract(*np.percentile(v, [75, 25])) / 1.34) or np.std(v)
    bw = adjust * 0.9 * max(spread, 1e-9) * v.size ** -0.2
    sigma_bins = max(bw / (edges[1] - edges[0]), 1.0)
    return centers, gaussian_filter1d(hist.astype(float), sigma_bins, mode="constant")


def find_valley(v: np.ndarray, window: tuple[float, float], *, min_events: int = 100,
                min_peak_fraction: float = 0.02) -> float:
    """The deepest density minimum inside ``window`` lying between two real peaks.

    Raises ``_Fallback`` when there are too few events or no such valley (one peak).
    """
    v = v[np.isfinite(v)]
    if v.size < min_events:
        raise _Fallback(f"{v.size} events, fewer than {min_events}")
    lo = min(np.percentile(v, 0.5), window[0])
    hi = max(np.percentile(v, 99.5), window[1])
    x, d = _density(v, lo, hi)
    peaks, _ = find_peaks(d, prominence=d.max() * min_peak_fraction)
    if peaks.size < 2:
        raise _Fallback("one peak: no valley to place the gate in")
    best: tuple[float, float] | None = None
    for a, b in itertools.pairwise(peaks):
        k = a + int(np.argmin(d[a:b + 1]))
        if window[0] <= x[k] <= window[1] and (best is None or d[k] < best[1]):
            best = (float(x[k]), float(d[k]))
    if best is None:
        raise _Fallback(f"no valley between two peaks inside {list(window)}")
    return best[0]


def find_peak(v: np.ndarray, window: tuple[float, float], *, min_events: int = 50) -> float:
    """The highest density peak strictly inside ``window`` (not at its edge)."""
    v = v[np.isfinite(v) & (v >= window[0]) & (v <= window[1])]
    if v.size < min_events:
        raise _Fallback(f"{v.size} events in {list(window)}, fewer than {min_events}")
    x, d = _density(v, window[0], window[1], bins=256, adjust=1.0)
    k = int(np.argmax(d))
    if k < 3 or k > d.size - 4:
        raise _Fallback(f"the peak sits at the edge of {list(window)}")
    return float(x[k])


def _dim_named(gate: Gate, marker: str) -> int:
    for i, d in enumerate(gate.dims):
        if d.marker == marker:
            return i
    raise TemplateError(f"adaptive setting names {marker!r}, which the gate does not use")


def _subsample(idx: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    if idx.size <= n:
        return idx
    return np.sort(np.random.default_rng(seed).choice(idx, n, replace=False))


class Placer:
    """Places the adaptive gates of one sample (keeps shared placements, e.g. quadrants)."""

    def __init__(self, space: EventSpace, membership: dict[str, np.ndarray]):
        self.space = space
        self.membership = membership
        self._groups: dict[str, dict[str, float]] = {}

    def values(self, dim: Dimension, idx: np.ndarray) -> np.ndarray:
        return self.space.values(dim, idx)

    def place(self, pop: Population, idx: np.ndarray) -> tuple[Gate, dict[str, Any]]:
        """The gate for this sample and the record of where (and why) it landed."""
        spec = dict(pop.adaptive or {})
        method = spec.get("method")
        record: dict[str, Any] = {"method": method, "fallback": False, "reason": "",
                                  "n_events": int(idx.size)}
        try:
            if idx.size == 0:
                raise _Fallback("the parent population is empty")
            if method == "valley":
                gate, placed = self._valley(pop, spec, idx)
            elif method == "reference":
                gate, placed = self._reference(pop, spec)
            elif method == "align":
                gate, placed = self._align(pop, spec, idx)
            elif method == "mixture":
                gate, placed = self._mixture(pop, spec, idx)
            elif method == "singlets":
                gate, placed = self._singlets(pop, spec, idx)
            else:
                raise TemplateError(f"population {pop.name!r}: unknown adaptive method "
                                    f"{method!r} (use one of {', '.join(METHODS)})")
        except _Fallback as why:
            record.update(fallback=True, reason=str(why))
            return pop.gate, record
        record["placed"] = placed
        return gate, record

    # -- methods ---------------------------------------------------------------------------
    def _thresholds(self, pop: Population, spec: dict, idx: np.ndarray) -> dict[str, float]:
        key = pop.group or pop.name
        if key in self._groups:
            return self._groups[key]
        dims = spec.get("dims") or {pop.gate.dims[0].marker: {"window": spec.get("window")}}
        out: dict[str, float] = {}
        problems = []
        for marker, opts in dims.items():
            opts = opts or {}
            window = opts.get("window") or spec.get("window")
            if not window:
                raise TemplateError(f"population {pop.name!r}: valley needs a window for "
                                    f"{marker}")
            dim = pop.gate.dims[_dim_named(pop.gate, marker)]
            try:
                out[marker] = find_valley(self.values(dim, idx), tuple(window),
                                          min_events=int(spec.get("min_events", 100)))
            except _Fallback as why:
                problems.append(f"{marker}: {why}")
        if problems and not out:
            raise _Fallback("; ".join(problems))
        if problems:
            out["_partial"] = "; ".join(problems)  # type: ignore[assignment]
        self._groups[key] = out
        return out

    def _valley(self, pop: Population, spec: dict, idx: np.ndarray) -> tuple[Gate, dict]:
        gate = pop.gate
        if not isinstance(gate, RectangleGate):
            raise TemplateError(f"population {pop.name!r}: valley moves range, rectangle or "
                                "quadrant gates")
        cuts = self._thresholds(pop, spec, idx)
        mins, maxs = list(gate.mins), list(gate.maxs)
        dims_spec = spec.get("dims") or {}
        for marker, t in cuts.items():
            if marker.startswith("_"):
                continue
            i = _dim_named(gate, marker)
            # A quadrant's or range's single finite bound is the cut; a closed interval
            # says which end moves with `bound: min|max`.
            bound = (dims_spec.get(marker) or {}).get("bound") or spec.get("bound")
            if mins[i] is not None and bound in (None, "min"):
                mins[i] = t
            if maxs[i] is not None and bound in (None, "max"):
                maxs[i] = t
        placed = {m: t for m, t in cuts.items() if not m.startswith("_")}
        if "_partial" in cuts:
            placed["partial_fallback"] = cuts["_partial"]
        return replace(gate, mins=tuple(mins), maxs=tuple(maxs)), placed

    def _reference(self, pop: Population, spec: dict) -> tuple[Gate, dict]:
        gate = pop.gate
        ref = spec.get("reference")
        if ref not in self.membership:
            raise _Fallback(f"reference population {ref!r} not available")
        marker = spec.get("marker") or gate.dims[0].marker
        i = _dim_named(gate, marker)
        ref_idx = _subsample(np.flatnonzero(self.membership[ref]), 50_000)
        v = self.values(gate.dims[i], ref_idx)
        v = v[np.isfinite(v)]
        if v.size < int(spec.get("min_events", 50)):
            raise _Fallback(f"reference {ref!r} has {v.size} events")
        if "quantile" in spec:
            t = float(np.quantile(v, float(spec["quantile"])))
        else:
            med = float(np.median(v))
            mad = 1.4826 * float(np.median(np.abs(v - med)))
            t = med + float(spec.get("n_sd", 4.0)) * mad
        window = spec.get("window")
        if window and not window[0] <= t <= window[1]:
            raise _Fallback(f"threshold {t:.3g} outside {list(window)}")
        mins, maxs = list(gate.mins), list(gate.maxs)
        if mins[i] is not None:
            mins[i] = t
        else:
            maxs[i] = t
        return replace(gate, mins=tuple(mins), maxs=tuple(maxs)), {marker: t}

    def _align(self, pop: Population, spec: dict, idx: np.ndarray) -> tuple[Gate, dict]:
        gate = pop.gate
        shifts: dict[str, float] = {}
        notes = []
        for item in spec.get("align") or []:
            marker = item["marker"]
            i = _dim_named(gate, marker)
            sub = idx
            for other, (lo, hi) in (item.get("within") or {}).items():
                j = _dim_named(gate, other)
                keep = self.space.in_range(gate.dims[j], sub, lo, hi)
                sub = sub[keep]
            try:
                peak = find_peak(self.values(gate.dims[i], sub), tuple(item["window"]),
                                 min_events=int(item.get("min_events", 50)))
            except _Fallback as why:
                notes.append(f"{marker}: {why}")
                continue
            shift = peak - float(item["expected"])
            limit = float(item.get("max_shift", 1.0))
            shifts[marker] = float(np.clip(shift, -limit, limit))
        if not shifts:
            raise _Fallback("; ".join(notes) or "nothing to align")
        placed: dict[str, Any] = {f"shift_{m}": s for m, s in shifts.items()}
        if notes:
            placed["partial_fallback"] = "; ".join(notes)
        return _shift(gate, shifts), placed

    def _mixture(self, pop: Population, spec: dict, idx: np.ndarray) -> tuple[Gate, dict]:
        """The lymphocyte cloud: the densest peak inside the window, and the mixture
        components near it (T/B and NK differ in side scatter), as one ellipse."""
        from sklearn.mixture import GaussianMixture

        gate = pop.gate
        if len(gate.dims) != 2:
            raise TemplateError(f"population {pop.name!r}: mixture gates are 2-D")
        sub = _subsample(idx, int(spec.get("fit_events", _MIXTURE_EVENTS)))
        pts = np.column_stack([self.values(d, sub) for d in gate.dims])
        window = np.asarray(spec.get("window", [[-np.inf, np.inf]] * 2), dtype=float)
        pts = pts[np.all(np.isfinite(pts), axis=1)]
        in_window = np.all((pts >= window[:, 0]) & (pts <= window[:, 1]), axis=1)
        if in_window.sum() < int(spec.get("min_events", 500)):
            raise _Fallback(f"{int(in_window.sum())} events in the window, too few for a "
                            "mixture")
        peak = _density_peak(pts[in_window])
        scale = np.std(pts, axis=0) + 1e-12
        gmm = GaussianMixture(n_components=int(spec.get("components", 5)), random_state=0,
                              covariance_type="full").fit(pts / scale)
        means = gmm.means_ * scale
        covs = gmm.covariances_ * np.outer(scale, scale)
        ok = gmm.weights_ >= float(spec.get("min_weight", 0.02))
        # The component whose own Gaussian best explains the peak.
        dist = np.array([_mahalanobis(peak, m, c) for m, c in zip(means, covs)])
        if not np.any(ok & (dist < 3.0)):
            raise _Fallback("no mixture component at the densest point of the window")
        k = int(np.argmin(np.where(ok, dist, np.inf)))
        merge = float(spec.get("merge_distance", 3.0))
        chosen = np.flatnonzero(ok & (np.array([_mahalanobis(m, means[k], covs[k])
                                                for m in means]) <= merge))
        w = gmm.weights_[chosen] / gmm.weights_[chosen].sum()
        center = (w[:, None] * means[chosen]).sum(axis=0)
        cov = sum(wi * (covs[j] + np.outer(means[j] - center, means[j] - center))
                  for wi, j in zip(w, chosen))
        d2 = float(spec.get("distance_square", 9.0))
        placed = {"center_x": float(center[0]), "center_y": float(center[1]),
                  "peak_x": float(peak[0]), "peak_y": float(peak[1]),
                  "components": int(chosen.size), "weight": float(gmm.weights_[chosen].sum()),
                  "distance_square": d2}
        return EllipseGate(dims=gate.dims, mean=tuple(center),
                           covariance=tuple(map(tuple, cov)), distance_square=d2), placed

    def _singlets(self, pop: Population, spec: dict, idx: np.ndarray) -> tuple[Gate, dict]:
        gate = pop.gate
        if len(gate.dims) != 2:
            raise TemplateError(f"population {pop.name!r}: singlets gates are 2-D (area, height)")
        sub = _subsample(idx, 50_000)
        area = self.space.linear_at(gate.dims[0], sub)
        height = self.space.linear_at(gate.dims[1], sub)
        good = area > np.percentile(area, 1)
        if good.sum() < int(spec.get("min_events", 200)):
            raise _Fallback(f"{int(good.sum())} events, too few for a singlet band")
        ratio = height[good] / area[good]
        window = spec.get("window", [0.5, 1.5])
        ratio = ratio[(ratio >= window[0]) & (ratio <= window[1])]
        if ratio.size < 100:
            raise _Fallback("too few events with a plausible height/area ratio")
        mode = find_peak(ratio, tuple(window), min_events=100)
        near = ratio[np.abs(ratio - mode) < 0.1]
        mad = 1.4826 * float(np.median(np.abs(near - mode)))
        k = float(spec.get("n_mad", 4.0))
        lo, hi = max(mode - k * mad, window[0]), min(mode + k * mad, window[1])
        top = float(spec.get("max_area", 1.1 * 262144))
        low = 1.0
        verts = ((low, lo * low), (top, lo * top), (top, hi * top), (low, hi * low))
        # Only the identity keeps a ratio band straight; other transforms would bend it.
        poly = PolygonGate(dims=tuple(replace(d, transform=Identity()) for d in gate.dims),
                           vertices=verts)
        return poly, {"ratio_mode": mode, "ratio_low": lo, "ratio_high": hi}


def _mahalanobis(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> float:
    d = np.asarray(x, float) - np.asarray(mean, float)
    return float(np.sqrt(d @ np.linalg.solve(cov, d)))


def _density_peak(pts: np.ndarray, bins: int = 64) -> np.ndarray:
    """The densest point of a 2-D cloud (smoothed histogram mode)."""
    from scipy.ndimage import gaussian_filter

    hist, xe, ye = np.histogram2d(pts[:, 0], pts[:, 1], bins=bins)
    i, j = np.unravel_index(np.argmax(gaussian_filter(hist, 1.5)), hist.shape)
    return np.array([(xe[i] + xe[i + 1]) / 2, (ye[j] + ye[j + 1]) / 2])


def _shift(gate: Gate, shifts: dict[str, float]) -> Gate:
    delta = np.array([shifts.get(d.marker, 0.0) for d in gate.dims])
    if isinstance(gate, RectangleGate):
        return replace(gate, mins=tuple(None if v is None else v + s
                                        for v, s in zip(gate.mins, delta)),
                       maxs=tuple(None if v is None else v + s
                                  for v, s in zip(gate.maxs, delta)))
    if isinstance(gate, PolygonGate):
        return replace(gate, vertices=tuple(tuple(np.asarray(v) + delta)
                                            for v in gate.vertices))
    if isinstance(gate, EllipseGate):
        return replace(gate, mean=tuple(np.asarray(gate.mean) + delta))
    raise TemplateError(f"align cannot shift a {gate.kind} gate")
