"""Batch gating throughput and per-worker memory on 1M-event files.

Simulates ``--files`` FCS files of ``--events`` events (Treg and B-cell tubes alternating) with a
sample sheet, then runs :func:`immunoprofile.batch.gate_samples` with the shipped treg, bcell
and plasma templates (plots off, ``keep_events`` at its default) with 1 and with 2 workers and
prints samples/s, events/s and the parallel efficiency (goal: 2 workers ≥ 1.8× one).

Memory: one sample is processed in a fresh worker process (spawned, as the pool's are). Its idle
baseline is the resident set after the worker's imports; its peak is the kernel's high-water
mark (``VmHWM``, reset after the imports through ``/proc/self/clear_refs``; elsewhere
``ru_maxrss``) while it runs :func:`~immunoprofile.batch.process_sample`. The peak above
baseline is compared with the sample's event matrix, ``n_events × n_channels × 4`` bytes
(float32; goal: under 3×). A per-stage breakdown (tracemalloc, which sees numpy's buffers) and a
cProfile of one sample show where the memory and the time go.

Wall-clock figures depend on what else runs on the machine: the load average is printed with
each run. Benchmarks print; they assert nothing about time.

Run: ``python benchmarks/bench_batch.py [--files 8] [--events 1000000] [--workers 2]``
"""

from __future__ import annotations

import argparse
import cProfile
import io
import multiprocessing as mp
import os
import pstats
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import pandas as pd

from immunoprofile.batch import BatchSettings, clear_parts, gate_samples
from immunoprofile.datasets import simulate_tube
from immunoprofile.io.fcs_write import write_fcs

TEMPLATES = ["treg", "bcell", "plasma"]
MIB = 1 << 20


# -- the files ---------------------------------------------------------------------------------

def make_cohort(folder: Path, n_files: int, n_events: int) -> tuple[Path, pd.DataFrame]:
    """``n_files`` simulated tubes (treg, bcell alternating) and their sample sheet."""
    (folder / "fcs").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_files):
        kind = ("treg", "bcell")[i % 2]
        sid = f"S{i:02d}_{kind}"
        tube = simulate_tube(kind, n_events, seed=1000 + i)
        write_fcs(folder / "fcs" / f"{sid}.fcs", tube.events, tube.pnn, tube.pns,
                  spillover=tube.spillover, metadata={"$DATE": "01-JAN-2025",
                                                      "$BTIM": "09:00:00"})
        rows.append({"sample_id": sid, "path": f"fcs/{sid}.fcs", "patient_id": f"P{i // 2:02d}",
                     "arm": "SOC", "timepoint": "W0", "week": 0, "panel": kind,
                     "lymphocytes_per_ul": 1500, "n_channels": tube.events.shape[1]})
    sheet = pd.DataFrame(rows)
    path = folder / "samplesheet.csv"
    sheet.drop(columns="n_channels").to_csv(path, index=False)
    return path, sheet


# -- throughput --------------------------------------------------------------------------------

def throughput(sheet: Path, out: Path, workers: int, n_events_total: int) -> dict:
    """One timed ``gate_samples`` run (a fresh folder, so nothing is resumed)."""
    load = os.getloadavg()[0]
    cpu0 = _cpu()
    finished: list[float] = []
    t0 = time.perf_counter()
    result = gate_samples(sheet, TEMPLATES, out, workers=workers,
                          settings=BatchSettings(plots=False),
                          progress=lambda *_: finished.append(time.perf_counter()))
    seconds = time.perf_counter() - t0
    cpu = _cpu() - cpu0  # pool workers are reaped when the pool closes: they count too
    assert result.exit_code == 0, result.errors
    per_sample = [o.seconds for o in result.outcomes]
    clear_parts(out)
    # Steady state: once every worker has finished its first sample (imports and start-up
    # behind it), samples per second until the last one.
    first = finished[workers - 1]
    steady = (len(finished) - workers) / (finished[-1] - first) if finished[-1] > first else 0
    return {"workers": workers, "seconds": seconds, "first_s": finished[0] - t0,
            "samples_per_s": len(per_sample) / seconds, "steady_samples_per_s": steady,
            "events_per_s": n_events_total / seconds, "sum_sample_s": sum(per_sample),
            "cpu_s": cpu, "load_before": load, "load_after": os.getloadavg()[0],
            "subsets": result.subsets}


def _cpu() -> float:
    """User + system CPU seconds of this process and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


# -- memory in a worker process ----------------------------------------------------------------

def _status(field: str) -> int | None:
    """A VmRSS/VmHWM line of /proc/self/status in bytes (None off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the kernel's RSS high-water mark (Linux ≥ 4.0); False when not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _memory_worker(row: dict, out: str, queue) -> None:
    """In a fresh spawned process: idle baseline after imports, then one sample's peak."""
    import sklearn.mixture  # noqa: F401  (adaptive mixture gates import it on first use)

    import immunoprofile.batch as batch
    import immunoprofile.gating.qc  # noqa: F401

    batch.worker_init()
    templates = batch.resolve_templates(TEMPLATES)
    resettable = _reset_peak()
    idle = _status("VmRSS")
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    outcome = batch.process_sample(row, templates, out, BatchSettings(plots=False))
    seconds = time.perf_counter() - t0
    maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if idle is not None and resettable:
        peak, base = _status("VmHWM"), idle
    else:  # ru_maxrss: the peak since the process started (imports included)
        peak, base = maxrss_after, maxrss_before
    queue.put({"status": outcome.status, "idle": base, "peak": peak, "seconds": seconds,
               "method": "VmHWM" if resettable and idle is not None else "ru_maxrss"})


def worker_memory(row: dict, out: Path) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_memory_worker, args=(row, str(out), queue))
    proc.start()
    result = queue.get(timeout=600)
    proc.join()
    return result


def _stages_worker(row: dict, queue) -> None:
    """tracemalloc per stage of one sample: what each step allocates at its peak."""
    import sklearn.mixture  # noqa: F401  (else its import counts as the first gate's memory)

    import immunoprofile.batch as batch
    from immunoprofile.errors import PanelError
    from immunoprofile.gating import gate_sample, prepare_sample
    from immunoprofile.gating.qc import acquisition_qc
    from immunoprofile.io.fcs import read_fcs

    batch.worker_init()
    templates = batch.resolve_templates(TEMPLATES)
    settings = BatchSettings(plots=False)
    tracemalloc.start()
    rows = []

    def stage(name, fn):
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        t0 = time.perf_counter()
        value = fn()
        seconds = time.perf_counter() - t0
        after, peak = tracemalloc.get_traced_memory()
        rows.append({"stage": name, "seconds": round(seconds, 2),
                     "peak_above_start_MiB": round((peak - before) / MIB, 1),
                     "held_after_MiB": round(after / MIB, 1)})
        return value

    sample = stage("read_fcs", lambda: read_fcs(row["path"]))
    mask = stage("acquisition QC", lambda: acquisition_qc(sample).mask)
    results = []
    for t in templates:
        try:
            prepared = prepare_sample(sample, t)
        except PanelError:
            continue
        results.append(stage(f"gate {t.name}", lambda p=prepared: gate_sample(
            p, sample_id=row["sample_id"], event_mask=mask)))
    stage("event subsample", lambda: batch.kept_events(results, mask, settings,
                                                       row["sample_id"]))
    queue.put((sample.events.nbytes, rows))


def memory_stages(row: dict) -> tuple[int, pd.DataFrame]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_stages_worker, args=(row, queue))
    proc.start()
    nbytes, rows = queue.get(timeout=600)
    proc.join()
    return nbytes, pd.DataFrame(rows)


def profile_one(row: dict, out: Path, top: int = 14) -> str:
    """cProfile of one sample in this process (after a warm-up sample), by cumulative time."""
    import immunoprofile.batch as batch

    templates = batch.resolve_templates(TEMPLATES)
    settings = BatchSettings(plots=False)
    batch.process_sample(row, templates, out / "warm", settings)
    prof = cProfile.Profile()
    prof.enable()
    batch.process_sample(row, templates, out / "profiled", settings)
    prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(top)
    lines = text.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if "ncalls" in line)
    return "\n".join(line.replace(str(Path(sys.prefix)), "<venv>")
                     for line in lines[start:start + top + 1])


# -- main --------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=2, help="the parallel run's workers")
    ap.add_argument("--no-profile", action="store_true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_batch_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        sheet, rows = make_cohort(tmp / "cohort", args.files, args.events)
        total = args.files * args.events
        print(f"{args.files} files × {args.events:,} events simulated in "
              f"{time.perf_counter() - t0:.0f} s; {os.cpu_count()} CPUs; templates "
              f"{', '.join(TEMPLATES)}; plots off, keep_events {BatchSettings().keep_events:,}")

        runs = [throughput(sheet, tmp / f"run_w{w}", w, total) for w in (1, args.workers)]
        pd.testing.assert_frame_equal(runs[0]["subsets"], runs[1]["subsets"])
        table = pd.DataFrame([{k: v for k, v in r.items() if k != "subsets"} for r in runs])
        print("\nthroughput (same tables from both runs; first_s: the first sample done; "
              "steady: after every worker's first sample):")
        print(table.to_string(index=False, formatters={
            "seconds": "{:.1f}".format, "first_s": "{:.1f}".format,
            "samples_per_s": "{:.3f}".format, "steady_samples_per_s": "{:.3f}".format,
            "events_per_s": "{:,.0f}".format, "sum_sample_s": "{:.1f}".format,
            "cpu_s": "{:.1f}".format, "load_before": "{:.1f}".format,
            "load_after": "{:.1f}".format}))
        speedup = runs[0]["seconds"] / runs[1]["seconds"]
        steady = runs[1]["steady_samples_per_s"] / max(runs[0]["steady_samples_per_s"], 1e-9)
        print(f"speedup {args.workers} workers vs 1: {speedup:.2f}× end to end (parallel "
              f"efficiency {speedup / args.workers:.0%}; goal ≥ {0.9 * args.workers:.1f}×), "
              f"{steady:.2f}× in the steady state; CPU seconds "
              f"{runs[1]['cpu_s'] / runs[0]['cpu_s']:.2f}× one worker's")

        print("\nper-worker memory, one sample in a fresh spawned worker:")
        base = tmp / "cohort"
        mem_rows = []
        for _, r in rows.drop_duplicates("panel").iterrows():
            row = {k: r[k] for k in ("sample_id", "patient_id", "arm", "timepoint", "week",
                                     "panel", "lymphocytes_per_ul")}
            row["path"] = str(base / r["path"])
            m = worker_memory(row, tmp / "mem")
            matrix = args.events * int(r["n_channels"]) * 4
            mem_rows.append({"sample": r["sample_id"], "channels": int(r["n_channels"]),
                             "matrix_MiB": matrix / MIB, "idle_MiB": m["idle"] / MIB,
                             "peak_MiB": m["peak"] / MIB,
                             "above_idle_MiB": (m["peak"] - m["idle"]) / MIB,
                             "× matrix": (m["peak"] - m["idle"]) / matrix,
                             "seconds": m["seconds"], "method": m["method"]})
        mem = pd.DataFrame(mem_rows)
        print(mem.to_string(index=False, float_format="{:.1f}".format))
        print(f"goal: peak above idle < 3× the event matrix -> worst "
              f"{mem['× matrix'].max():.2f}×")

        bcell = rows[rows["panel"] == "bcell"].iloc[0]
        row = {**{k: bcell[k] for k in ("sample_id", "patient_id", "arm", "timepoint", "week",
                                        "panel", "lymphocytes_per_ul")},
               "path": str(base / bcell["path"])}
        nbytes, stages = memory_stages(row)
        print(f"\nwhere one B-cell sample's memory goes (tracemalloc; events matrix "
              f"{nbytes / MIB:.0f} MiB):")
        print(stages.to_string(index=False))
        if not args.no_profile:
            print("\nwhere one B-cell sample's time goes (cProfile, cumulative):")
            print(profile_one(row, tmp / "prof"))


if __name__ == "__main__":
    main()
