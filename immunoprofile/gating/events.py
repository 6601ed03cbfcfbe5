"""Lazy access to one sample's event values: raw, compensated and transformed.

Every transformed channel is computed at most once per sample and only for the events that
ask for it. Range tests on monotonic transforms are decided in linear space against the
inverse-transformed bound, and only events in a thin band around the bound are transformed, so
membership stays exactly what a test on transformed values gives.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from immunoprofile.gating.compensation import compensate, matrix_for
from immunoprofile.io.fcs import FCSSample
from immunoprofile.template.model import Dimension, Template
from immunoprofile.template.transforms import (
    Arcsinh,
    GMLAsinh,
    GMLLinear,
    Hyperlog,
    Identity,
    Logicle,
    Transform,
)

# Transforms defined, finite and strictly increasing on all of R: for these, x < inverse(lo)
# implies transform(x) < lo (up to the margin below), so linear-space shortcuts are exact.
_TOTAL_MONOTONIC = (Identity, Arcsinh, GMLLinear, GMLAsinh, Logicle, Hyperlog)


def _margin(r: np.ndarray | float) -> np.ndarray | float:
    # Wide enough to absorb the float64 error of transform/inverse (logicle's solver converges
    # to ~1e-12 relative), narrow enough that the band holds a handful of events.
    return 1e-7 * np.abs(r) + 1e-6


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
        self._compensated: dict[str, dict[str, np.ndarray]] = {}
        self._linear: dict[tuple[str, str], np.ndarray] = {}
        self._xform: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    # -- linear values -------------------------------------------------------------------
    def _comp_ref(self, dim: Dimension) -> str:
        ref = dim.compensation if dim.compensation is not None else self.template.compensation
        return "none" if ref == "uncompensated" else ("file" if ref == "FCS" else ref)

    def _compensated_columns(self, ref: str) -> dict[str, np.ndarray]:
        if ref not in self._compensated:
            matrix = matrix_for(self.sample, self.template, ref)
            self._matrices[ref] = matrix
            self._compensated[ref] = (
                {} if matrix is None else compensate(self.sample.events, self.names, matrix)
            )
        return self._compensated[ref]

    def channel(self, dim: Dimension) -> str:
        return self.channel_of[dim.marker]

    def linear(self, dim: Dimension) -> np.ndarray:
        """Full-length float64 linear values of an axis (compensated where it applies)."""
        if dim.ratio is not None:
            key = ("ratio", repr(dim.ratio))
            if key not in self._linear:
                r = dim.ratio
                x = self.raw(self.channel_of[r.numerator])
                y = self.raw(self.channel_of[r.denominator])
                with np.errstate(divide="ignore", invalid="ignore"):
                    self._linear[key] = r.A * ((x - r.B) / (y - r.C))
            return self._linear[key]
        return self.linear_channel(self.channel(dim), self._comp_ref(dim))

    def linear_channel(self, pnn: str, ref: str | None = None) -> np.ndarray:
        """Linear values of one channel under a compensation reference (template default)."""
        ref = self.template.compensation if ref is None else ref
        if ref != "none":
            comp = self._compensated_columns(ref)
            if pnn in comp:
                return comp[pnn]
        return self.raw(pnn)

    def raw(self, pnn: str) -> np.ndarray:
        key = (pnn, "raw")
        if key not in self._linear:
            self._linear[key] = np.asarray(
                self.sample.events[:, self.names.index(pnn)], dtype=np.float64
            )
        return self._linear[key]

    def compensation_used(self) -> dict[str, list[str]]:
        """Which channels each compensation reference touched (for provenance)."""
        return {ref: list(m.columns) if m is not None else []
                for ref, m in self._matrices.items()}

    # -- transformed values ----------------------------------------------------------------
    def transform(self, dim: Dimension) -> Transform:
        return self.template.transform_for(dim)

    def values(self, dim: Dimension, idx: np.ndarray) -> np.ndarray:
        """Transformed values of an axis at event indices ``idx`` (cached per event)."""
        t = self.transform(dim)
        linear = self.linear(dim)
        if isinstance(t, Identity):
            return linear[idx]
        key = (dim.marker, dim.ratio, self._comp_ref(dim) if dim.ratio is None else "", t)
        if key not in self._xform:
            self._xform[key] = (np.empty(linear.shape[0]), np.zeros(linear.shape[0], bool))
        out, done = self._xform[key]
        todo = idx[~done[idx]]
        if todo.size:
            out[todo] = t.apply(linear[todo])
            done[todo] = True
        return out[idx]

    def in_range(self, dim: Dimension, idx: np.ndarray, lo: float | None,
                 hi: float | None) -> np.ndarray:
        """``lo <= t(x) < hi`` at ``idx``, deciding most events in linear space."""
        t = self.transform(dim)
        if not isinstance(t, _TOTAL_MONOTONIC):
            v = self.values(dim, idx)
            ok = np.ones(idx.size, bool)
            if lo is not None:
                ok &= v >= lo
            if hi is not None:
                ok &= v < hi
            return ok
        x = self.linear(dim)[idx]
        ok = np.ones(idx.size, bool)
        unsure = np.zeros(idx.size, bool)
        for bound, is_lo in ((lo, True), (hi, False)):
            if bound is None:
                continue
            r = float(t.inverse(np.array([bound], dtype=np.float64))[0])
            m = _margin(r)
            if is_lo:
                ok &= ~(x < r - m)  # NaN stays unsure and is settled exactly below
                unsure |= (x >= r - m) & (x <= r + m)
            else:
                ok &= ~(x > r + m)
                unsure |= (x >= r - m) & (x <= r + m)
        unsure |= np.isnan(x)
        check = unsure & ok
        if check.any():
            v = self.values(dim, idx[check])
            exact = np.ones(v.size, bool)
            if lo is not None:
                exact &= v >= lo
            if hi is not None:
                exact &= v < hi
            ok[check] = exact
        return ok

    def within_extent(self, dim: Dimension, idx: np.ndarray, lo: float, hi: float) -> np.ndarray:
        """A superset test: False only where ``t(x)`` is surely outside ``[lo, hi]``."""
        t = self.transform(dim)
        if not isinstance(t, _TOTAL_MONOTONIC) or (np.isinf(lo) and np.isinf(hi)):
            return np.ones(idx.size, bool)
        x = self.linear(dim)[idx]
        keep = np.ones(idx.size, bool)
        if np.isfinite(lo):
            r = float(t.inverse(np.array([lo]))[0])
            keep &= ~(x < r - _margin(r))
        if np.isfinite(hi):
            r = float(t.inverse(np.array([hi]))[0])
            keep &= ~(x > r + _margin(r))
        return keep
