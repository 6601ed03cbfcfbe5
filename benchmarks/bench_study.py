"""A study grown from ~100 to ~1,000 small tubes on 2 cores: does every stage scale linearly?

For each size, simulates the trial (3,000 events per tube, the shipped templates) and runs the
CLI's stages as a user does: gate → assemble → cluster → compare → report, each in its own
process. Prints per stage the wall time, the peak memory (largest resident set of the stage's
process tree) and, from the second size on, the time ratio against the tube ratio (≤ 1 is
linear or better), plus the report's size (the page and what it loads).

With ``--dask`` the smallest study is gated a second time on a dask ``LocalCluster`` (2 worker
processes on loopback TCP, ``gate --scheduler``), its later stages rerun on that run, and every
table compared with the local pool's: subsets, QC, AnnData (events and obs), clusters, and the
comparison tables.

Run: ``python benchmarks/bench_study.py [--tubes 100,300,1000] [--workers 2] [--dask]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ARMS = 4
TUBES_PER_VISIT = 2
VISITS = "0,12"


def stage(args: list[str], cwd: Path) -> tuple[float, float]:
    """(seconds, peak MiB) of one CLI call, its worker processes included."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "immunoprofile.cli", *args], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) not in (0, 3):
        raise RuntimeError(f"{' '.join(args)} failed (exit {os.waitstatus_to_exitcode(status)}): "
                           f"{proc.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024  # KiB on Linux


def report_size(run: Path) -> float:
    """MiB of report.html and the images it loads when opened (its thumbnails)."""
    page = run / "report.html"
    files = run / "report_files"
    thumbs = sum(p.stat().st_size for p in files.glob("*")) if files.is_dir() else 0
    return (page.stat().st_size + thumbs) / 2**20


def report_open_seconds(page: Path) -> float | None:
    """Seconds until Chromium has loaded the report (None without Playwright or Chromium)."""
    import shutil

    browser_path = next((shutil.which(b) for b in ("chromium", "chromium-browser")
                         if shutil.which(b)), None)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    if browser_path is None:
        return None
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path,
                                    args=["--headless", "--no-sandbox", "--disable-gpu"])
        tab = browser.new_page()
        t0 = time.perf_counter()
        tab.goto(page.resolve().as_uri(), wait_until="load")
        seconds = time.perf_counter() - t0
        browser.close()
    return seconds


def one_size(tubes: int, workers: int, root: Path) -> list[dict]:
    per_arm = max(1, round(tubes / (ARMS * TUBES_PER_VISIT * len(VISITS.split(",")))))
    folder = root / f"study_{tubes}"
    folder.mkdir()
    stage(["simulate", "--out", "cohort", "--patients-per-arm", str(per_arm), "--events",
           "3000", "--visits", VISITS, "--seed", "1"], folder)
    n = len(pd.read_csv(folder / "cohort" / "samplesheet.csv"))
    steps = [
        ("gate", ["gate", "cohort/samplesheet.csv", "-t", "treg", "-t", "bcell", "-t", "plasma",
                  "--out", "run", "--workers", str(workers), "--no-progress"]),
        ("assemble", ["assemble", "run"]),
        ("cluster", ["cluster", "run"]),
        ("compare", ["compare", "run", "--control", "SOC", "--baseline", "W0"]),
        ("report", ["report", "run"]),
        # last, as it rewrites the clusters: with a pool capped below what the study offers,
        # the stage's peak shows what the pool costs once it stops growing
        ("cluster --max-events 100000", ["cluster", "run", "--max-events", "100000"]),
    ]
    rows = []
    for name, args in steps:
        seconds, peak = stage(args, folder)
        rows.append({"tubes": n, "stage": name, "seconds": round(seconds, 1),
                     "peak_mib": round(peak)})
    rows.append({"tubes": n, "stage": "report size (MiB)",
                 "seconds": round(report_size(folder / "run"), 2), "peak_mib": None})
    opened = report_open_seconds(folder / "run" / "report.html")
    if opened is not None:
        rows.append({"tubes": n, "stage": "report opens in Chromium (s)",
                     "seconds": round(opened, 2), "peak_mib": None})
    return rows


def dask_identity(folder: Path, workers: int) -> list[dict]:
    """Gate the study on a LocalCluster, rerun the later stages, compare every table."""
    import anndata as ad
    import numpy as np
    from distributed import LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      host="127.0.0.1", dashboard_address=None) as cluster:
        stage(["gate", "cohort/samplesheet.csv", "-t", "treg", "-t", "bcell", "-t", "plasma",
               "--out", "run_dask", "--scheduler", cluster.scheduler_address,
               "--no-progress"], folder)
    for args in (["assemble", "run_dask"], ["cluster", "run_dask"],
                 ["compare", "run_dask", "--control", "SOC", "--baseline", "W0"]):
        stage(args, folder)
    local, remote = folder / "run", folder / "run_dask"
    rows = []
    tables = ["subsets.parquet", "clusters.parquet",
              *(f"compare/{p.name}" for p in sorted((local / "compare").glob("*.parquet")))]
    for name in tables:
        a, b = pd.read_parquet(local / name), pd.read_parquet(remote / name)
        try:
            pd.testing.assert_frame_equal(a, b)
            same = "identical"
        except AssertionError as exc:
            same = f"DIFFERENT: {str(exc).splitlines()[0]}"
        rows.append({"table": name, "rows": len(a), "local vs dask": same})
    qc_a, qc_b = (pd.read_csv(r / "qc.csv").sort_values("sample_id").reset_index(drop=True)
                  for r in (local, remote))
    rows.append({"table": "qc.csv", "rows": len(qc_a),
                 "local vs dask": "identical" if qc_a.equals(qc_b) else "DIFFERENT"})
    for path in sorted((local / "anndata").glob("*.h5ad")):
        a, b = ad.read_h5ad(path), ad.read_h5ad(remote / "anndata" / path.name)
        same = (np.array_equal(np.asarray(a.X), np.asarray(b.X), equal_nan=True)
                and a.obs.drop(columns=[], errors="ignore").equals(b.obs)
                and list(a.var_names) == list(b.var_names))
        rows.append({"table": f"anndata/{path.name}", "rows": a.n_obs,
                     "local vs dask": "identical" if same else "DIFFERENT"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tubes", default="100,300,1000")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dask", action="store_true",
                        help="also gate the smallest study on a LocalCluster and compare tables")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_study_"))
    rows = []
    for k, tubes in enumerate(int(t) for t in args.tubes.split(",")):
        rows += one_size(tubes, args.workers, root)
        if args.dask and k == 0:
            same = pd.DataFrame(dask_identity(root / f"study_{tubes}", args.workers))
            print("\nthe same study on a dask LocalCluster:\n" + same.to_string(index=False),
                  flush=True)
        table = pd.DataFrame(rows)
        print(table[table["tubes"] == table["tubes"].iloc[-1]].to_string(index=False),
              flush=True)
    table = pd.DataFrame(rows)
    first = table[table["tubes"] == table["tubes"].min()].set_index("stage")
    out = []
    for (n, name), row in table.set_index(["tubes", "stage"]).iterrows():
        if n == first.index.name or name not in first.index or name.startswith("report "):
            continue
        base = first.loc[name]
        n0 = int(table["tubes"].min())
        if n == n0:
            continue
        ratio = (row["seconds"] / base["seconds"]) / (n / n0) if base["seconds"] else None
        out.append({"tubes": n, "stage": name, "time_ratio_over_tube_ratio":
                    None if ratio is None else round(ratio, 2)})
    if out:
        print("\ntime growth against tube growth (≤ 1: linear or better)")
        print(pd.DataFrame(out).to_string(index=False))


if __name__ == "__main__":
    main()
