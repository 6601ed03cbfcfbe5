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
    drawn as a polygon on the gate's two dimensions (up to 1.1 × the FSC channel's $PnR, or
    ``max_area``).
``tail``
    A threshold where one main peak *ends*, for a shoulder or a tail with no valley (IgD−
    memory B cells on the IgD+ naive peak; the dead-cell tail of the live peak; CD20; CD127),
    as flowDensity's and openCyto's tail gates: ``{method: tail, window: [1.5, 4.0], side:
    low, rule: slope, tol: 0.05}`` (``dims:`` for several markers, as ``valley``). The main
    peak is the highest of the data (or of ``peak_window``); on ``side`` (``low`` or
    ``high``) the cut is, by ``rule``: ``slope`` (default), where the density's slope has
    fallen to ``tol`` × its steepest value, or nearer where the density exceeds twice its
    mirror image across the peak (the shoulder's own events outnumber the peak's there);
    ``mirror``, only the latter; ``sd``, ``n_sd`` (2.5) robust SDs from the peak, the SD taken
    on the peak's clean half (away from ``side``); ``valley``, only a real valley. With
    ``prefer_valley`` (default true) a real valley next to the peak wins (``rule: valley``).
    Bounds move as for ``valley``; the cut must land inside ``window``.

``valley`` and ``tail`` take ``among: POPULATION``: the cut is found on the parent's events
that also belong to that population (gated earlier; recorded as ``n_among``), and applied to
all of the parent's events. The plasma template finds its viability and CD3/CD19 cuts among
the lymphocyte gate's events and applies them to lymphocytes and blasts, whose monocytes
would move them.
``relative``
    Bounds relative to a reference population of the same sample, in its robust SDs:
    ``{method: relative, reference: B cells, dims: {CD20: {below: 3}, CD27: {above: 2},
    CD38: {above: 3, window: [3.5, 8.0]}}}``. ``below: k`` sets the upper bound to
    ``location − k·SD``, ``above: k`` the lower bound to ``location + k·SD``; ``below_by`` /
    ``above_by`` give the distance in transformed units instead. ``stat: peak`` (default for
    ``below``) locates the reference's density peak with the SD of its half away from the cut
    (a bright population whose dim tail is sought, e.g. the mature-B CD20 peak); ``stat:
    median`` (default for ``above``) uses the median and 1.4826·MAD of all reference events
    (the "bulk"). ``bound: min`` / ``max`` says which bound a cut moves when it is not the
    default (``CD20: {below: 3, bound: min}``: mature B cells reach down to 3 SDs below the
    B-cell CD20 peak). A cut outside its ``window`` (per dim, or ``window: {marker: [lo,
    hi]}``) leaves that bound at its default (``partial_fallback``).
``scatter``
    The lymphocyte cloud on FSC × SSC wherever the instrument puts it. ``window`` is in
    fractions of each channel's $PnR (default ``[[0.02, 0.98], [0.0, 0.98]]``); inside it the
    cloud is found on log scale as the dense peak lying lowest below the diagonal (least side
    scatter for its size: not debris, dead cells, monocytes or granulocytes), then a mixture is
    fitted to the events within ``around`` × that peak (default ``[[0.5, 2.0], [0.25, 4.0]]``)
    and the components at the peak become an ellipse, as ``mixture`` does: ``{method:
    scatter, components: 5, distance_square: 18.4}``. The same template then works on 18-bit
    (262144), CytoFLEX-like (1048576) and Aurora-like (4194304) scales. It is a method of its
    own, not an option of ``mixture``, so a window in fractions is never read as one in
    channel units.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from immunoprofile.errors import TemplateError
from immunoprofile.gating.events import EventSpace
from immunoprofile.gating.landmarks import (
    NoLandmark,
    density_peak_2d,
    find_peak,
    find_valley,
    locate,
    mixture_cloud,
    relative_cut,
    scatter_landmark,
    tail_threshold,
)
from immunoprofile.template.model import (
    Dimension,
    EllipseGate,
    Gate,
    PolygonGate,
    Population,
    RectangleGate,
)
from immunoprofile.template.transforms import Identity

METHODS = ("valley", "reference", "align", "mixture", "singlets", "tail", "relative", "scatter")
# Events a scatter mixture is fitted on. On a real FlowJo 9 file 5,000 let the number of
# merged components, hence the gate's count, jump by 20% between subsamples; 20,000 hold it
# within about 1% (0.17 s per placement).
_MIXTURE_EVENTS = 20_000


# The data do not support moving the gate; the reason is the message. It is the landmark
# functions' own exception, so a landmark not found is a fallback without translation.
_Fallback = NoLandmark
# Where the lymphocyte cloud may lie, in fractions of each scatter channel's $PnR: everything
# but the saturated top and the lowest FSC (noise and debris at the trigger threshold).
_SCATTER_WINDOW = ((0.02, 0.98), (0.0, 0.98))
# The events a scatter mixture is fitted to, in multiples of the cloud's peak: the
# lymphocytes (FSC SD ≈ 12 %, SSC SD ≈ 30 %) with room for NK cells, blasts and the
# monocytes beside them, without the debris (≈ 0.2 × FSC) or most granulocytes (≈ 8 × SSC).
_SCATTER_AROUND = ((0.5, 2.0), (0.25, 4.0))


def _dim_named(gate: Gate, marker: str) -> int:
    for i, d in enumerate(gate.dims):
        if d.marker == marker:
            return i
    raise TemplateError(f"adaptive setting names {marker!r}, which the gate does not use")


def _subsample(idx: np.ndarray, n: int) -> np.ndarray:
    """At most ``n`` of the events ``idx``, chosen by a fixed pseudo-random key per event.

    Each event keeps its key whatever else is in ``idx``, so a parent that differs by a few
    events (QC on or off, another sample's mask) gives nearly the same subsample and the gate
    placed on it moves accordingly little; a fresh random draw changed the scatter gate's
    count by up to 9% when 1% of the events were removed.
    """
    if idx.size <= n:
        return idx
    key = (idx.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(11)
    return np.sort(idx[np.argpartition(key, n - 1)[:n]])


class Placer:
    """Places the adaptive gates of one sample (keeps shared placements, e.g. quadrants)."""

    def __init__(self, space: EventSpace, membership: dict[str, np.ndarray]):
        self.space = space
        self.membership = membership
        self._groups: dict[str, dict[str, Any]] = {}
        self._n_among: dict[str, int] = {}

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
            elif method == "tail":
                gate, placed = self._tail(pop, spec, idx)
            elif method == "relative":
                gate, placed = self._relative(pop, spec)
            elif method == "scatter":
                gate, placed = self._scatter(pop, spec, idx)
            else:
                raise TemplateError(f"population {pop.name!r}: unknown adaptive method "
                                    f"{method!r} (use one of {', '.join(METHODS)})")
        except _Fallback as why:
            record.update(fallback=True, reason=str(why))
            return pop.gate, record
        record["placed"] = placed
        if (pop.group or pop.name) in self._n_among:
            record["n_among"] = self._n_among[pop.group or pop.name]
        return gate, record

    # -- methods ---------------------------------------------------------------------------
    def _cuts(self, pop: Population, spec: dict, idx: np.ndarray,
              find: Callable[[np.ndarray, dict, str], tuple[float, dict]]) -> dict[str, Any]:
        """One threshold per listed marker (``dims:``, or the gate's first dimension), found
        by ``find(values, options, marker)``; options are the spec's with the marker's own on
        top. A quadrant's populations share one placement (kept per group)."""
        key = pop.group or pop.name
        if key in self._groups:
            return self._groups[key]
        dims = spec.get("dims") or {pop.gate.dims[0].marker: {}}
        shared = {k: v for k, v in spec.items()
                  if k not in ("method", "dims", "within", "among")}
        if spec.get("among") is not None:
            idx = self._among(idx, spec["among"])
            self._n_among[key] = int(idx.size)
        cuts: dict[str, float] = {}
        info: dict[str, dict] = {}
        problems = []
        for marker, opts in dims.items():
            dim = pop.gate.dims[_dim_named(pop.gate, marker)]
            own = {k: v for k, v in (opts or {}).items() if v is not None}
            # `within`: the cut is found on the events inside ranges of the gate's other
            # dimensions (IgD between switched and unswitched memory: CD27+ cells only).
            sub = self._within(pop.gate, idx, own.pop("within", spec.get("within")))
            try:
                cuts[marker], info[marker] = find(self.values(dim, sub), {**shared, **own},
                                                  marker)
            except _Fallback as why:
                problems.append(f"{marker}: {why}")
        if problems and not cuts:
            raise _Fallback("; ".join(problems))
        out = {"cuts": cuts, "info": info, "partial": "; ".join(problems)}
        self._groups[key] = out
        return out

    def _among(self, idx: np.ndarray, other: str) -> np.ndarray:
        """The events of ``idx`` that also belong to population ``other`` (gated earlier):
        a cut found on the cells a gater would look at, while the gate applies to more (B
        cells cut on CD19 where the lymphocytes' CD19− peak ends, applied to lymphocytes and
        blasts, whose monocytes would move that end)."""
        member = self.membership.get(str(other))
        if member is None:  # the template names it (checked on loading): not measured here
            raise _Fallback(f"among: {other!r} was not gated in this sample")
        return idx[member[idx]]

    def _within(self, gate: Gate, idx: np.ndarray, ranges: dict | None) -> np.ndarray:
        """The events of ``idx`` inside ``{marker: [lo, hi]}`` ranges of the gate's dims."""
        for other, (lo, hi) in (ranges or {}).items():
            j = _dim_named(gate, other)
            idx = idx[self.space.in_range(gate.dims[j], idx, lo, hi)]
        return idx

    def _valley(self, pop: Population, spec: dict, idx: np.ndarray) -> tuple[Gate, dict]:
        gate = _rectangle(pop, "valley")

        def find(v: np.ndarray, opts: dict, marker: str) -> tuple[float, dict]:
            if not opts.get("window"):
                raise TemplateError(f"population {pop.name!r}: valley needs a window for "
                                    f"{marker}")
            return find_valley(v, tuple(opts["window"]),
                               min_events=int(spec.get("min_events", 100))), {}

        found = self._cuts(pop, spec, idx, find)
        placed: dict[str, Any] = dict(found["cuts"])
        if found["partial"]:
            placed["partial_fallback"] = found["partial"]
        return _move_bounds(gate, found["cuts"], spec), placed

    def _tail(self, pop: Population, spec: dict, idx: np.ndarray) -> tuple[Gate, dict]:
        gate = _rectangle(pop, "tail")

        def find(v: np.ndarray, opts: dict, marker: str) -> tuple[float, dict]:
            side = opts.get("side")
            if side not in ("low", "high"):
                raise TemplateError(f"population {pop.name!r}: tail needs side: low or high "
                                    f"for {marker}")
            try:
                got = tail_threshold(
                    v, side, window=_pair(opts.get("window")),
                    peak_window=_pair(opts.get("peak_window")),
                    rule=str(opts.get("rule", "slope")), tol=float(opts.get("tol", 0.05)),
                    n_sd=float(opts.get("n_sd", 2.5)),
                    prefer_valley=bool(opts.get("prefer_valley", True)),
                    min_events=int(opts.get("min_events", 100)))
            except ValueError as exc:
                raise TemplateError(f"population {pop.name!r}: {exc}") from exc
            return got["threshold"], got

        found = self._cuts(pop, spec, idx, find)
        placed: dict[str, Any] = {}
        for marker, t in found["cuts"].items():
            got = found["info"][marker]
            placed.update({marker: t, f"peak_{marker}": got["peak"],
                           f"sd_{marker}": got["sd"], f"rule_{marker}": got["rule"]})
        if found["partial"]:
            placed["partial_fallback"] = found["partial"]
        return _move_bounds(gate, found["cuts"], spec), placed

    def _relative(self, pop: Population, spec: dict) -> tuple[Gate, dict]:
        gate = _rectangle(pop, "relative")
        ref = spec.get("reference")
        dims = spec.get("dims")
        if not ref or not isinstance(dims, dict) or not dims:
            raise TemplateError(f"population {pop.name!r}: relative needs a reference and "
                                "dims: {marker: {below: k} or {above: k}}")
        windows = spec.get("window") or {}
        if not isinstance(windows, dict):
            raise TemplateError(f"population {pop.name!r}: relative's window is per marker: "
                                "{CD38: [lo, hi]}")
        if ref not in self.membership:
            raise _Fallback(f"reference population {ref!r} not available")
        ref_idx = _subsample(np.flatnonzero(self.membership[ref]), 50_000)
        min_events = int(spec.get("min_events", 50))
        mins, maxs = list(gate.mins), list(gate.maxs)
        placed: dict[str, Any] = {"reference": ref, "n_reference": int(ref_idx.size)}
        problems = []
        for marker, opts in dims.items():
            opts = opts or {}
            i = _dim_named(gate, marker)
            asks = [(side, opts.get(side), opts.get(f"{side}_by")) for side in ("below", "above")
                    if opts.get(side) is not None or opts.get(f"{side}_by") is not None]
            if not asks:
                raise TemplateError(f"population {pop.name!r}: relative needs below, above, "
                                    f"below_by or above_by for {marker}")
            v = self.values(gate.dims[i], ref_idx)
            v = v[np.isfinite(v)]
            if v.size < min_events:
                problems.append(f"{marker}: reference {ref!r} has {v.size} events")
                continue
            window = opts.get("window") or windows.get(marker)
            for side, k_sd, by in asks:
                stat = opts.get("stat") or ("peak" if side == "below" else "median")
                try:
                    cut, loc, sd = relative_cut(v, side, n_sd=k_sd, by=by, stat=stat)
                except ValueError as exc:
                    raise TemplateError(f"population {pop.name!r}: {exc}") from exc
                except _Fallback as why:
                    problems.append(f"{marker}: {why}")
                    continue
                if window and not window[0] <= cut <= window[1]:
                    problems.append(f"{marker}: cut {cut:.3g} outside {list(window)}")
                    continue
                # By default a cut below the reference is the gate's upper bound; `bound: min`
                # makes it a floor instead (mature B: CD20 down to well below the B peak).
                bound = opts.get("bound") or ("max" if side == "below" else "min")
                if bound not in ("min", "max"):
                    raise TemplateError(f"population {pop.name!r}: bound is min or max, "
                                        f"not {bound!r}")
                if bound == "max":
                    maxs[i] = cut
                else:
                    mins[i] = cut
                placed.update({f"{bound}_{marker}": cut, f"ref_{marker}": loc,
                               f"ref_sd_{marker}": sd, f"stat_{marker}": stat})
        if not any(k.startswith(("max_", "min_")) for k in placed):
            raise _Fallback("; ".join(problems) or "no cut placed")
        if problems:
            placed["partial_fallback"] = "; ".join(problems)
        return _checked(replace(gate, mins=tuple(mins), maxs=tuple(maxs))), placed

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
            sub = self._within(gate, idx, item.get("within"))
            try:
                peak = locate(self.values(gate.dims[i], sub), tuple(item["window"]),
                              stat=str(item.get("stat", "peak")),
                              min_events=int(item.get("min_events", 50)))
            except ValueError as exc:
                raise TemplateError(f"population {pop.name!r}: {exc}") from exc
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
        return _mixture_ellipse(gate, pts, density_peak_2d(pts[in_window]), spec)

    def _scatter(self, pop: Population, spec: dict, idx: np.ndarray) -> tuple[Gate, dict]:
        """The lymphocyte cloud found from the instrument's range and the data's landmarks
        (see the module docstring), then fitted as ``mixture`` does."""
        gate = pop.gate
        if len(gate.dims) != 2:
            raise TemplateError(f"population {pop.name!r}: scatter gates are 2-D (FSC, SSC)")
        sub = _subsample(idx, int(spec.get("fit_events", _MIXTURE_EVENTS)))
        lin = np.column_stack([self.space.linear_at(d, sub) for d in gate.dims])
        ranges = np.array([self._range(d, lin[:, i]) for i, d in enumerate(gate.dims)])
        window = np.asarray(spec.get("window", _SCATTER_WINDOW), dtype=float) * ranges[:, None]
        with np.errstate(invalid="ignore"):
            ok = np.all(np.isfinite(lin) & (lin > 0) & (lin >= window[:, 0])
                        & (lin <= window[:, 1]), axis=1)
        if ok.sum() < int(spec.get("min_events", 500)):
            raise _Fallback(f"{int(ok.sum())} events in the scatter window, too few")
        # Log scale: a detector's gain becomes a shift, the same for every cloud.
        found = scatter_landmark(np.log10(lin[ok, 0]), np.log10(lin[ok, 1]),
                                 min_peak=float(spec.get("min_peak", 0.1)))
        landmark = 10 ** np.asarray(found["peak"])
        box = np.asarray(spec.get("around", _SCATTER_AROUND), dtype=float) * landmark[:, None]
        near = ok & np.all((lin >= box[:, 0]) & (lin <= box[:, 1]), axis=1)
        if near.sum() < int(spec.get("min_events", 500)) // 2:
            raise _Fallback(f"{int(near.sum())} events around the scatter peak, too few")
        pts = np.column_stack([self.values(d, sub[near]) for d in gate.dims])
        peak = np.array([float(self.space.transform(d).apply(np.array([m]))[0])
                         for d, m in zip(gate.dims, landmark)])
        ellipse, placed = _mixture_ellipse(gate, pts, peak, spec)
        # How far this instrument sits from the template's default gate (linear units).
        default = np.array([float(self.space.transform(d).inverse(np.array([np.mean(e)]))[0])
                            for d, e in zip(gate.dims, gate.extent())])
        for i, axis in enumerate("xy"):
            placed.update({f"landmark_{axis}": float(landmark[i]),
                           f"range_{axis}": float(ranges[i]),
                           f"fraction_{axis}": float(landmark[i] / ranges[i]),
                           f"scale_{axis}": float(landmark[i] / default[i]),
                           f"fit_{axis}_min": float(box[i, 0]),
                           f"fit_{axis}_max": float(box[i, 1])})
        placed["candidates"] = len(found["candidates"])
        return ellipse, placed

    def _range(self, dim: Dimension, linear: np.ndarray) -> float:
        """The channel's range as decoded ($PnR over its gain), or the data's 99.9th
        percentile when $PnR is missing or the data overflow it (some exports rescale values
        but keep the acquisition $PnR)."""
        pnr = (self.space.range_top(dim) or float("nan")) + 1.0
        finite = linear[np.isfinite(linear)]
        top = float(np.percentile(finite, 99.9)) if finite.size else float("nan")
        if not (0 < pnr < float("inf")) or top > 1.05 * pnr:
            if not top > 0:
                raise _Fallback(f"no range for {dim.marker}: $PnR missing, no positive data")
            return top
        return pnr

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
        # Up to the instrument's range: a fixed 18-bit top cut 4M-scale cytometers' cells off.
        top = float(spec.get("max_area", 1.1 * self._range(gate.dims[0], area)))
        low = 1.0
        verts = ((low, lo * low), (top, lo * top), (top, hi * top), (low, hi * low))
        # Only the identity keeps a ratio band straight; other transforms would bend it.
        poly = PolygonGate(dims=tuple(replace(d, transform=Identity()) for d in gate.dims),
                           vertices=verts)
        return poly, {"ratio_mode": mode, "ratio_low": lo, "ratio_high": hi}


def _rectangle(pop: Population, method: str) -> RectangleGate:
    if not isinstance(pop.gate, RectangleGate):
        raise TemplateError(f"population {pop.name!r}: {method} moves range, rectangle or "
                            "quadrant gates")
    return pop.gate


def _pair(value: Any) -> tuple[float, float] | None:
    return None if value is None else (float(value[0]), float(value[1]))


def _move_bounds(gate: RectangleGate, cuts: dict[str, float], spec: dict) -> RectangleGate:
    """Move the bounds of ``gate`` to per-marker thresholds ``cuts``."""
    mins, maxs = list(gate.mins), list(gate.maxs)
    dims_spec = spec.get("dims") or {}
    for marker, t in cuts.items():
        i = _dim_named(gate, marker)
        # A quadrant's or range's single finite bound is the cut; a closed interval says
        # which end moves with `bound: min|max`.
        bound = (dims_spec.get(marker) or {}).get("bound") or spec.get("bound")
        if bound not in (None, "min", "max"):
            raise TemplateError(f"{marker}: bound is min or max, not {bound!r}")
        if mins[i] is not None and maxs[i] is not None and bound is None:
            raise TemplateError(f"{marker}: the gate's range is closed at both ends; say which "
                                "end the cut moves with bound: min or max")
        if mins[i] is not None and bound in (None, "min"):
            mins[i] = t
        if maxs[i] is not None and bound in (None, "max"):
            maxs[i] = t
    return _checked(replace(gate, mins=tuple(mins), maxs=tuple(maxs)))


def _checked(gate: RectangleGate) -> RectangleGate:
    """The gate, unless placed cuts left a dimension empty (then fall back, saying so)."""
    for d, lo, hi in zip(gate.dims, gate.mins, gate.maxs):
        if lo is not None and hi is not None and lo >= hi:
            raise _Fallback(f"{d.marker}: placed cuts cross ({lo:.3g} ≥ {hi:.3g})")
    return gate


def _mixture_ellipse(gate: Gate, pts: np.ndarray, peak: np.ndarray,
                     spec: dict) -> tuple[EllipseGate, dict]:
    """The mixture components of ``pts`` at ``peak`` as one ellipse at Mahalanobis distance²
    ``distance_square`` (see :func:`~immunoprofile.gating.landmarks.mixture_cloud`)."""
    center, cov, placed = mixture_cloud(
        pts, peak, components=int(spec.get("components", 5)),
        min_weight=float(spec.get("min_weight", 0.02)),
        merge_distance=float(spec.get("merge_distance", 3.0)))
    d2 = float(spec.get("distance_square", 9.0))
    placed["distance_square"] = d2
    return EllipseGate(dims=gate.dims, mean=tuple(center),
                       covariance=tuple(map(tuple, cov)), distance_square=d2), placed


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
