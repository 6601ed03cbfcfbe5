"""FlowJo export at study size: ≥ 50 samples exported, read back by FlowKit, every count equal.

Simulates a trial (4 arms × 7 patients × 2 visits: 56 files per tube, 20k events each), gates
it with the shipped templates, exports each template as a FlowJo 10 workspace and has FlowKit's
``Workspace`` count every population of every sample from the workspace and the FCS files.

Run: ``python benchmarks/bench_flowjo_export.py [--patients-per-arm 7] [--events 20000]``;
prints per template the samples, populations compared, mismatches and seconds (export, FlowKit).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients-per-arm", type=int, default=7)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import flowkit as fk

    import immunoprofile as ip
    from immunoprofile.batch import BatchSettings, gate_samples
    from immunoprofile.datasets import simulate_cohort
    from immunoprofile.flowjo import export_workspace

    root = Path(tempfile.mkdtemp(prefix="bench_flowjo_"))
    cohort = simulate_cohort(root / "cohort", patients_per_arm=args.patients_per_arm,
                             n_events=args.events, visits=(0, 12), seed=5)
    sheet = cohort.out / "samplesheet.csv"
    gate_samples(sheet, ["treg", "bcell", "plasma"], root / "run", workers=args.workers,
                 settings=BatchSettings(plots=False, keep_events=200))
    run = ip.Run(root / "run")
    table = pd.read_csv(sheet)
    files = [str((sheet.parent / p).resolve()) for p in table["path"]]
    table["file"] = [Path(p).name for p in table["path"]]
    subsets = run.subsets.merge(table[["sample_id", "file"]], on="sample_id")
    rows = []
    for template in ("treg", "bcell", "plasma"):
        t0 = time.perf_counter()
        notes = export_workspace(run, template, root / f"{template}.wsp")
        t1 = time.perf_counter()
        ws = fk.Workspace(str(root / f"{template}.wsp"), fcs_samples=files)
        ws.analyze_samples(group_name=template, use_mp=False)
        report = ws.get_analysis_report()
        t2 = time.perf_counter()
        mine = subsets[(subsets["template"] == template) & subsets["measured"]]
        both = mine.merge(report, left_on=["file", "population"],
                          right_on=["sample_id", "gate_name"], suffixes=("", "_fk"))
        rows.append({"template": template, "samples": int(notes["exported"].sum()),
                     "compared": len(both), "missing": len(mine) - len(both),
                     "mismatches": int((both["count"] != both["count_fk"]).sum()),
                     "notes": int((notes["note"] != "").sum() - (~notes["exported"]).sum()),
                     "export_s": round(t1 - t0, 1), "flowkit_s": round(t2 - t1, 1)})
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
