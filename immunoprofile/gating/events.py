"""Lazy access to one sample's event values: raw, compensated and transformed.

Values are computed only for the events a gate asks for (a population's gate reads its
parent's events) and kept only where recomputing would cost: compensated values, and
transforms slower than a numpy ufunc. Range tests on monotonic transforms are decided in linear
space against the inverse-transformed bound, and only events in a thin band around the bound
are transformed, so membership stays exactly what a test on transformed values gives.

Memory: no full-length float64 copies. Raw channels are read from the float32 event matrix at
the events asked for (widening float32 to float64 is exact, so every comparison is as before);
caches hold the events computed, not every event of the file.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import pandas as pd

from immunoprofile.gating.compensation import compensate, matrix_for
from immunoprofile.io.fcs import FCSSample
from immunoprofile.template.model import Dimension, Template
from immunoprofile.template.transforms import (
    Arcsinh,
    FlowJoBiex,
    FlowJoLog,
    GMLAsinh,
    GMLLinear,
    Hyperlog,
    Identity,
    Logicle,
    Transform,
)

# Transforms defined, finite and strictly increasing on all of R: for these, x < inverse(lo)
# implies transform(x) < lo (up to the margin below), so linear-space shortcuts are exact.
TOTAL_MONOTONIC = (Identity, Arcsinh, GMLLinear, GMLAsinh, Logicle, Hyperlog)


def total_monotonic(t: Transform) -> bool:
    """Whether linear-space shortcuts are exact for a transform (see :data:`TOTAL_MONOTONIC`).

    FlowUtils' own logicle stops being monotone for wide linear regions (W ≥ 3 with M ≥ 6
    returns -1 mid-range) and its hyperlog for W = 0, so those settings take the exact path:
    the exact test is whatever FlowUtils computes.

    Parameters
    ----------
    t
        A transform as applied to a channel.

    Returns
    -------
    bool
        True when membership may be decided on linear values against inverted bounds.
    """
    if isinstance(t, Logicle):
        return t.W <= 2.5
    if isinstance(t, Hyperlog):
        return t.W >= 0.25
    if isinstance(t, GMLLinear):
        # x + A rounds to ~1e-16 |A|: beyond ~1e9 that exceeds the margin of transform_margin
        return abs(t.A) <= 1e9
    return isinstance(t, TOTAL_MONOTONIC)


@functools.lru_cache(maxsize=256)  # biex's answer reads its 4,097-point table: once per setting
def increasing_between(t: Transform) -> tuple[float, float] | None:
    """The open interval of transformed values on which ``t`` is strictly increasing, or None.

    A bound strictly inside it can be decided on linear values against its inverse: below
    and above the interval, FlowJo's biex and log transforms are flat (inputs beyond the
    lookup table, or under the log's offset, are clamped), and such an input still sits on
    the right side of any bound inside the interval.

    Parameters
    ----------
    t
        A transform as applied to a channel.

    Returns
    -------
    tuple or None
        ``(low, high)`` transformed values; ``(-inf, inf)`` for the transforms of
        :func:`total_monotonic`; None when no linear-space shortcut applies.
    """
    if total_monotonic(t):
        return -np.inf, np.inf
    if isinstance(t, FlowJoBiex):
        x, y = t.table()
        if np.all(np.diff(x) > 0) and np.all(np.diff(y) > 0):
            return float(y[0]), float(y[-1])
        return None
    if isinstance(t, FlowJoLog):
        return 0.0, np.inf
    return None


def linear_decidable(t: Transform, bounds) -> bool:
    """Whether every bound (transformed scale) can be decided on linear values under ``t``
    (see :func:`increasing_between`)."""
    between = increasing_between(t)
    return between is not None and all(between[0] < b < between[1] for b in bounds)


def linear_bounds(t: Transform, bounds) -> np.ndarray | None:
    """The bounds (transformed scale) taken back to linear values, or None when one of them
    cannot be decided there: outside the part where ``t`` increases
    (:func:`linear_decidable`), or with an inverse that overflows (arcsinh(x/150) = 800).

    Parameters
    ----------
    t
        A transform as applied to a channel.
    bounds
        Values on the transformed scale.

    Returns
    -------
    numpy.ndarray or None
        float64, one per bound.
    """
    if not linear_decidable(t, bounds):
        return None
    with np.errstate(all="ignore"):
        linear = np.asarray(t.inverse(np.asarray(bounds, dtype=np.float64)), dtype=np.float64)
    return linear if np.all(np.isfinite(linear)) else None


def transform_margin(r: np.ndarray | float) -> np.ndarray | float:
    """How near a bound taken back to linear values (``r``) an event must be decided exactly.

    Wide enough to absorb the float64 error of transform and inverse (logicle's solver
    converges to ~1e-12 relative), narrow enough that the band holds a handful of events.

    Parameters
    ----------
    r
        Bound(s) on the linear scale.

    Returns
    -------
    numpy.ndarray or float
        ``1e-7 |r| + 1e-6``.
    """
    return 1e-7 * np.abs(r) + 1e-6


# Events per block of the approximate compensation (a few MiB of gathered rows).
_BLOCK = 65_536

# Transforms that numpy computes faster than a cache could look values up: never cached.
_UFUNC = (Identity, Arcsinh, GMLLinear)


class _Computed:
    """One column's values at the events computed so far (event numbers, values).

    Gates read few events of most columns (a B-cell marker is read on B cells) and no
    column on the debris: full-length float64 arrays, twice a float32 channel's bytes each,
    made most of gating's memory.
    """

    def __init__(self, n_events: int):
        self.n = n_events
        self.rows = np.empty(0, np.int32 if n_events < 2**31 else np.int64)
        self.vals = np.empty(0)

    def add(self, rows: np.ndarray, vals: np.ndarray) -> None:
        """Store values at events not computed before (``rows`` is kept, not copied, when it
        is the first: channels compensated together share it)."""
        if self.rows.size:
            rows = np.concatenate([self.rows, rows])
            vals = np.concatenate([self.vals, vals])
        self.rows, self.vals = rows.astype(self.rows.dtype, copy=False), vals

    def get(self, idx: np.ndarray, compute: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Values at ``idx``; ``compute(rows)`` gives those not yet computed (sorted rows)."""
        if idx.size == self.rows.size and np.array_equal(idx, self.rows):
            return self.vals.copy()  # a gate reading the events its placement just read
        slot = np.full(self.n, -1, self.rows.dtype)
        slot[self.rows] = np.arange(self.rows.size, dtype=self.rows.dtype)
        pos = slot[idx]
        missing = pos < 0
        if missing.any():
            need = np.zeros(self.n, bool)
            need[idx[missing]] = True
            new = np.flatnonzero(need).astype(self.rows.dtype)  # sorted, unique; fast
            slot[new] = np.arange(self.rows.size, self.rows.size + new.size, dtype=slot.dtype)
            self.add(new, compute(new))
            pos = slot[idx]
        return self.vals[pos]


class EventSpace:
    """The values gates read for one sample under one template.

    Parameters
    ----------
    sample
        The decoded FCS data set.
    template
        The template, for its transforms and compensation.
    channel_of
        ``{marker or channel as the template writes it: $PnN}`` from the panel.
    """

    def __init__(self, sample: FCSSample, template: Template, channel_of: dict[str, str]):
        self.sample = sample
        self.template = template
        self.channel_of = channel_of
        self.names = sample.channel_names
        self._matrices: dict[str, pd.DataFrame | None] = {}
        self._cache: dict[tuple, _Computed] = {}
        self._inverse: dict[tuple[str, str], tuple] = {}
        self._approx_all: dict[tuple[str, str], np.ndarray] = {}  # float32, every event
        self._max_abs: float | None = None
        self._tops: dict[str, float] | None = None
        # (reference, channel) pairs each population's gate reads. One solve gives every
        # channel, so solving for a channel keeps, at the same events, the channels read with
        # it and those its population's children read: they are asked for next, at the same
        # events or a subset (solving each on its own doubled the solves).
        reads = {pop.name: {(self._comp_ref(d), channel_of[m]) for d in pop.gate.dims
                            if d.ratio is None for m in d.markers() if m in channel_of}
                 for pop in template.populations}
        self._together: dict[tuple[str, str], set[tuple[str, str]]] = {}
        for pop in template.populations:
            kids = [reads[p.name] for p in template.populations if p.parent == pop.name]
            for pair in reads[pop.name]:
                self._together.setdefault(pair, set()).update(reads[pop.name], *kids)

    # -- linear values -------------------------------------------------------------------
    def _comp_ref(self, dim: Dimension) -> str:
        ref = dim.compensation if dim.compensation is not None else self.template.compensation
        return "none" if ref == "uncompensated" else ("file" if ref == "FCS" else ref)

    def _matrix(self, ref: str) -> pd.DataFrame | None:
        if ref not in self._matrices:
            self._matrices[ref] = matrix_for(self.sample, self.template, ref)
        return self._matrices[ref]

    def _cached(self, key: tuple) -> _Computed:
        if key not in self._cache:
            self._cache[key] = _Computed(self.sample.n_events)
        return self._cache[key]

    def channel(self, dim: Dimension) -> str:
        """The $PnN an axis's marker reads, through the panel.

        Parameters
        ----------
        dim
            A gate dimension other than a ratio.

        Returns
        -------
        str
            The channel's $PnN.
        """
        return self.channel_of[dim.marker]

    def linear_at(self, dim: Dimension, idx: np.ndarray) -> np.ndarray:
        """Float64 linear values of an axis at event indices ``idx``.

        Parameters
        ----------
        dim
            A gate dimension: a ratio is computed from raw values, any other axis is its
            channel compensated under the axis's reference (the template's by default).
        idx
            Event indices.

        Returns
        -------
        numpy.ndarray
            One value per index.
        """
        if dim.ratio is not None:
            r = dim.ratio
            x = self.raw_at(self.channel_of[r.numerator], idx)
            y = self.raw_at(self.channel_of[r.denominator], idx)
            with np.errstate(divide="ignore", invalid="ignore"):
                return r.A * ((x - r.B) / (y - r.C))
        return self.linear_channel(self.channel(dim), self._comp_ref(dim), idx=idx)

    def linear_channel(self, pnn: str, ref: str | None = None, *,
                       idx: np.ndarray | None = None) -> np.ndarray:
        """Linear values of one channel under a compensation reference (template default),
        at event indices ``idx`` (default all events).

        Parameters
        ----------
        pnn
            The channel's $PnN.
        ref
            The compensation reference (``"none"``, ``"file"`` or a matrix name); None for
            the template's ``compensation``.
        idx
            Event indices; None for every event.

        Returns
        -------
        numpy.ndarray
            Float64 values, one per index: raw values when the reference gives no matrix or
            its matrix does not cover the channel.
        """
        ref = self.template.compensation if ref is None else ref
        if idx is None:
            idx = np.arange(self.sample.n_events)
        matrix = None if ref == "none" else self._matrix(ref)
        if matrix is None or pnn not in matrix.columns:
            return self.raw_at(pnn, idx)
        # Solved for these events only, keeping this channel's column: the float64
        # compensation of every channel of every event was gating's largest memory cost.
        return self._cached(("compensated", ref, pnn)).get(
            idx, lambda rows: self._compensate(matrix, ref, pnn, rows))

    def _compensate(self, matrix: pd.DataFrame, ref: str, pnn: str,
                    rows: np.ndarray) -> np.ndarray:
        """``pnn`` compensated at ``rows``; the channels read with it or next (see
        ``_together``) and not computed yet are kept too."""
        along = [c for r, c in sorted(self._together.get((ref, pnn), ()))
                 if r == ref and c != pnn and c in matrix.columns
                 and ("compensated", ref, c) not in self._cache]
        comp = compensate(self.sample.events, self.names, matrix, channels=[pnn, *along],
                          rows=rows)
        for c in along:
            self._cached(("compensated", ref, c)).add(rows, comp[c])
        return comp[pnn]

    def approx_linear_at(self, dim: Dimension, idx: np.ndarray) -> tuple[np.ndarray, float]:
        """Linear values at ``idx`` and a bound on their error, cheaply.

        Compensated channels come from one float64 product with the inverse spillover
        matrix instead of FlowKit's solve: the same value up to rounding, far below the
        bound returned (``1e-9 × Σ|x|·|S⁻¹|`` per event). Range and extent tests decide every
        event farther than that from a bound and ask :meth:`linear_at` (the exact solve) only
        for the few near it, which saves most of the solving.

        Parameters
        ----------
        dim
            A gate dimension.
        idx
            Event indices.

        Returns
        -------
        (values, bound)
            Float64 values, one per index, and one absolute error bound for all of them
            (0.0 when they are exact: ratios, uncompensated axes and channels the matrix does
            not cover come from :meth:`linear_at`).
        """
        found = self.linear_weights(dim)
        if found is None or found[1] == 0.0:
            return self.linear_at(dim, idx), 0.0
        key = (self._comp_ref(dim), self.channel_of[dim.marker])
        weights, bound = found[0].astype(np.float32), found[1]
        if idx.size * 4 >= self.sample.n_events:
            # Most events (gates near the root): one product over the contiguous matrix,
            # kept for the channel's next gates, costs less than gathering the rows.
            if key not in self._approx_all:
                with np.errstate(over="ignore"):  # ±inf near float32's top: settled exactly
                    self._approx_all[key] = self.sample.events @ weights
            every = self._approx_all[key]
            if idx.size == every.size and bool(np.all(idx[1:] > idx[:-1])):
                return every.astype(np.float64), bound  # all events in order: no gather
            return every[idx].astype(np.float64), bound
        # float32 × float32: no float64 copy of the rows; the band absorbs the rounding.
        # In blocks, so the rows gathered never amount to a copy of the event matrix.
        out = np.empty(idx.size)
        for start in range(0, idx.size, _BLOCK):
            rows = idx[start:start + _BLOCK]
            out[start:start + rows.size] = self.sample.events[rows] @ weights
        return out, bound

    def linear_weights(self, dim: Dimension) -> tuple[np.ndarray, float] | None:
        """Weights giving an axis's linear value as one dot product with an event's row.

        Parameters
        ----------
        dim
            A gate dimension.

        Returns
        -------
        (weights, bound) or None
            Float64 weights, one per channel of the file (a column of the inverse spillover
            matrix, or 1 on the channel itself when the axis is not compensated; bound 0.0),
            and a bound on the error of a float32 dot product with them against the exact
            solve. None for a ratio or a marker the panel does not map.
        """
        if dim.ratio is not None or dim.marker not in self.channel_of:
            return None
        ref = self._comp_ref(dim)
        pnn = self.channel_of[dim.marker]
        key = (ref, pnn)
        if key in self._inverse:
            return self._inverse[key]
        matrix = None if ref == "none" else self._matrix(ref)
        weights = np.zeros(len(self.names))
        if matrix is None or pnn not in matrix.columns:
            weights[self.names.index(pnn)] = 1.0
            self._inverse[key] = (weights, 0.0)
            return self._inverse[key]
        inv = np.linalg.inv(np.asarray(matrix.values, dtype=np.float64))
        j = list(matrix.columns).index(pnn)
        # A weight per channel of the file (0 outside the matrix): whole rows are read
        # (contiguous) rather than a row × column selection.
        weights[[self.names.index(c) for c in matrix.columns]] = inv[:, j]
        if self._max_abs is None:
            # One scalar over the contiguous block: a per-channel maximum reduces along the
            # strided axis and costs twenty times more.
            lo, hi = self.sample.value_range()
            if not np.isfinite([lo, hi]).all():  # fmax/fmin skip the NaN the range holds
                ev = self.sample.events.reshape(-1)
                lo, hi = float(np.fmin.reduce(ev)), float(np.fmax.reduce(ev))
            top = max(hi, -lo, 0.0)
            self._max_abs = top if np.isfinite(top) else float(np.finfo(np.float32).max)
        # A float32 dot product of k terms errs by at most ~k·2⁻²⁴·Σ|x||w| (plus the
        # weights' own rounding): 4e-6 × max|x| × Σ|w| bounds it for any k ≤ 60.
        bound = 4e-6 * self._max_abs * float(np.abs(weights).sum()) + 1e-6
        self._inverse[key] = (weights, bound)
        return self._inverse[key]

    def raw_at(self, pnn: str, idx: np.ndarray) -> np.ndarray:
        """Raw (uncompensated) values of one channel at event indices ``idx``.

        Parameters
        ----------
        pnn
            The channel's $PnN.
        idx
            Event indices.

        Returns
        -------
        numpy.ndarray
            Float64 values (widened from the float32 event matrix), one per index.
        """
        return self.sample.events[idx, self.names.index(pnn)].astype(np.float64)

    def compensation_used(self) -> dict[str, list[str]]:
        """Which channels each compensation reference touched (for provenance)."""
        return {ref: list(m.columns) if m is not None else []
                for ref, m in self._matrices.items()}

    # -- transformed values ----------------------------------------------------------------
    def range_top(self, dim: Dimension) -> float | None:
        """The largest decodable value of an axis's channel (None for ratios; see
        :func:`~immunoprofile.io.fcs.channel_top`).

        Parameters
        ----------
        dim
            A gate dimension.

        Returns
        -------
        float or None
            The value, or None for a ratio or a marker the panel does not map.
        """
        if dim.ratio is not None or dim.marker not in self.channel_of:
            return None
        if self._tops is None:  # transforms are asked for per gate and event block: look up once
            self._tops = self.sample.range_tops()
        return self._tops.get(self.channel_of[dim.marker])

    def transform(self, dim: Dimension) -> Transform:
        """The axis's transform as applied to this file (range-relative ones follow its
        channel's range).

        Parameters
        ----------
        dim
            A gate dimension.

        Returns
        -------
        Transform
            The template's transform for the axis, scaled to :meth:`range_top` where it is
            range-relative.
        """
        return self.template.transform_for(dim).for_channel(self.range_top(dim))

    def values(self, dim: Dimension, idx: np.ndarray) -> np.ndarray:
        """Transformed values of an axis at event indices ``idx`` (cached per event).

        Parameters
        ----------
        dim
            A gate dimension.
        idx
            Event indices.

        Returns
        -------
        numpy.ndarray
            :meth:`transform` applied to :meth:`linear_at`, one value per index.
        """
        t = self.transform(dim)
        if isinstance(t, _UFUNC):
            return t.apply(self.linear_at(dim, idx))
        key = (dim.marker, dim.ratio, self._comp_ref(dim) if dim.ratio is None else "", t)
        return self._cached(key).get(idx, lambda rows: t.apply(self.linear_at(dim, rows)))

    def in_range(self, dim: Dimension, idx: np.ndarray, lo: float | None,
                 hi: float | None) -> np.ndarray:
        """``lo <= t(x) < hi`` at ``idx``, deciding most events in linear space.

        Parameters
        ----------
        dim
            A gate dimension; ``t`` is its :meth:`transform`.
        idx
            Event indices.
        lo
            Lower bound (inclusive) on the transformed scale; None for none.
        hi
            Upper bound (exclusive) on the transformed scale; None for none.

        Returns
        -------
        numpy.ndarray
            Boolean, one per index: exactly the test on transformed values.
        """
        t = self.transform(dim)
        sides = [(b, is_lo) for b, is_lo in ((lo, True), (hi, False)) if b is not None]
        linear = linear_bounds(t, [b for b, _ in sides])
        if linear is None:
            v = self.values(dim, idx)
            ok = np.ones(idx.size, bool)
            if lo is not None:
                ok &= v >= lo
            if hi is not None:
                ok &= v < hi
            return ok
        x, err = self.approx_linear_at(dim, idx)
        ok = np.ones(idx.size, bool)
        unsure = np.zeros(idx.size, bool)
        for (_, is_lo), r in zip(sides, linear):
            m = transform_margin(r) + err
            if is_lo:
                ok &= ~(x < r - m)  # NaN stays unsure and is settled exactly below
            else:
                ok &= ~(x > r + m)
            unsure |= (x >= r - m) & (x <= r + m)
        unsure |= ~np.isfinite(x)  # NaN, and ±inf that compensation turns into NaN
        check = unsure & ok
        if check.any():
            # Near a bound: exact linear values (FlowKit's solve), then the exact transform.
            v = (t.apply(self.linear_at(dim, idx[check])) if isinstance(t, _UFUNC)
                 else self.values(dim, idx[check]))
            exact = np.ones(v.size, bool)
            if lo is not None:
                exact &= v >= lo
            if hi is not None:
                exact &= v < hi
            ok[check] = exact
        return ok

    def within_extent(self, dim: Dimension, idx: np.ndarray, lo: float, hi: float) -> np.ndarray:
        """A superset test: False only where ``t(x)`` is surely outside ``[lo, hi]``.

        Parameters
        ----------
        dim
            A gate dimension; ``t`` is its :meth:`transform`.
        idx
            Event indices.
        lo, hi
            Bounds on the transformed scale; infinite for none.

        Returns
        -------
        numpy.ndarray
            Boolean, one per index; all True when ``t`` is not one of the transforms
            increasing on all of R, or both bounds are infinite.
        """
        t = self.transform(dim)
        # A side whose bound cannot be decided on linear values keeps every event there.
        sides = [(float(r[0]), sign) for b, sign in ((lo, -1.0), (hi, 1.0))
                 if np.isfinite(b) and (r := linear_bounds(t, [b])) is not None]
        if not sides:
            return np.ones(idx.size, bool)
        x, err = self.approx_linear_at(dim, idx)
        # ±inf from the float32 product (values near its maximum) may be finite exactly: kept
        finite = np.isfinite(x)
        keep = np.ones(idx.size, bool)
        for r, sign in sides:
            keep &= ~((sign * (x - r) > transform_margin(r) + err) & finite)
        return keep
