"""Where sample tasks run: in this process, a local process pool, or a dask cluster.

Each task is :func:`~immunoprofile.batch._parts.process_sample` on one sample-sheet row; the
executors yield the outcomes as tasks finish (the run assembles tables in sheet order).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any
from urllib.parse import urlsplit

from immunoprofile._pool import pool_context, worker_init
from immunoprofile.batch._parts import process_sample
from immunoprofile.batch._settings import BatchSettings, SampleOutcome
from immunoprofile.errors import ImmunoprofileError
from immunoprofile.template.model import Template

# Parallelism is across samples. Inside one sample the linear algebra is on tiny matrices
# (2-D mixtures, a ~20×20 spillover), where extra BLAS/OpenMP threads only spin against the
# other workers: with the libraries' default threads a sample took 2-3× longer on 2 cores.
# One task: (row, templates, run folder, settings, resume, plotter).
Task = tuple[dict, list[Template], str, BatchSettings, bool, Any, tuple]


def run_local(tasks: list[Task], workers: int) -> Iterator[SampleOutcome]:
    """Run sample tasks in this process (``workers <= 1``) or a local process pool.

    Parameters
    ----------
    tasks
        The arguments of :func:`~immunoprofile.batch._parts.process_sample`, one tuple per
        sample.
    workers
        Worker processes; at most ``2 × workers`` tasks are in flight at a time.

    Yields
    ------
    SampleOutcome
        Each task's outcome: in task order in this process, as tasks finish in a pool.
    """
    if workers <= 1:
        for task in tasks:
            yield process_sample(*task)
        return
    # One sample per worker at a time, and a bounded number of tasks in flight so memory
    # stays bounded. On Linux workers are forked from this process once it has imported the
    # gating code, so they start at once instead of each re-importing it (about 1.3 s, a
    # large share of a short batch); `worker_init` then limits each to one BLAS thread.
    # Elsewhere, spawn (fork is unsafe on macOS and absent on Windows).
    with ProcessPoolExecutor(max_workers=workers, mp_context=pool_context(),
                             initializer=worker_init, initargs=(os.getpid(),)) as pool:
        pending = set()
        queue = iter(tasks)
        for task in queue:
            pending.add(pool.submit(process_sample, *task))
            if len(pending) >= 2 * workers:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (f.result() for f in finished)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from (f.result() for f in finished)


def check_scheduler(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, before any work, when a dask scheduler cannot be reached.

    Parameters
    ----------
    address
        ``tcp://HOST:PORT`` (or ``tls://``; other protocols are left to dask).
    timeout
        Seconds to wait for the connection.

    Raises
    ------
    ImmunoprofileError
        The address is malformed or nothing answers there.
    """
    parsed = urlsplit(address if "://" in address else f"tcp://{address}")
    if parsed.scheme not in ("tcp", "tls"):
        return
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError as exc:
        raise ImmunoprofileError(f"--scheduler {address!r}: {exc}; use tcp://HOST:PORT") from exc
    if not host or not port:
        raise ImmunoprofileError(f"--scheduler {address!r} has no host or port: use "
                                 "tcp://HOST:PORT (dask's default port is 8786)")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise ImmunoprofileError(
            f"cannot reach the dask scheduler at {address} ({exc.strerror or exc}): start it "
            "with `dask scheduler` and its workers with `dask worker ADDRESS`, or check the "
            "address; nothing was gated") from exc


def run_dask(tasks: list[Task], scheduler: str) -> Iterator[SampleOutcome]:
    """Run sample tasks on a dask.distributed cluster given its scheduler address.

    Parameters
    ----------
    tasks
        The arguments of :func:`~immunoprofile.batch._parts.process_sample`, one tuple per
        sample; all are submitted at once.
    scheduler
        The scheduler's address (``tcp://HOST:PORT``), given to ``distributed.Client``.

    Yields
    ------
    SampleOutcome
        Each task's outcome, as tasks finish.
    """
    from distributed import Client, as_completed  # optional dependency, loaded when used

    with Client(scheduler, set_as_default=False) as client:
        futures = [client.submit(process_sample, *task, pure=False,
                                 key=f"sample-{task[0]['sample_id']}-{time.time_ns()}")
                   for task in tasks]
        for future in as_completed(futures, loop=client.loop):
            yield future.result()
