"""The review app on a 1,000-sample run: the list and a sample's page against the 1 s target.

A small simulated trial is gated, then its samples are cloned (new sample and patient ids, the
same files, tables, recorded gates and kept events) into a run of ``--samples`` samples. Timed:
ranking the run, building a browser session's document (the list), building one sample's page
(its gates on their parents' events) and recounting after a gate moves (the engine on all the
sample's events; the first recount also reads and prepares the file).

Run: ``python benchmarks/bench_review.py [--samples 1000]``; prints seconds and the ratio to the
1 s target per step.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd


def clone_run(small: Path, out: Path, n: int) -> Path:
    """A run of about ``n`` samples made of copies of ``small``'s samples."""
    import immunoprofile as ip

    src = ip.Run(small)
    sheet = pd.read_csv(src.manifest["sample_sheet"])
    sheet["path"] = [str((Path(src.manifest["sample_sheet"]).parent / p).resolve())
                     for p in sheet["path"]]
    copies = max(1, n // len(sheet))
    out.mkdir(parents=True)
    shutil.copytree(src.templates_dir, out / "templates")
    (out / ".parts").mkdir()
    (out / "events").mkdir()
    sheets, subsets, qcs = [], [], []
    for k in range(copies):
        rename = {s: f"{s}_c{k}" for s in sheet["sample_id"]}
        part = sheet.assign(sample_id=sheet["sample_id"].map(rename),
                            patient_id=sheet["patient_id"] + f"_c{k}")
        sheets.append(part)
        sub = src.subsets.copy()
        sub["sample_id"] = sub["sample_id"].astype(str).map(rename)
        sub["patient_id"] = sub["patient_id"].astype(str) + f"_c{k}"
        subsets.append(sub)
        qcs.append(src.qc.assign(sample_id=src.qc["sample_id"].astype(str).map(rename)))
        for old, new in rename.items():
            shutil.copy(src.part_gates(old), out / ".parts" / f"{new}.gates.json")
            shutil.copy(src.part_done(old), out / ".parts" / f"{new}.done.json")
            shutil.copy(src.events_path(old), out / "events" / f"{new}.parquet")
    pd.concat(sheets).to_csv(out / "samplesheet.csv", index=False)
    table = pd.concat(subsets, ignore_index=True)
    for col in ("patient_id", "sample_id"):
        table[col] = table[col].astype(str)
    table.to_parquet(out / "subsets.parquet")
    pd.concat(qcs).to_csv(out / "qc.csv", index=False)
    manifest = dict(src.manifest, sample_sheet=str(out / "samplesheet.csv"),
                    samples=len(table["sample_id"].unique()))
    (out / "run.json").write_text(json.dumps(manifest, default=str))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=1000)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    from bokeh.document import Document

    from immunoprofile.batch import BatchSettings, gate_samples
    from immunoprofile.datasets import simulate_cohort
    from immunoprofile.review.app import ReviewApp, SamplePanel
    from immunoprofile.review.editing import RunContext, SampleEditor
    from immunoprofile.review.ranking import rank_samples

    root = Path(tempfile.mkdtemp(prefix="bench_review_"))
    cohort = simulate_cohort(root / "cohort", patients_per_arm=2, n_events=20_000,
                             visits=(0, 2, 12), arms=("IL2", "SOC"), seed=4)
    gate_samples(cohort.out / "samplesheet.csv", ["treg", "bcell"], root / "small", workers=2,
                 settings=BatchSettings(plots=False, keep_events=5000))
    big = clone_run(root / "small", root / "big", args.samples)
    rows = []

    def timed(step: str, fn):
        t0 = time.perf_counter()
        value = fn()
        seconds = time.perf_counter() - t0
        rows.append({"step": step, "seconds": round(seconds, 3),
                     "ratio_to_1s": round(seconds / 1.0, 2)})
        return value

    ranking = timed("rank the samples", lambda: rank_samples(big))
    context = timed("open the run (sheet, templates)", lambda: RunContext.open(big))
    context._ranking = ranking  # the server ranks once at start (timed above), not per tab
    app = timed("a session's list page", lambda: ReviewApp(context, Document()))
    sid = str(ranking["sample_id"].iloc[0])
    template = app.template_of(sid)
    panel = timed("a sample's page (plots)",
                  lambda: SamplePanel(app, SampleEditor(context, sid, template)))
    slider = panel.sliders[0][0]
    slider.value = slider.value + 0.2
    timed("first recount (reads and prepares the file)",
          lambda: panel._moved("value_throttled", None, slider.value))
    slider.value = slider.value + 0.1
    timed("next recounts", lambda: panel._moved("value_throttled", None, slider.value))
    print(f"{len(ranking)} samples")
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
