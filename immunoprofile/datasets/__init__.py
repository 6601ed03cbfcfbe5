"""Simulated SLE trial cohorts with known truth (FCS files, sample sheet, truth tables).

``simulate_cohort`` writes a whole randomised trial; ``simulate_tube`` makes one acquisition
in memory (e.g. a 1M-event file for benchmarks). ``POPULATIONS`` and ``population_members``
say which per-event labels make up each canonical population. ``TubeParams(realistic=True,
instrument=..., export=...)`` (and the same options of ``simulate_cohort``) give the files the
overlapping shapes, instrument scales (:data:`INSTRUMENTS`) and gated exports of real files.
"""

from immunoprofile.datasets._cohort import POPULATIONS, population_members, simulate_cohort
from immunoprofile.datasets._events import (
    SimulatedTube,
    TubeParams,
    leaf_labels,
    simulate_tube,
    spillover_matrix,
    tube_labels,
)
from immunoprofile.datasets._instruments import INSTRUMENTS, Instrument
from immunoprofile.datasets._realistic import REALISTIC_DEFAULT
from immunoprofile.datasets._trial import SimulatedCohort, days_since_last_il2_dose
from immunoprofile.datasets.counts import SimulatedCounts, simulate_counts

__all__ = [
    "INSTRUMENTS",
    "POPULATIONS",
    "REALISTIC_DEFAULT",
    "Instrument",
    "SimulatedCohort",
    "SimulatedCounts",
    "SimulatedTube",
    "TubeParams",
    "days_since_last_il2_dose",
    "leaf_labels",
    "population_members",
    "simulate_cohort",
    "simulate_counts",
    "simulate_tube",
    "spillover_matrix",
    "tube_labels",
]
