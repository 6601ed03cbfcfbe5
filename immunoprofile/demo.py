"""``immunoprofile demo``: the whole journey on a small simulated trial.

simulate → gate → AnnData per timepoint → clustering and UMAP → cytokines and clinical
indexes → arm comparison → report, with progress at every stage, ending with where the report
is and the headline findings per arm, computed from the comparison tables.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from immunoprofile import pl, tl
from immunoprofile.assemble import assemble_run
from immunoprofile.batch import BatchSettings, gate_samples
from immunoprofile.cba import quantify
from immunoprofile.cluster import cluster_run
from immunoprofile.compare import compare_run
from immunoprofile.datasets import simulate_cohort
from immunoprofile.report import write_report
from immunoprofile.run import CytokineRun, Run

# Scatter, singlet and viability gates are sample quality, not immunology: no headlines.
UPSTREAM_GATES = frozenset({"Lymphocytes", "Singlets", "Live lymphocytes",
                            "Lymphocytes and blasts", "Singlet lymphocytes and blasts",
                            "Live lymphocytes and blasts",
                            # the plasma template's B cells again, with the blasts: a step
                            # to plasmablasts, not a finding of its own
                            "B lineage"})
#: The simulated trial's pre-specified endpoints: what IL-2 (Treg) and telitacicept (B cells,
#: plasmablasts, plasma cells) are expected to move. The headlines report these; findings in
#: other populations are exploratory and counted, as a trial report would.
TRIAL_ENDPOINTS = ("Treg", "B cells", "Plasmablasts", "Plasma cells")


@dataclass
class DemoResult:
    """Where the demo wrote things and what it found."""

    out: Path
    run: Path
    report: Path
    headlines: dict[str, list[str]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def headline_findings(abundance: pd.DataFrame, *, fdr: float = 0.05,
                      per_arm: int = 6, endpoints: Iterable[str] | None = None
                      ) -> dict[str, list[str]]:
    """Per arm, the strongest population changes at FDR < ``fdr``, from the tables.

    For a treated arm, first its changes from baseline beyond the control arm's
    (``change_vs_control``); for an arm with none, its own changes from baseline
    (``change_from_baseline``), said so. For the control arm, its own changes from baseline
    (a trial's control should have none). Each population is reported once, at its most
    significant visit, preferring cells/µL (``reference`` ``absolute``: not compositional),
    then frequency among lymphocytes, then within its parent, then among another reference.
    Complement rows (the mirror of another population's test), cluster rows, the
    baseline-locked sensitivity rows and the upstream gates are left out.

    Parameters
    ----------
    abundance
        The differential abundance table (:func:`~immunoprofile.tl.differential_abundance`).
    fdr
        FDR threshold.
    per_arm
        Most findings listed per arm.
    endpoints
        Pre-specified endpoint populations: only these are listed, followed by one sentence
        counting the other (exploratory) populations at FDR < ``fdr``; None lists any
        population.

    Returns
    -------
    dict
        ``{arm: [sentences]}`` for every arm with a ``change_vs_control`` contrast and for
        the control arm; an arm with no finding gets one sentence saying so.
    """
    table = abundance[abundance["fdr"].notna()
                      & ~abundance["template"].astype(str).str.startswith("clusters:")
                      & ~abundance["population"].isin(UPSTREAM_GATES)].copy()
    if "gate_mode" in table.columns:
        table = table[table["gate_mode"].astype(str) != "baseline_locked"]
    if "complement_of" in table.columns:
        table = table[table["complement_of"].fillna("").astype(str) == ""]
    ref_col = table["reference"] if "reference" in table.columns else pd.Series(
        "parent", index=table.index)
    if "pvalue" not in table.columns:
        table["pvalue"] = np.nan
    # cells/µL, then among lymphocytes, then within the parent, then among another population
    # a template quotes it against (plasmablasts among B cells)
    lymphocytes = ref_col.astype(str).str.endswith("lymphocytes")
    table["_rank"] = np.select([ref_col == "absolute", lymphocytes, ref_col == "parent"],
                               [0, 1, 2], 3)
    out: dict[str, list[str]] = {}
    treated = set(table.loc[table["contrast_type"] == "change_vs_control", "arm"])
    controls = set(table.loc[table["contrast_type"] == "change_vs_control", "reference_arm"])
    for arm in [*sorted(treated), *sorted(controls - treated)]:
        kinds = ((("change_vs_control", "beyond {ref}"),
                  ("change_from_baseline", "within the arm, not beyond control"))
                 if arm in treated else (("change_from_baseline", "control arm"),))
        lines: list[str] = []
        others: set[str] = set()
        for k, (kind, against) in enumerate(kinds):
            rows = table[(table["contrast_type"] == kind) & (table["arm"] == arm)
                         & (table["fdr"] < fdr)]
            if endpoints is not None:
                if k == 0:  # exploratory findings are counted on the arm's main question
                    others = set(rows["population"].astype(str)) - set(endpoints)
                rows = rows[rows["population"].isin(list(endpoints))]
            # BH gives tied FDRs: p breaks the ties, stably
            rows = rows.sort_values(["_rank", "fdr", "pvalue"], kind="stable")
            for _, r in rows.drop_duplicates("population").sort_values(
                    ["fdr", "pvalue"], kind="stable").head(per_arm).iterrows():
                lines.append(_headline(r, against.format(ref=r["reference_arm"])))
            if lines:
                break
        what = "endpoint" if endpoints is not None else "population"
        lines = lines or [f"no {what} change at FDR < {fdr}"]
        if others:
            lines.append(f"{len(others)} other population(s) at FDR < {fdr}, exploratory "
                         "(not pre-specified): see the report")
        out[str(arm)] = lines
    return out


def _headline(r: pd.Series, note: str) -> str:
    arrow = "up" if r["estimate"] > 0 else "down"
    if r["_rank"] == 0:
        where, measure = "in cells/µL", "fold change"
    else:
        where = {1: "among lymphocytes", 2: "within its parent"}.get(
            r["_rank"], f"among {r['reference']}")
        measure = "odds ratio"
    return (f"{r['population']} {arrow} from {r['baseline']} to {r['timepoint']} {where} "
            f"({measure} {np.exp(r['estimate']):.2f}, {note}, FDR {r['fdr']:.2g})")


def censoring_summary(cytokines: pd.DataFrame) -> list[str]:
    """Per analyte, the share of values below the LoD (censored) and below the LLOQ
    (reported down to the LoD, flagged).

    Parameters
    ----------
    cytokines
        The cytokine table of a bead-array run.

    Returns
    -------
    list of str
        One line per analyte.
    """
    lines = []
    for analyte, rows in cytokines.groupby("analyte", sort=False):
        lod = float(rows["lod"].median()) if "lod" in rows else float("nan")
        lines.append(f"{analyte}: {100 * rows['below_lod'].mean():.0f}% below LoD "
                     f"({lod:.2g} pg/mL), {100 * rows['below_lloq'].mean():.0f}% below LLOQ "
                     f"({float(rows['lloq'].median()):.3g} pg/mL)")
    return lines


def cluster_figures(run: Path | Run, *, random_state: int = 0, max_events: int = 3000,
                    seed: int | None = None) -> list[Path]:
    """UMAP (coloured by cluster, gated population, arm, timepoint) and the median-expression
    heatmap of the clusters, for the first timepoint of each panel, into ``run/cluster_plots``.

    UMAP runs on a seeded subsample of ``max_events`` events: enough to see the structure,
    quick on two cores.

    Parameters
    ----------
    run
        A run folder clustered by :func:`~immunoprofile.cluster.cluster_run` (timepoint files
        without cluster labels are skipped).
    random_state
        Seed of the subsample and of UMAP.
    max_events
        Events in the UMAP subsample (all when the file has fewer); the heatmap uses all.
    seed
        Former name of ``random_state`` (kept as an alias).

    Returns
    -------
    list of pathlib.Path
        The PNG files written.
    """
    seed = random_state if seed is None else seed
    run = run if isinstance(run, Run) else Run(run)
    folder = run.cluster_plots_dir
    written: list[Path] = []
    seen: set[str] = set()
    for path in run.timepoint_files():
        adata = run.timepoint(path)
        panel = str(adata.uns.get("immunoprofile", {}).get("panel", "")) or path.stem
        if panel in seen or "flowsom" not in adata.obs:
            continue
        seen.add(panel)
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(adata.n_obs, min(max_events, adata.n_obs), replace=False))
        small = adata[keep].copy()
        tl.umap(small, random_state=seed)
        pl.umap(small, color=["flowsom", "population", "arm", "timepoint"],
                save=folder / f"umap_{panel}.png")
        written.append(folder / f"umap_{panel}.png")
        pl.cluster_heatmap(adata, save=folder / f"heatmap_{panel}.png")
        written.append(folder / f"heatmap_{panel}.png")
    return written


def run_demo(out: str | Path, *, seed: int = 0, patients_per_arm: int = 8,
             n_events: int = 20_000, visits: tuple[float, ...] = (0, 2, 12),
             workers: int | None = None, bcell_events: int | None = None,
             say: Callable[[str], None] = print) -> DemoResult:
    """Run every stage on a small simulated trial and write ``out/run/report.html``.

    Parameters
    ----------
    out
        Folder for the simulated cohort (``out/cohort``) and the run (``out/run``).
    seed
        Seed of the simulation, gating, clustering and UMAP.
    patients_per_arm
        Patients in each of the four arms (TEL, IL2, COMBO, SOC).
    n_events
        Events per simulated Treg-tube FCS file.
    visits
        Visit weeks; week 0 is the baseline ``W0``.
    workers
        Gating processes (default: as :func:`~immunoprofile.batch.gate_samples` chooses).
    bcell_events
        Events per B-cell-tube file (default: three times ``n_events``). Plasmablasts are
        ~0.2% of a tube's events; a lab acquires more events in that tube so that most files
        hold the ~50 plasmablasts below which a count is flagged rare (at 20,000 the median
        file held 35, and the telitacicept arm's plasmablast fall, planted as DOMAIN's ×0.55
        at week 12, sat at FDR 0.05 in 8 patients per arm).
    say
        Where progress lines go (``print`` by default).

    Returns
    -------
    DemoResult
        The folders, the report path, headline findings per arm and seconds per stage.

    Raises
    ------
    RuntimeError
        Gating produced nothing usable.
    """

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
    events = {"treg": n_events, "bcell": bcell_events or 3 * n_events}
    cohort = simulate_cohort(out / "cohort", patients_per_arm=patients_per_arm,
                             n_events=events, visits=visits, seed=seed)
    say("    " + cohort.summary().replace("\n", "\n    "))
    done("simulate a trial cohort (TEL, IL2, COMBO, SOC)")

    stage("gate every FCS file (treg, bcell, plasma templates)")
    batch = gate_samples(cohort.out / "samplesheet.csv", ["treg", "bcell", "plasma"], run,
                         workers=workers, settings=BatchSettings(seed=seed),
                         progress=lambda o, k, n: say(f"    {k}/{n} {o.sample_id}: {o.status}")
                         if k % 12 == 0 or k == n else None)
    done("gate every FCS file (treg, bcell, plasma templates)")
    if batch.exit_code == 1:
        raise RuntimeError(f"gating produced nothing usable: see {Run(run).errors_path}")

    stage("AnnData per timepoint")
    for path in assemble_run(run):
        say(f"    {path.name}")
    done("AnnData per timepoint")

    stage("FlowSOM clusters, UMAP and annotation")
    # 2,000 events per sample train the SOM (every event is mapped): the demo's minutes go
    # to what it shows, and 2,000 × 96 samples still hold the rare populations
    cluster_run(run, random_state=seed, events_per_sample=2_000)
    for path in cluster_figures(run, random_state=seed):
        say(f"    {path.name}")
    done("FlowSOM clusters, UMAP and annotation")

    stage("cytokines from bead-array FCS files")
    cytokines = Run(run).cytokines_dir
    cba = quantify(cohort.out / "cba" / "cba_sheet.csv", "bd_cba_th1_th2_th17", cytokines)
    for line in censoring_summary(cba.cytokines):
        say(f"    {line}")
    done("cytokines from bead-array FCS files")

    stage("compare arms over time (abundance, state, cytokines, clinical)")
    comparison = compare_run(run, control="SOC", baseline="W0",
                             pairs=["COMBO:IL2", "COMBO:TEL"],
                             clinical=cohort.out / "clinical.csv",
                             cytokines=CytokineRun(cytokines).cytokines_path)
    done("compare arms over time (abundance, state, cytokines, clinical)")

    stage("HTML report")
    report = write_report(run)
    done("HTML report")
    return DemoResult(out=out, run=run, report=report,
                      headlines=headline_findings(comparison.abundance,
                                                  endpoints=TRIAL_ENDPOINTS),
                      seconds=timings)
