"""A small memo of recent results, safe to share between threads."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class RecentResults(Generic[T]):
    """The results of the last ``size`` keys (the oldest dropped first).

    For work that callers repeat with equal inputs (a batch gates every sample with the same
    templates; templates gating one file fit the same window): the key must name the input's
    content exactly. Samples may be gated in threads (a dask worker's), hence the lock.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._values: dict[Hashable, T] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        """The result kept for ``key``, or ``compute()``'s, kept."""
        value = self._values.get(key)
        if value is None:
            value = compute()
            with self._lock:
                while len(self._values) >= self._size:
                    self._values.pop(next(iter(self._values)))
                self._values[key] = value
        return value

    def clear(self) -> None:
        """Forget every result."""
        with self._lock:
            self._values.clear()

    def __len__(self) -> int:
        return len(self._values)
