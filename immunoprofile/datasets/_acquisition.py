"""How events reach the file: acquisition time and its artefacts, pauses, gated exports.

Time is in $TIMESTEP units (0.01 s). Flow artefacts (a clog, a drift) dim the events acquired
during them; a pause makes Time jump; a FlowJo-style export keeps only the events of one gate,
so Time keeps the holes of the events it left out (DOMAIN §2: files exported from FlowJo often
carry only the lymphocyte gate and a Time channel with gaps).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from immunoprofile.datasets._events import TubeParams

__all__ = ["EXPORTS", "LYMPHOCYTE_GATE", "acquisition_time", "add_pauses", "in_lymphocyte_gate"]

#: ``TubeParams.export`` values: ``None`` writes every acquired event; ``"lymphocytes"`` only
#: the events inside a lymphocyte FSC-A × SSC-A gate, as a FlowJo "export population" does.
EXPORTS = (None, "lymphocytes")


def acquisition_time(n: int, params: TubeParams,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted event times (0.01 s units), artefact flags and the signal factor per event."""
    duration = n / params.event_rate * 100.0
    factor = np.ones(n)
    if params.artefact == "clog":
        # A partial clog: for 5-15% of the run the rate drops to a fifth and cells pass off-core,
        # so they are dimmer and more spread.
        length = rng.uniform(0.05, 0.15) * duration
        start = rng.uniform(0.2, 0.8) * duration
        rate = 0.2
        p_in = rate * length / (rate * length + duration - length)
        n_in = rng.binomial(n, p_in)
        t_in = start + rng.random(n_in) * length
        t_out = rng.random(n - n_in) * (duration - length)
        t_out[t_out >= start] += length
        times = np.concatenate([t_in, t_out])
        flag = np.concatenate([np.ones(n_in, bool), np.zeros(n - n_in, bool)])
        order = np.argsort(times, kind="stable")
        times, flag = times[order], flag[order]
        factor[flag] = rng.uniform(0.55, 0.75) * rng.lognormal(0.0, 0.15, int(flag.sum()))
        return times, flag, factor
    times = np.sort(rng.random(n) * duration)
    flag = np.zeros(n, bool)
    if params.artefact == "drift":
        # A slow pressure/laser drift: signal ramps down to 60-75% over the rest of the run.
        start = rng.uniform(0.5, 0.8) * duration
        floor = rng.uniform(0.6, 0.75)
        flag = times >= start
        ramp = np.clip((times - start) / (0.3 * (duration - start)), 0.0, 1.0)
        factor = 1.0 - (1.0 - floor) * ramp
    elif params.artefact is not None:
        raise ValueError(f"artefact must be None, 'clog' or 'drift', not {params.artefact!r}")
    return times, flag, factor


# The lymphocyte gate an operator draws, in units of the sample's lymphocyte FSC-A and SSC-A
# medians. The real lymphocyte export 68983.fcs spans FSC-A 0.61-1.66x and SSC-A 0.30-2.26x of
# its medians (87.7k, 33.4k), with slanted polygon edges; the vertices below follow that. It
# leaves out debris, most monocytes and doublets, and keeps some dead cells, as real gates do.
LYMPHOCYTE_GATE = np.array([(0.62, 0.30), (1.30, 0.30), (1.65, 0.60), (1.65, 2.00),
                            (1.35, 2.30), (0.80, 2.30), (0.62, 1.50)])


def in_lymphocyte_gate(fsc: np.ndarray, ssc: np.ndarray, fsc_centre: float,
                       ssc_centre: float) -> np.ndarray:
    """True for events inside the lymphocyte polygon placed on the given scatter medians."""
    x = np.asarray(fsc, float) / fsc_centre
    y = np.asarray(ssc, float) / ssc_centre
    inside = np.zeros(x.shape, bool)
    vx, vy = LYMPHOCYTE_GATE[:, 0], LYMPHOCYTE_GATE[:, 1]
    for i in range(len(vx)):  # even-odd ray casting, vectorised over events
        x1, y1, x2, y2 = vx[i - 1], vy[i - 1], vx[i], vy[i]
        if y1 == y2:
            continue
        crosses = (y1 > y) != (y2 > y)
        inside ^= crosses & (x < x1 + (y - y1) * (x2 - x1) / (y2 - y1))
    return inside


def add_pauses(times: np.ndarray, n_pauses: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted Time (0.01 s units) with ``n_pauses`` acquisition pauses inserted.

    A pause (the operator stops and restarts acquisition, or tops up the sample) stops the
    events but not the clock: every later event moves 3-20 s later (assumed), so Time jumps
    while staying non-decreasing.
    """
    times = np.array(times, dtype=float)
    if n_pauses <= 0 or times.size == 0:
        return times
    span = times[-1] - times[0]
    for at, length in zip(times[0] + rng.uniform(0.1, 0.9, n_pauses) * span,
                          rng.uniform(300.0, 2000.0, n_pauses), strict=True):
        times[times >= at] += length
    return times
