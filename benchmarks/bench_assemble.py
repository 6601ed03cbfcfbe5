"""Assembly speed and memory: one timepoint of 200 samples × 10,000 events as AnnData.

A few Treg tubes are simulated and gated for real (30k events, all QC-passing events kept);
their event files are then linked under 200 new sample ids into a synthetic run folder
(subsets rows duplicated with the new ids and patients), so ``timepoint_anndata`` reads 200
event parquet files exactly as after a 200-sample ``gate`` run. Reported: assembly time (best
of ``--repeats``) with a profile of where it goes, the in-memory size of the AnnData by part,
peak RSS, the time to write it as ``.h5ad``, and the memory of a synthetic 2M × 15 AnnData of
the same layout (X float32 + ``layers['compensated']`` + obs). ``--map`` also times mapping
every event onto a FlowSOM model.

Run: ``python benchmarks/bench_assemble.py [--samples 200] [--events 10000] [--map]``
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from immunoprofile.assemble import timepoint_anndata, write_h5ad

MB = 1 << 20


def gated_sources(root: Path, n_sources: int, n_events: int) -> Path:
    """Simulate and gate ``n_sources`` patients' week-0 tubes; returns the run folder."""
    from immunoprofile.batch import BatchSettings, gate_samples, resolve_templates
    from immunoprofile.datasets import simulate_cohort
    from immunoprofile.io.samplesheet import read_samplesheet

    simulate_cohort(root / "cohort", patients_per_arm=n_sources, n_events=n_events,
                    visits=(0,), arms=("SOC",), seed=3, artefact_rate=0.0)
    sheet = read_samplesheet(root / "cohort" / "samplesheet.csv")
    gate_samples(sheet, resolve_templates(["treg"]), root / "source", workers=2,
                 settings=BatchSettings(plots=False, keep_events=n_events, qc=False))
    return root / "source"


def synthetic_run(source: Path, out: Path, n_samples: int) -> Path:
    """A run folder with ``n_samples`` Treg-tube samples whose events are the sources'."""
    subsets = pd.read_parquet(source / "subsets.parquet")
    subsets = subsets[subsets["panel"].astype(str) == "treg"]
    sources = list(dict.fromkeys(subsets["sample_id"]))
    (out / "events").mkdir(parents=True)
    shutil.copytree(source / "templates", out / "templates")
    manifest = json.loads((source / "run.json").read_text())
    manifest["inputs"] = []  # nothing to re-gate: the benchmark never asks for more events
    (out / "run.json").write_text(json.dumps(manifest))
    rows = []
    for i in range(n_samples):
        src = sources[i % len(sources)]
        sid, patient = f"S{i:03d}_W0_treg", f"S{i:03d}"
        # Symbolic links: the reader opens the same bytes, the disk holds one copy.
        os.symlink((source / "events" / f"{src}.parquet").resolve(),
                   out / "events" / f"{sid}.parquet")
        part = subsets[subsets["sample_id"] == src].copy()
        part["sample_id"] = sid
        part["patient_id"] = patient
        rows.append(part)
    table = pd.concat(rows, ignore_index=True)
    table["patient_id"] = pd.Categorical(table["patient_id"])
    table.to_parquet(out / "subsets.parquet", index=False)
    return out


def nbytes(adata) -> dict[str, float]:
    """In-memory size by part, in MB (obs deep, Python strings included)."""
    parts = {"X": adata.X.nbytes,
             "layers": sum(v.nbytes for v in adata.layers.values()),
             "obs": int(adata.obs.memory_usage(deep=True).sum()),
             "obs_names": int(adata.obs_names.memory_usage(deep=True))}
    parts["total"] = sum(parts.values())
    return {k: v / MB for k, v in parts.items()}


def synthetic_2m(like, n_events: int, n_markers: int):
    """An AnnData with ``like``'s obs layout (repeated) and ``n_markers`` float32 markers."""
    import anndata as ad

    reps = int(np.ceil(n_events / like.n_obs))
    obs = pd.concat([like.obs] * reps, ignore_index=True).iloc[:n_events]
    obs.index = pd.Index([f"{s}:{i}" for s, i in zip(obs["sample_id"], range(n_events))],
                         name="cell")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n_events, n_markers)).astype(np.float32)
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"M{i}" for i in range(n_markers)]),
                      layers={"compensated": X.copy()})


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--events", type=int, default=10_000, help="events per sample")
    parser.add_argument("--sources", type=int, default=3, help="really gated samples")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--map", action="store_true", help="also time FlowSOM mapping")
    parser.add_argument("--keep", type=Path, default=None, help="build the folders here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_assemble_"))
    t = time.perf_counter()
    # Live lymphocytes are ~40% of the simulated events: 2.8x covers 10k per sample.
    source = gated_sources(root, args.sources, int(args.events * 2.8))
    run = synthetic_run(source, root / "run", args.samples)
    print(f"setup: {args.sources} gated sources → {args.samples} samples in "
          f"{time.perf_counter() - t:.1f} s ({run})")

    rss0 = peak_rss_mb()
    times, adata, rss1 = [], None, 0.0
    for _ in range(args.repeats):
        del adata  # one AnnData at a time, as a user holds it
        t = time.perf_counter()
        adata = timepoint_anndata(run, "W0", n_per_sample=args.events)
        times.append(time.perf_counter() - t)
        rss1 = rss1 or peak_rss_mb()
    n = adata.n_obs
    print(f"timepoint_anndata: {args.samples} samples × {args.events:,} events = {n:,} × "
          f"{adata.n_vars} in {min(times):.2f} s (best of {args.repeats}; "
          f"{n / min(times) / 1e6:.2f} M events/s)")
    sizes = nbytes(adata)
    print("AnnData in memory: " + ", ".join(f"{k} {v:,.0f} MB" for k, v in sizes.items()))
    print(f"peak RSS of the process: {rss1:,.0f} MB after the first assembly, "
          f"{peak_rss_mb():,.0f} MB after all (before assembling: {rss0:,.0f} MB)")

    profile = cProfile.Profile()
    profile.enable()
    timepoint_anndata(run, "W0", n_per_sample=args.events)
    profile.disable()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(8)
    print("profile (tottime):\n" + "\n".join(
        line for line in text.getvalue().splitlines() if line.strip()[:1].isdigit()))

    t = time.perf_counter()
    path = write_h5ad(adata, root / "W0.h5ad")
    print(f"write_h5ad: {time.perf_counter() - t:.2f} s, {path.stat().st_size / MB:,.0f} MB "
          "on disk")

    big = synthetic_2m(adata, 2_000_000, 15)
    sizes = nbytes(big)
    print("2M × 15 AnnData (same obs layout): " + ", ".join(
        f"{k} {v:,.0f} MB" for k, v in sizes.items()))
    del big

    if args.map:
        import immunoprofile as ip

        fit = adata[np.random.default_rng(0).choice(n, 100_000, replace=False)].copy()
        t = time.perf_counter()
        ip.tl.flowsom(fit, n_clusters=20, xdim=20, ydim=20)
        fit_s = time.perf_counter() - t
        t = time.perf_counter()
        ip.tl.flowsom_map(adata, fit)
        print(f"FlowSOM 20×20: fit on 100k events {fit_s:.1f} s (numba compilation "
              f"included), map {n:,} events {time.perf_counter() - t:.1f} s")
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
