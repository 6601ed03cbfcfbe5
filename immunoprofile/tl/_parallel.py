"""Fitting many readouts' models at once: one process per core, results in input order.

Every population (× reference, × marker) is its own model, independent of the others, so a
trial's comparison is embarrassingly parallel. Workers fit with one BLAS thread each (two
processes each using every core only fight over them); results come back in the order the
readouts were given, so tables are identical whatever ``n_jobs`` is.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import pandas as pd

from immunoprofile._pool import one_thread, pool_context, usable_cores, worker_init
from immunoprofile.tl._models import fit_contrasts

#: Below this many models a pool costs more than it saves.
MIN_PARALLEL = 12

#: ``(frame, design, model_name[, fit_contrasts keyword arguments])``
Job = tuple


def resolve_jobs(n_jobs: int | None) -> int:
    """``None`` or 1: in this process; ``-1`` (or 0, or below): every core this process may
    use (:func:`~immunoprofile._pool.usable_cores`); otherwise that many."""
    if n_jobs is None:
        return 1
    if n_jobs <= 0:
        return usable_cores()
    return int(n_jobs)


def _fit(job: Job) -> pd.DataFrame:
    frame, design, model_name, *rest = job
    with one_thread():
        return fit_contrasts(frame, design, model_name=model_name, **(rest[0] if rest else {}))


def fit_all(jobs: Sequence[Job], n_jobs: int | None = None) -> list[pd.DataFrame]:
    """:func:`~immunoprofile.tl._models.fit_contrasts` of every job, in job order.

    Parameters
    ----------
    jobs
        ``(frame, design, model_name)`` per readout, optionally with a dict of further
        :func:`~immunoprofile.tl._models.fit_contrasts` arguments (``fit``, ``columns``).
    n_jobs
        Processes (see :func:`resolve_jobs`).

    Returns
    -------
    list of pandas.DataFrame
        One contrast table per job.
    """
    workers = min(resolve_jobs(n_jobs), len(jobs))
    if workers <= 1 or len(jobs) < MIN_PARALLEL:
        return [_fit(job) for job in jobs]
    chunk = max(1, len(jobs) // (4 * workers))
    with ProcessPoolExecutor(max_workers=workers, mp_context=pool_context(),
                             initializer=worker_init, initargs=(os.getpid(),)) as pool:
        return list(pool.map(_fit, jobs, chunksize=chunk))
