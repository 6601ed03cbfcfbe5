"""Acquisition QC before gating: margin events and time windows with an abnormal flow rate or a
shifted signal, returned as a mask with the reasons (the input events are never changed).

Re-implemented from the published methods of flowAI (Monaco et al. 2016) and PeacoQC (Emmaneel
et al. 2022), not their code. Margins: events at the top of a channel's range ($PnR - 1 decoded
as the reader decodes values) or below a negative floor, on FSC-A and SSC-A. Time: equal-time
windows on the Time channel (whole ticks of a coarse clock; resets joined into one clock).
Flow rate: each window's log rate against the trend most events saw (a running median of
the windows not grossly off the typical rate), in Poisson errors inflated by
the over-dispersion between neighbours. Signal: per channel, the median of each density peak
(PeacoQC's peak trajectories, arcsinh scale) per window, in sampling errors; the run is cut
into segments of constant level (binary segmentation, as flowAI's changepoints) and segments
or windows away from the level shared by most events, in two or more channels, are flagged.
Safe on real files: a channel is judged by its brightest peak (faults scale signals; negative
peaks also move with background and with the mix of cells), a shift must be large against the
peak's own width, not only significant, and a file that would lose more than half its events
to the time-based checks keeps them with a flag (QC never gates the minority of a run).
Flagged stretches drop lone windows, close small gaps and have their edges refitted (a CUSUM
for rate steps, a ramp-or-step fit for signal), since a clog's or drift's edge windows are
only partly affected.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import ndimage, stats
from scipy.signal import find_peaks

from immunoprofile.io.fcs import FCSSample
from immunoprofile.panel import resolve_markers

__all__ = ["REASONS", "QCResult", "acquisition_qc"]

REASONS = ("margin", "flow_rate", "signal_shift")
_SCATTER = {"FSC-A": "FSC-H", "SSC-A": "SSC-H"}  # margin channels, with their fallbacks
_NOT_FLUOR = re.compile(r"^(HDR-|EVENT|COUNT|INDEX|SORT|TIME)|-W$", re.IGNORECASE)  # MACSQuant
_FULL_RANGE = 262144.0  # the 18-bit scale the conventional arcsinh cofactor 150 is meant for
_COFACTOR = 150.0
_MIN_RATE_CHANGE = 0.2  # log units (±22%): smaller rate changes are ignored however significant
_GROSS_RATE = math.log(3.0)  # windows this far off the typical rate stay out of the trend
_TREND_SPAN = 0.25  # running-median span of the rate trend, as a share of the windows
_MIN_SIGNAL_SHIFT = 0.2  # arcsinh units (~20% of a bright signal; batch shifts are σ 0.08)
_MIN_LINEAR_SHIFT = 50.0  # ... and at least this on the 18-bit scale (a negative's SD is 60-150)
_MIN_BASIN = 0.10  # a density peak holding fewer events is merged into its neighbour
_MIN_IN_BASIN = 10  # events a window needs in a peak's basin for that peak's median
_ALLOWANCE = 2.0  # CUSUM allowance (SD) for rate edges: a clog starts and ends at once
_CUSUM_LIMIT = 1.5  # SD the sum may fall below its peak before the search stops
_EDGE_REACH = 30  # windows an edge fit looks at on either side of a stretch's edge
_MAX_GAP = 2  # clean windows between two flagged stretches that are closed
_LONG = 5  # windows a segment needs for one channel alone to flag it
_FLAG_PCT = 1.0  # a check removing at least this % of events is named in the flags
_MAX_WINDOWS = 200  # by default
_MAX_WINDOWS_ASKED = 2000  # when asked for more (Theil–Sen and segmentation grow with it)
_MIN_WINDOWS = 10


@dataclass
class QCResult:
    """Outcome of :func:`acquisition_qc`.

    Attributes
    ----------
    mask
        Boolean per event, True where the event passes every check.
    removed
        Events removed per reason (:data:`REASONS`); an event failing several counts in each.
    n_events, n_removed
        Events in the sample and events failing any check.
    windows
        One row per time window: ``start``, ``end`` (Time units, on a clock joined across
        resets), ``n_events``, ``rate`` (per Time unit), ``rate_z``, ``signal_z`` (largest |z|
        of the peak medians), ``flagged_rate``, ``flagged_signal`` and ``median_<$PnN>``
        (linear) per signal channel; empty when the time-based checks did not run.
    flags, params
        Human-readable warnings; the settings and channels used.
    """

    mask: np.ndarray
    removed: dict[str, int]
    n_events: int
    n_removed: int
    windows: pd.DataFrame
    flags: list[str] = field(default_factory=list)
    params: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """A flat dict for one row of ``qc.csv``."""
        w = self.windows
        flagged = int((w["flagged_rate"] | w["flagged_signal"]).sum()) if len(w) else 0
        pct = 100.0 * self.n_removed / self.n_events if self.n_events else 0.0
        return {"n_events": self.n_events, "n_removed": self.n_removed,
                "pct_removed": round(pct, 3),
                **{f"removed_{r}": int(self.removed.get(r, 0)) for r in REASONS},
                "n_windows": len(w), "n_windows_flagged": flagged, "flags": "; ".join(self.flags)}


def acquisition_qc(
    sample: FCSSample,
    *,
    channels: list[str] | None = None,
    time_channel: str | None = None,
    margin: bool = True,
    flow_rate: bool = True,
    signal: bool = True,
    window_seconds: float | None = None,
    n_windows: int | None = None,
    max_rate_deviation: float = 6.0,
    max_signal_deviation: float = 6.0,
    min_events_per_window: int = 50,
    margin_fluorescence: bool = False,
    margin_range: tuple[float, float] = (-0.005, 1.0),
    min_shift_sd: float = 0.3,
    max_removed_pct: float = 50.0,
) -> QCResult:
    """Flag margin events and time windows with an abnormal flow rate or signal.

    Parameters
    ----------
    sample
        The decoded data set (raw, uncompensated values are fine; nothing is modified).
    channels
        Markers or $PnN names for the signal check (and fluorescence margins); default all
        fluorescence channels (not scatter, Time, pulse widths or instrument counters).
    time_channel
        Marker or $PnN of the Time channel; default the channel the panel resolves as ``Time``.
        Without one the time-based checks are skipped with a flag.
    margin, flow_rate, signal
        Which checks to run.
    window_seconds, n_windows
        Window width in Time units (seconds when the file has $TIMESTEP) or number of windows
        (at most 2000); default one window per ``2 * min_events_per_window`` events, at most
        200.
    max_rate_deviation, max_signal_deviation
        Thresholds in robust standard errors (6, as PeacoQC's MAD rule: hundreds of windows are
        tested).
    min_events_per_window
        Windows with fewer events get no signal medians (a clog's windows are judged by rate).
    margin_fluorescence
        Also remove events at the margins of the signal channels.
    margin_range
        Fractions of each channel's top of range: events at or below the first, or at or above
        the second, are margin events (DOMAIN's gating margin 2.5e5 is ``(-0.005, 0.954)``).
    min_shift_sd
        A signal shift counts only when it moves a channel's brightest peak by at least this
        many of the peak's robust SDs over the whole file (significance alone is not enough:
        over thousands of events a tiny drift is significant). Negative peaks moving alone
        are not counted: faults scale signals, so they move positive peaks too (the real
        flowsom 68983 LSR file has PE negatives drifting by 0.65 SD, positives steady).
    max_removed_pct
        If a time-based check (flow rate, signal) would remove more than this share of the
        file, its events are kept and a flag says so, and the same for both together: QC
        never gates the minority of a file (the window table still shows what was found).

    Returns
    -------
    QCResult
        The mask, events removed per reason, the window table, flags and settings.

    Raises
    ------
    PanelError
        ``channels`` or ``time_channel`` names something the file does not carry.
    """
    n, table = sample.n_events, sample.channels
    t_idx, time_note = _time_index(sample, time_channel)
    flags = [time_note] if time_note else []
    sig_idx = _signal_indices(sample, channels, t_idx)
    params = {"margin": margin, "flow_rate": flow_rate, "signal": signal,
              "max_rate_deviation": max_rate_deviation,
              "max_signal_deviation": max_signal_deviation,
              "min_events_per_window": min_events_per_window, "margin_range": margin_range,
              "margin_fluorescence": margin_fluorescence, "min_shift_sd": min_shift_sd,
              "max_removed_pct": max_removed_pct,
              "time_channel": None if t_idx is None else table["pnn"][t_idx],
              "signal_channels": [table["pnn"][i] for i in sig_idx]}
    removed = dict.fromkeys(REASONS, 0)
    fail = np.zeros(n, bool)
    if margin and n:
        m_idx = _scatter_indices(table) + (sig_idx if margin_fluorescence else [])
        params["margin_channels"] = [table["pnn"][i] for i in m_idx]
        bad, notes, params["margin_counts"] = _margins(sample, m_idx, margin_range)
        flags += notes
        removed["margin"] = int(bad.sum())
        fail |= bad
    windows = _empty_windows([])
    if (flow_rate or signal) and n:
        if t_idx is None:
            flags += [] if time_note else ["no Time channel: time-based QC skipped"]
        else:
            windows, bounds, tparams, tflags = _time_qc(
                sample, t_idx, sig_idx, flow_rate, signal, window_seconds, n_windows,
                max_rate_deviation, max_signal_deviation, min_events_per_window, min_shift_sd)
            params.update(tparams)
            flags += tflags
            # A "fault" covering most of the run is the run's normal state or one QC cannot
            # judge: removing it would gate the minority. Such a check keeps its events; the
            # user decides from the flag and the window table.
            timed = np.zeros(n, bool)
            overruled = []
            for reason, col in (("flow_rate", "flagged_rate"), ("signal_shift", "flagged_signal")):
                # Windows are contiguous event ranges of the time-ordered clock.
                bad = np.repeat(windows[col].to_numpy(), np.diff(bounds)) if len(windows) else False
                if 100.0 * np.sum(bad) / n > max_removed_pct:
                    overruled.append(f"{reason.replace('_', '-')} QC would remove "
                                     f"{100.0 * np.sum(bad) / n:.1f}%")
                    continue
                removed[reason] = int(np.sum(bad))
                timed |= bad
            if 100.0 * timed.sum() / n > max_removed_pct:
                overruled.append(f"time-based QC would remove {100.0 * timed.sum() / n:.1f}%")
                removed["flow_rate"] = removed["signal_shift"] = 0
                timed[:] = False
            if overruled:
                flags.append(f"{'; '.join(overruled)} of events (more than "
                             f"{max_removed_pct:g}%): events kept, review this file")
            params["time_qc_overruled"] = bool(overruled)
            fail |= timed
    where = ", ".join(f"{c} {k}" for c, k in params.get("margin_counts", {}).items() if k)
    for reason, what in zip(REASONS, (f"margin QC ({where})", "flow-rate QC", "signal-shift QC")):
        if n and 100.0 * removed[reason] / n >= _FLAG_PCT:
            flags.append(f"{100.0 * removed[reason] / n:.1f}% of events removed by {what}")
    return QCResult(mask=~fail, removed=removed, n_events=n, n_removed=int(fail.sum()),
                    windows=windows, flags=flags, params=params)


# --------------------------------------------------------------------------- channels, margins


def _time_index(sample: FCSSample, time_channel: str | None) -> tuple[int | None, str]:
    pnn = sample.channels["pnn"].to_numpy()
    if time_channel is not None:
        name = resolve_markers(sample, [time_channel], what="acquisition QC")[time_channel]
        return int(np.flatnonzero(pnn == name)[0]), ""
    hits = np.flatnonzero(sample.channels["marker"].to_numpy() == "Time")
    if hits.size > 1:  # e.g. "TIME MSW" and "TIME LSW": neither alone is the clock
        return None, (f"several Time channels ({', '.join(pnn[hits])}): time-based QC skipped "
                      "(give time_channel)")
    return (int(hits[0]) if hits.size else None), ""


def _signal_indices(sample: FCSSample, channels: list[str] | None, t_idx: int | None) -> list[int]:
    pnn = [str(x) for x in sample.channels["pnn"]]
    if channels is not None:
        resolved = resolve_markers(sample, channels, what="acquisition QC")
        return [pnn.index(resolved[c]) for c in channels]
    out = []
    for i, (name, marker) in enumerate(zip(pnn, sample.channels["marker"])):
        if i == t_idx or str(marker).startswith(("FSC", "SSC", "Time")) or _NOT_FLUOR.search(name):
            continue
        if not (name.upper().endswith("-H") and name[:-2] + "-A" in pnn):  # area carries it
            out.append(i)
    return out


def _scatter_indices(table: pd.DataFrame) -> list[int]:
    markers = table["marker"].to_numpy()
    out: list[int] = []
    for area, height in _SCATTER.items():
        hits = np.flatnonzero(markers == area)
        out += (hits if hits.size else np.flatnonzero(markers == height)).tolist()
    return out


def _range_top(row: pd.Series) -> float:
    """The largest value the reader can decode for a channel (∞ when $PnR is unusable)."""
    pnr = float(row["pnr"])
    if not math.isfinite(pnr) or pnr <= 1:
        return math.inf
    try:
        f1, f2 = (float(v) for v in str(row["pne"]).split(","))
    except ValueError:
        f1 = f2 = 0.0
    if f1 > 0:
        return 10 ** (f1 * (pnr - 1) / pnr) * (f2 or 1.0)
    png = float(row.get("png", 1.0) or 1.0)
    return (pnr - 1) / (png if png not in (0.0, 1.0) else 1.0)


def _margins(sample: FCSSample, idx: list[int], margin_range: tuple[float, float]
             ) -> tuple[np.ndarray, list[str], dict[str, int]]:
    bad = np.zeros(sample.n_events, bool)
    notes, counts = [], {}
    for i in idx:
        x, row = sample.events[:, i], sample.channels.iloc[i]
        top = _range_top(row)
        hit = ~np.isfinite(x)
        xmax = float(x[~hit].max()) if (~hit).any() else 0.0
        if xmax > top * 1.001:
            # $PnR is not the real scale (a nominal range): only a pile-up at the data's
            # maximum shows clipping.
            notes.append(f"$PnR of {row['pnn']} ({row['pnr']:g}) is below its largest value "
                         f"({xmax:.6g}): margin taken from events piled up at the maximum")
            at_max = x == xmax
            hit |= at_max if at_max.sum() >= max(3, 1e-4 * x.size) else False
        elif math.isfinite(top):
            # float32 rounding of a value written as $PnR - 1 must still count as saturated.
            hit |= (x >= margin_range[1] * top * (1 - 1e-6)) | (x <= margin_range[0] * top)
        bad |= hit
        counts[str(row["pnn"])] = int(hit.sum())
    return bad, notes, counts


# --------------------------------------------------------------------------- time windows


def _empty_windows(names: list[str]) -> pd.DataFrame:
    cols = ["start", "end", "n_events", "rate", "rate_z", "signal_z", "flagged_rate",
            "flagged_signal", *(f"median_{c}" for c in names)]
    frame = pd.DataFrame({c: pd.Series(dtype=float) for c in cols})
    return frame.astype({"n_events": int, "flagged_rate": bool, "flagged_signal": bool})


def _clock(t: np.ndarray) -> tuple[np.ndarray, int]:
    """A non-decreasing clock from Time values that may reset: each backward jump is joined to
    the run before it by one typical inter-event step."""
    d = np.diff(t)
    back = np.flatnonzero(d < 0)
    if back.size == 0:
        return t, 0
    step = float(np.median(d[d > 0])) if (d > 0).any() else 1.0
    jump = np.zeros_like(t)
    jump[back + 1] = step - d[back]
    return t + np.cumsum(jump), int(back.size)


def _time_qc(sample, t_idx, sig_idx, flow_rate, signal, window_seconds, n_windows, k_rate,
             k_signal, min_events, min_shift_sd):
    n = sample.n_events
    pnn = [str(sample.channels["pnn"][i]) for i in sig_idx]
    names = [c if pnn.count(c) == 1 else f"{c}#{i}" for c, i in zip(pnn, sig_idx)]  # repeats
    empty = (_empty_windows(names), np.array([0, n]), {})
    t = sample.events[:, t_idx].astype(np.float64)
    if not np.isfinite(t).all():
        return (*empty, ["Time channel holds non-finite values: time-based QC skipped"])
    clock, resets = _clock(t)
    if resets > max(10, n // 1000):
        return (*empty, [f"Time is not in acquisition order ({resets} backward steps): "
                         "time-based QC skipped"])
    flags = [f"Time resets {resets} time(s): runs joined into one clock"] if resets else []
    span = clock[-1] - clock[0]
    if span <= 0:
        return (*empty, [*flags, "Time channel is constant: time-based QC skipped"])
    if n_windows is None:
        n_windows = (math.ceil(span / window_seconds) if window_seconds
                     else min(_MAX_WINDOWS, n // (2 * min_events)))
    n_windows = min(max(int(n_windows), 1), _MAX_WINDOWS_ASKED)
    uniq = np.unique(clock)
    tick = float(np.diff(uniq).min()) if uniq.size > 1 else span
    coarse = span / tick < 20 * n_windows
    if coarse:
        # A coarse clock (e.g. 10-bit Time): windows hold whole ticks, or their counts alias.
        tick = span / round(span / tick)  # float32 Time values round the ticks a little
        per = math.ceil((span / tick + 1) / n_windows)
        lo, hi = clock[0] - tick / 2, clock[-1] + tick / 2
        n_windows = math.ceil((hi - lo) / (per * tick))
        edges = np.minimum(lo + per * tick * np.arange(n_windows + 1), hi)
    else:
        edges = np.linspace(clock[0], clock[-1], n_windows + 1)
    if n_windows < _MIN_WINDOWS:
        return (*empty, [*flags, f"too few events or Time ticks for time-based QC ({n} events, "
                                 f"{n_windows} windows): skipped"])
    bounds = np.searchsorted(clock, edges, side="left")
    bounds[0], bounds[-1] = 0, n
    counts = np.diff(bounds)
    dur = np.maximum(np.diff(edges), span * 1e-9)
    rate_z, rate_dev = _rate_evidence(counts, dur)
    rate_flag = np.zeros(n_windows, bool)
    if flow_rate:
        hit = (np.abs(rate_z) > k_rate) & (np.abs(rate_dev) > _MIN_RATE_CHANGE)
        if coarse:  # the run starts and stops within a tick: its end windows are partial
            hit[[0, -1]] = False
        rate_flag = _stretches(hit, np.abs(rate_z), k_rate, rate_z[:, None], np.ones_like(hit),
                               ramp=False)
    med, sig_z, sig_flag, note = _signal_evidence(sample.events, sig_idx, counts, min_events,
                                                  k_signal, sample.channels, min_shift_sd)
    if not signal:
        sig_flag[:] = False
    elif note:
        flags.append(note)
    frame = pd.DataFrame({"start": edges[:-1], "end": edges[1:], "n_events": counts,
                          "rate": counts / dur, "rate_z": rate_z, "signal_z": sig_z,
                          "flagged_rate": rate_flag, "flagged_signal": sig_flag})
    for j, name in enumerate(names):
        frame[f"median_{name}"] = med[:, j]
    tparams = {"n_windows": n_windows, "window_width": float(edges[1] - edges[0]),
               "time_tick": tick, "time_resets": resets}
    return frame, bounds, tparams, flags


def _rate_evidence(counts: np.ndarray, dur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Robust z and deviation (log units) of each window's rate from the run's trend."""
    logr = np.log((counts + 0.5) / dur)
    x = np.arange(counts.size, dtype=float)
    # The trend is what most *events* saw. A clog can last most of the run's time while
    # holding few of its events (real files: a tenth of the rate for the last 40% of the
    # time), so windows whose rate is off the events' typical rate by a gross factor are
    # left out of the trend; a running median of the others follows slow changes of rate (a
    # tube emptying, a sample settling: not artefacts, and not always linear).
    order = np.argsort(logr)
    cum = np.cumsum(counts[order])
    typical = logr[order][np.searchsorted(cum, 0.5 * cum[-1])] if cum[-1] else np.median(logr)
    normal = np.abs(logr - typical) < _GROSS_RATE
    if normal.sum() < 3:
        normal[:] = True
    span = max(2 * (int(_TREND_SPAN * normal.sum()) // 2) + 1, 3)
    smooth = ndimage.median_filter(logr[normal], size=span, mode="nearest")
    trend = np.interp(x, x[normal], smooth)
    dev = logr - trend
    se = 1.0 / np.sqrt(np.maximum(np.exp(trend) * dur, 1.0))  # Poisson
    dn = np.diff(dev) / np.hypot(se[:-1], se[1:])
    over = max(1.0, 1.4826 * float(np.median(np.abs(dn)))) if dn.size else 1.0
    return dev / (over * se), dev


# --------------------------------------------------------------------------- signal


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


def _signal_evidence(events, idx, counts, min_events, k, table, min_shift_sd):
    """Per-window medians, largest |z| and flags of the signal check (and a note if skipped)."""
    w_n, k_n = counts.size, len(idx)
    ok = counts >= min_events
    skip = not idx or ok.sum() < _MIN_WINDOWS
    cuts: list[np.ndarray] = []
    spreads: list[np.ndarray] = []
    if not skip:
        # The cofactor follows the channel's range so files on a 0-1000 scale are treated alike.
        tops = np.array([_range_top(table.iloc[i]) for i in idx])
        cof = _COFACTOR * np.where(np.isfinite(tops), tops + 1, _FULL_RANGE) / _FULL_RANGE
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
        if good[:, j].sum() >= _MIN_WINDOWS and pair.sum() >= 5:
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
    lin = cof[owner] / _COFACTOR * _MIN_LINEAR_SHIFT

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
    return med, top_z, _stretches(flag & ok, np.nan_to_num(top_z), k, z, ok, ramp=True), ""


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


# --------------------------------------------------------------------------- stretches


def _blocks(flag: np.ndarray) -> list[tuple[int, int]]:
    edges = np.diff(np.concatenate([[0], flag.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def _close_gaps(flag: np.ndarray) -> np.ndarray:
    out = flag.copy()
    for (_, b), (a2, _) in itertools.pairwise(_blocks(flag)):
        if a2 - b <= _MAX_GAP:
            out[b:a2] = True
    return out


def _stretches(flag: np.ndarray, strength: np.ndarray, k: float, z: np.ndarray, ok: np.ndarray,
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
