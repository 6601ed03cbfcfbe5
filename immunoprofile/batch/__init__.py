"""Gating many samples: settings, the per-sample task and its parts, executors, the run.

``gate_samples`` is the ``immunoprofile gate`` verb. The package splits what it does:
:mod:`._settings` (what a run does, error rows), :mod:`._task` (pure: a sample-sheet row in,
the sample's rows out), :mod:`._parts` (the per-sample files, resume), :mod:`._executors`
(in-process, process pool, dask) and :mod:`._gate` (the run: tables and manifest). Plots are
passed in (``plotter``), never imported.
"""

from immunoprofile.batch._executors import run_dask, run_local, worker_init
from immunoprofile.batch._gate import BatchResult, clear_parts, gate_samples, plan, sheet_rows
from immunoprofile.batch._locked import MOVABLE_MARKERS, gate_baseline_locked, moves_with
from immunoprofile.batch._overrides import apply_overrides, run_inputs
from immunoprofile.batch._parts import (
    DEFAULT_PLOTTER,
    process_sample,
    resolve_plotter,
    resume_key,
)
from immunoprofile.batch._settings import (
    BatchSettings,
    SampleOutcome,
    error_row,
    named_in_panel,
    resolve_templates,
)
from immunoprofile.batch._task import (
    SampleWork,
    events_for_sample,
    gate_row,
    kept_events,
    qc_applies,
)
from immunoprofile.gating.rows import RARE_THRESHOLD, sha256
from immunoprofile.run import PARTS

__all__ = [
    "DEFAULT_PLOTTER",
    "MOVABLE_MARKERS",
    "PARTS",
    "RARE_THRESHOLD",
    "BatchResult",
    "BatchSettings",
    "SampleOutcome",
    "SampleWork",
    "apply_overrides",
    "clear_parts",
    "error_row",
    "events_for_sample",
    "gate_baseline_locked",
    "gate_row",
    "gate_samples",
    "kept_events",
    "moves_with",
    "named_in_panel",
    "plan",
    "process_sample",
    "qc_applies",
    "resolve_plotter",
    "resolve_templates",
    "resume_key",
    "run_dask",
    "run_inputs",
    "run_local",
    "sha256",
    "sheet_rows",
    "worker_init",
]
