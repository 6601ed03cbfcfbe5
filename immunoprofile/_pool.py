"""Worker processes of local pools (the batch's samples, the comparison's models).

On Linux workers are forked from a process that has already imported the code they run, so
they start at once instead of each re-importing it; elsewhere they are spawned (fork is unsafe
on macOS and absent on Windows). Each worker uses one BLAS/OpenMP thread (a pool of processes
each using every core only fights over them) and dies with the process that started it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context
from multiprocessing.context import BaseContext


def pool_context() -> BaseContext:
    """fork on Linux, spawn elsewhere."""
    return get_context("fork" if sys.platform.startswith("linux") else "spawn")


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def worker_init(parent: int | None = None) -> None:
    """Pool-worker start: libraries loaded from now on (SciPy's OpenBLAS, OpenMP) get one
    thread (dask's nanny does the same for its workers), and on Linux the worker dies with
    the run that started it (a killed ``gate`` must not leave workers writing parts).

    Parameters
    ----------
    parent
        The starting process's pid: a worker whose parent is already gone exits at once.
    """
    for var in _THREAD_VARS:
        os.environ[var] = "1"
    if parent is not None and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):  # no prctl: the pool's own shutdown still applies
            return
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)


_PR_SET_PDEATHSIG = 1


@contextmanager
def one_thread() -> Iterator[None]:
    """One BLAS/OpenMP thread for the libraries already loaded, restored afterwards."""
    try:
        from threadpoolctl import threadpool_limits  # optional: scikit-learn brings it
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1):
        yield


#: A container's CPU quota (cgroup v2), as ``docker --cpus`` sets it.
_CPU_MAX = "/sys/fs/cgroup/cpu.max"


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity (``taskset``, a scheduler's
    allocation), capped by a container's CPU quota where one is set (``os.cpu_count()``
    counts the machine's)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        with open(_CPU_MAX) as limits:
            quota, period = limits.read().split()[:2]
        if quota != "max":
            cores = min(cores or 1, max(1, int(quota) // int(period)))
    except (OSError, ValueError):  # no cgroup v2 quota (macOS, older Linux): the affinity
        pass
    return cores or 1


def in_pool_worker() -> bool:
    """True in a worker of a local pool (``worker_init`` gave every library one thread, as
    each worker has one core): no threads of its own either."""
    return os.environ.get("OMP_NUM_THREADS") == "1"


def in_threads(kernel: Callable[..., None], n: int, *args: object,
               min_items: int = 100_000) -> None:
    """``kernel(start, stop, *args)`` over ``[0, n)`` in one slice per core, in threads.

    For compiled loops that release the GIL (numba ``nogil``) and write their own slice of an
    output: numba's own parallel loops run on GNU OpenMP, which kills a process that forks
    after using it, and the batch and the comparison fork their workers. The threads end
    before this returns. One slice inside pool workers (``worker_init`` sets one thread) or
    below ``min_items`` items per slice.
    """
    slices = 1 if in_pool_worker() else max(1, min(usable_cores(), n // min_items))
    if slices == 1:
        kernel(0, n, *args)
        return
    bounds = [n * k // slices for k in range(slices + 1)]
    pool = _threads()
    # The calling thread takes the first slice: one hand-off fewer.
    rest = [pool.submit(kernel, bounds[k], bounds[k + 1], *args) for k in range(1, slices)]
    kernel(bounds[0], bounds[1], *args)
    for done in rest:
        done.result()


_THREADS: dict[int, ThreadPoolExecutor] = {}
_THREADS_LOCK = threading.Lock()


def _threads() -> ThreadPoolExecutor:
    # One pool per process, kept: starting threads for every gate cost a millisecond each. A
    # forked child inherits the parent's pool object but not its threads, so it makes its own.
    pid = os.getpid()
    with _THREADS_LOCK:
        if pid not in _THREADS:
            _THREADS.clear()
            _THREADS[pid] = ThreadPoolExecutor(max_workers=max(1, usable_cores() - 1),
                                               thread_name_prefix="immunoprofile")
        return _THREADS[pid]
