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

import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import ndimage

from immunoprofile.gating._qc_signal import MIN_WINDOWS, signal_evidence
from immunoprofile.gating._qc_stretches import stretches
from immunoprofile.io.fcs import FCSSample, channel_top
from immunoprofile.panel import resolve_markers

__all__ = ["REASONS", "QCResult", "acquisition_qc"]

REASONS = ("margin", "flow_rate", "signal_shift")
_SCATTER = {"FSC-A": "FSC-H", "SSC-A": "SSC-H"}  # margin channels, with their fallbacks
_NOT_FLUOR = re.compile(r"^(HDR-|EVENT|COUNT|INDEX|SORT|TIME)|-W$", re.IGNORECASE)  # MACSQuant
_MIN_RATE_CHANGE = 0.2  # log units (±22%): smaller rate changes are ignored however significant
_GROSS_RATE = math.log(3.0)  # windows this far off the typical rate stay out of the trend
_TREND_SPAN = 0.25  # running-median span of the rate trend, as a share of the windows
_FLAG_PCT = 1.0  # a check removing at least this % of events is named in the flags
_MAX_WINDOWS = 200  # by default
_PAUSE_STEPS = 20  # a forward Time gap this many mean intervals (and a window) long is a pause
_MAX_WINDOWS_ASKED = 2000  # when asked for more (segmentation and edge fits grow with it)


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
        resets and pauses), ``n_events``, ``rate`` (per Time unit), ``rate_z``, ``signal_z``
        (largest |z| of the peak medians), ``flagged_rate``, ``flagged_signal`` and
        ``median_<$PnN>`` (linear) per signal channel; empty when the time-based checks did
        not run.
    flags, params
        Human-readable warnings; the settings and channels used.
    failed
        Per check, the events it removed: ``margin`` (events at a margin channel's limits)
        and ``time`` (events in flagged time windows, contiguous runs in file order); what a
        FlowJo export draws as its QC gates.
    """

    mask: np.ndarray
    removed: dict[str, int]
    n_events: int
    n_removed: int
    windows: pd.DataFrame
    flags: list[str] = field(default_factory=list)
    params: dict = field(default_factory=dict)
    failed: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

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
        If the time-based checks (flow rate, signal) would together remove more than this
        share of the file, the largest of them is overruled (its events kept, a flag says so)
        until the rest stays under it: QC never gates the minority of a file, and a higher cap
        never removes less (the window table still shows what was found).

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
    failed: dict[str, np.ndarray] = {}
    if margin and n:
        m_idx = _scatter_indices(table) + (sig_idx if margin_fluorescence else [])
        params["margin_channels"] = [table["pnn"][i] for i in m_idx]
        bad, notes, params["margin_counts"] = _margins(sample, m_idx, margin_range)
        flags += notes
        removed["margin"] = int(bad.sum())
        failed["margin"] = bad
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
            # Windows are contiguous event ranges of the time-ordered clock.
            bad = {reason: (np.repeat(windows[col].to_numpy(), np.diff(bounds)) if len(windows)
                            else np.zeros(n, bool))
                   for reason, col in (("flow_rate", "flagged_rate"),
                                       ("signal_shift", "flagged_signal"))}
            # Overrule the largest check until what is left stays under the cap, so a higher
            # cap never removes less.
            overruled = []
            while bad and 100.0 * np.logical_or.reduce(list(bad.values())).sum() / n \
                    > max_removed_pct:
                reason = max(bad, key=lambda r: bad[r].sum())
                overruled.append(f"{reason.replace('_', '-')} QC would remove "
                                 f"{100.0 * bad.pop(reason).sum() / n:.1f}%")
            timed = np.zeros(n, bool)
            for reason, hit in bad.items():
                removed[reason] = int(hit.sum())
                timed |= hit
            if overruled:
                flags.append(f"{'; '.join(overruled)} of events (more than "
                             f"{max_removed_pct:g}%): events kept, review this file")
            params["time_qc_overruled"] = bool(overruled)
            failed["time"] = timed
            fail |= timed
    where = ", ".join(f"{c} {k}" for c, k in params.get("margin_counts", {}).items() if k)
    for reason, what in zip(REASONS, (f"margin QC ({where})", "flow-rate QC", "signal-shift QC")):
        if n and 100.0 * removed[reason] / n >= _FLAG_PCT:
            flags.append(f"{100.0 * removed[reason] / n:.1f}% of events removed by {what}")
    return QCResult(mask=~fail, removed=removed, n_events=n, n_removed=int(fail.sum()),
                    windows=windows, flags=flags, params=params, failed=failed)


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


def _margins(sample: FCSSample, idx: list[int], margin_range: tuple[float, float]
             ) -> tuple[np.ndarray, list[str], dict[str, int]]:
    bad = np.zeros(sample.n_events, bool)
    notes, counts = [], {}
    for i in idx:
        x, row = sample.events[:, i], sample.channels.iloc[i]
        top = channel_top(row)
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


def _clock(t: np.ndarray, windows: int) -> tuple[np.ndarray, int, int]:
    """A non-decreasing clock from Time values that may reset or pause.

    Each backward jump (a reset) and each pause (a forward jump longer than one of the
    ``windows`` time windows and than ``_PAUSE_STEPS`` mean inter-event intervals, which a
    steady flow gives with probability e^-20: acquisition stopped, or a gated export lost a
    stretch) is joined to the run before it by one typical step. A pause holds no events, so
    it is no fault of the events around it; unjoined, the windows it falls in look slow and
    the flow-rate check removed their events. Returns (clock, resets, pauses).
    """
    d = np.diff(t)
    if d.size == 0:
        return t, 0, 0
    step = float(np.median(d[d > 0])) if (d > 0).any() else 1.0
    span = float(np.sum(np.where(d > 0, d, 0.0)))
    back = d < 0
    pause = d > max(_PAUSE_STEPS * span / d.size, span / max(windows, 1))
    if not (back.any() or pause.any()):
        return t, 0, 0
    jump = np.zeros_like(t)
    joined = back | pause
    jump[1:][joined] = step - d[joined]
    return t + np.cumsum(jump), int(back.sum()), int(pause.sum())


def _time_qc(sample, t_idx, sig_idx, flow_rate, signal, window_seconds, n_windows, k_rate,
             k_signal, min_events, min_shift_sd):
    n = sample.n_events
    pnn = [str(sample.channels["pnn"][i]) for i in sig_idx]
    names = [c if pnn.count(c) == 1 else f"{c}#{i}" for c, i in zip(pnn, sig_idx)]  # repeats
    empty = (_empty_windows(names), np.array([0, n]), {})
    t = sample.events[:, t_idx].astype(np.float64)
    if not np.isfinite(t).all():
        return (*empty, ["Time channel holds non-finite values: time-based QC skipped"])
    # Pauses are judged against the windows the run will have (the default count here).
    expected = n_windows or (min(_MAX_WINDOWS, n // (2 * min_events)) if not window_seconds
                             else None)
    if expected is None:
        positive = np.diff(t)
        expected = math.ceil(float(positive[positive > 0].sum()) / window_seconds) or 1
    clock, resets, pauses = _clock(t, int(expected))
    if resets > max(10, n // 1000):
        return (*empty, [f"Time is not in acquisition order ({resets} backward steps): "
                         "time-based QC skipped"])
    flags = [f"Time resets {resets} time(s): runs joined into one clock"] if resets else []
    if pauses:
        flags.append(f"Time pauses {pauses} time(s) (gaps without events): joined, no events "
                     "removed for them")
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
    if n_windows < MIN_WINDOWS:
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
        rate_flag = stretches(hit, np.abs(rate_z), k_rate, rate_z[:, None], np.ones_like(hit),
                               ramp=False)
    tops = np.array([channel_top(sample.channels.iloc[i]) for i in sig_idx])
    med, sig_z, sig_flag, note = signal_evidence(sample.events, sig_idx, counts, min_events,
                                                 k_signal, tops, min_shift_sd)
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
               "time_tick": tick, "time_resets": resets, "time_pauses": pauses}
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
