"""Benchmark: reading a 1M-event x 12-channel float32 FCS 3.1 file.

Compares :func:`immunoprofile.io.fcs.read_fcs` with FlowKit's ``Sample``, FlowIO's
``FlowData`` and ``numpy.fromfile`` on the bare DATA segment (the floor: no parsing at
all). Run with ``python benchmarks/bench_read.py [--events N] [--repeat R]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from array import array
from collections.abc import Callable
from pathlib import Path

import flowio
import flowkit
import numpy as np

from immunoprofile.io.fcs import read_fcs

CHANNELS = ["FSC-A", "FSC-H", "SSC-A", "SSC-H", "CD3", "CD4", "CD8", "CD19", "CD45", "CD56",
            "Viability", "Time"]  # fmt: skip


def write_file(folder: Path, n_events: int) -> tuple[Path, int]:
    """Write the test file with FlowIO; return its path and the DATA segment's offset."""
    rng = np.random.default_rng(0)
    events = rng.lognormal(7, 1.5, size=(n_events, len(CHANNELS))).astype(np.float32)
    flat = array("f")
    flat.frombytes(events.tobytes())  # array.array avoids FlowIO's per-item conversion
    path = folder / "bench_1M_x_12.fcs"
    with path.open("wb") as fh:
        flowio.create_fcs(fh, flat, CHANNELS)
    data_start = int(path.read_bytes()[26:34])
    return path, data_start


def median_seconds(func: Callable[[], object], repeat: int) -> float:
    func()  # warm the page cache and imports
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path, data_start = write_file(Path(folder), args.events)
        count = args.events * len(CHANNELS)

        def numpy_fromfile() -> np.ndarray:
            return np.fromfile(path, dtype="<f4", count=count, offset=data_start).reshape(
                -1, len(CHANNELS)
            )

        def flowkit_sample() -> np.ndarray:
            return flowkit.Sample(path).get_events(source="raw")

        np.testing.assert_array_equal(read_fcs(path).events, numpy_fromfile())
        slow_repeat = max(1, args.repeat // 2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results = {
                "numpy.fromfile (DATA only)": median_seconds(numpy_fromfile, args.repeat),
                "immunoprofile read_fcs": median_seconds(lambda: read_fcs(path), args.repeat),
                "flowio.FlowData": median_seconds(lambda: flowio.FlowData(path), slow_repeat),
                "flowkit.Sample": median_seconds(flowkit_sample, slow_repeat),
            }
        floor = results["numpy.fromfile (DATA only)"]
        size_mb = path.stat().st_size / 1e6
        print(f"{args.events:,} events x {len(CHANNELS)} channels, float32, {size_mb:.1f} MB")
        print(f"{'reader':<28} {'median ms':>10} {'x numpy':>8}")
        for name, seconds in results.items():
            print(f"{name:<28} {seconds * 1e3:>10.1f} {seconds / floor:>8.2f}")


if __name__ == "__main__":
    main()
