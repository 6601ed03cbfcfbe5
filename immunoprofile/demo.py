"""``immunoprofile demo``: the whole journey on a small simulated trial.

simulate → gate → AnnData per timepoint → clustering and UMAP → cytokines and clinical
indexes → arm comparison → report, with progress at every stage, ending with where the report
is and the headline findings per arm, computed from the comparison tables.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

KEY_POPULATIONS = ("Treg", "B cells", "Plasmablasts", "Naive B", "Switched memory B",
                   "Transitional B", "Plasma cells")


@dataclass
class DemoResult:
    """Where the demo wrote things and what it found."""

    out: Path
    run: Path
    report: Path
    headlines: dict[str, list[str]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def headline_findings(abundance: pd.DataFrame, *, fdr: float = 0.05,
                      per_arm: int = 6) -> dict[str, list[str]]:
    """Per arm, the strongest population changes against control at FDR < ``fdr``.

    Uses ``change_vs_control`` rows (a change from baseline beyond the control arm's): for
    each population the most significant visit, frequency among lymphocytes where tested, as
    an odds ratio. Arms with nothing significant say so.
    """
    table = abundance[(abundance["contrast_type"] == "change_vs_control")
                      & abundance["fdr"].notna()].copy()
    if "reference" in table.columns:
        # One reading per population: among lymphocytes when tested so, else vs parent.
        table["_pref"] = (table["reference"] != "parent").astype(int)
    else:
        table["_pref"] = 0
    table["_template"] = table["template"].astype(str)
    table = table[~table["_template"].str.startswith("clusters:")]
    out: dict[str, list[str]] = {}
    for arm, rows in table.groupby("arm", sort=True):
        hits = rows[rows["fdr"] < fdr].sort_values(["_pref", "fdr"], ascending=[False, True])
        hits = hits.drop_duplicates("population")
        lines = []
        for _, r in hits.sort_values("fdr").head(per_arm).iterrows():
            arrow = "up" if r["estimate"] > 0 else "down"
            ref = ("among lymphocytes" if r.get("reference", "parent") != "parent"
                   else "within its parent")
            lines.append(f"{r['population']} {arrow} at {r['timepoint']} (odds ratio "
                         f"{np.exp(r['estimate']):.2f} {ref} vs {r['reference_arm']}, "
                         f"FDR {r['fdr']:.2g})")
        out[str(arm)] = lines or [f"no population change beyond control at FDR < {fdr}"]
    return out


def run_demo(out: str | Path, *, seed: int = 0, patients_per_arm: int = 3,
             n_events: int = 20_000, visits: tuple[float, ...] = (0, 2, 12),
             workers: int | None = None,
             say: Callable[[str], None] = print) -> DemoResult:
    """Run every stage on a small simulated trial and write ``out/run/report.html``."""
    from immunoprofile.assemble import assemble_run
    from immunoprofile.batch import BatchSettings, gate_samples
    from immunoprofile.compare import compare_run
    from immunoprofile.datasets import simulate_cohort
    from immunoprofile.report import write_report

    out = Path(out)
    run = out / "run"
    timings: dict[str, float] = {}

    def stage(name: str):
        say(f"[{len(timings) + 1}] {name} ...")
        timings[name] = time.perf_counter()

    def done(name: str) -> None:
        timings[name] = time.perf_counter() - timings[name]
        say(f"    done in {timings[name]:.1f} s")

    stage("simulate a trial cohort (TEL, IL2, COMBO, SOC)")
    cohort = simulate_cohort(out / "cohort", patients_per_arm=patients_per_arm,
                             n_events=n_events, visits=visits, seed=seed)
    say("    " + cohort.summary().replace("\n", "\n    "))
    done("simulate a trial cohort (TEL, IL2, COMBO, SOC)")

    stage("gate every FCS file (treg, bcell, plasma templates)")
    batch = gate_samples(cohort.out / "samplesheet.csv", ["treg", "bcell", "plasma"], run,
                         workers=workers, settings=BatchSettings(seed=seed),
                         progress=lambda o, k, n: say(f"    {k}/{n} {o.sample_id}: {o.status}")
                         if k % 12 == 0 or k == n else None)
    done("gate every FCS file (treg, bcell, plasma templates)")
    if batch.exit_code == 1:
        raise RuntimeError(f"gating produced nothing usable: see {run / 'errors.csv'}")

    stage("AnnData per timepoint")
    for path in assemble_run(run):
        say(f"    {path.name}")
    done("AnnData per timepoint")

    stage("FlowSOM clusters, UMAP and annotation")
    from immunoprofile.cluster import cluster_run

    cluster_run(run, seed=seed)
    done("FlowSOM clusters, UMAP and annotation")

    stage("cytokines from bead-array FCS files")
    from immunoprofile.cba import quantify

    quantify(cohort.out / "cba" / "cba_sheet.csv", "bd_cba_th1_th2_th17", run / "cytokines")
    done("cytokines from bead-array FCS files")

    stage("compare arms over time (abundance, state, cytokines, clinical)")
    comparison = compare_run(run, control="SOC", baseline="W0",
                             pairs=["COMBO:IL2", "COMBO:TEL"],
                             clinical=cohort.out / "clinical.csv",
                             cytokines=run / "cytokines" / "cytokines.parquet")
    done("compare arms over time (abundance, state, cytokines, clinical)")

    stage("HTML report")
    report = write_report(run)
    done("HTML report")
    return DemoResult(out=out, run=run, report=report,
                      headlines=headline_findings(comparison.abundance), seconds=timings)
