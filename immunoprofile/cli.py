"""The ``immunoprofile`` command line: a thin shell over the public Python API.

Exit codes: 0 success; 1 nothing usable or invalid input; 2 usage error (click);
3 partial success (some samples failed, see errors.csv).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from immunoprofile._version import __version__
from immunoprofile.cli_flowjo import flowjo, review
from immunoprofile.errors import ImmunoprofileError


def _parse_visits(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise click.BadParameter(
            f"visits must be comma-separated weeks, e.g. 0,2,4,12,24 ({exc})"
        ) from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="immunoprofile")
def main() -> None:
    """Flow-cytometry immune profiling for clinical trials."""


def _writable(out: Path, *, inputs: tuple[Path | str, ...] = (), force: bool = False,
              what: str = "--out") -> None:
    """Refuse to write over one of the command's inputs (ever) or over an existing file the
    command did not create (unless ``--force``)."""
    target = Path(out).resolve()
    for source in inputs:
        if Path(source).resolve() == target:
            raise ImmunoprofileError(f"{what} {out} is an input of this command: writing it "
                                     "would destroy it; choose another file")
    if target.exists() and not force:
        raise ImmunoprofileError(f"{what} {out} exists: pass --force to replace it, or "
                                 "choose another file")


@main.command()
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write the cohort into (created if missing).")
@click.option("--patients-per-arm", type=click.IntRange(1, 1000), default=8, show_default=True)
@click.option("--events", type=click.IntRange(100, 10_000_000), default=50_000, show_default=True,
              help="Events acquired per FCS file (an exported subset writes fewer).")
@click.option("--visits", default="0,2,4,12,24", show_default=True,
              help="Visit weeks, comma-separated.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--realistic/--tidy", default=None,
              help="Overlapping populations as in real files, or cleanly separated ones "
                   "[default: the simulator's REALISTIC_DEFAULT].")
@click.option("--instrument", "instruments", multiple=True,
              type=click.Choice(["fortessa", "canto", "cytoflex", "aurora"]),
              help="Cytometer scales and detector names; repeat to rotate over batches "
                   "[default: fortessa].")
@click.option("--export", type=click.Choice(["all", "lymphocytes"]), default="all",
              show_default=True,
              help="Write every event, or only a lymphocyte scatter gate (FlowJo-style export).")
@click.option("--force", is_flag=True, help="Replace a cohort already in --out.")
def simulate(out: Path, patients_per_arm: int, events: int, visits: str, seed: int,
             realistic: bool | None, instruments: tuple[str, ...], export: str,
             force: bool) -> None:
    """Simulate a randomised SLE trial cohort: FCS files, sample sheet and truth table."""
    # a study's own sheet may sit there: never replaced silently
    _writable(Path(out) / "samplesheet.csv", force=force, what="--out folder's sample sheet")
    # start-up time: each command loads only what it runs
    from immunoprofile.datasets import simulate_cohort

    cohort = simulate_cohort(
        out, patients_per_arm=patients_per_arm, n_events=events,
        visits=_parse_visits(visits), seed=seed, realistic=realistic,
        instruments=instruments or "fortessa", export=None if export == "all" else export,
    )
    click.echo(cohort.summary())


@main.command()
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path),
              default=Path("demo_out"), show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--patients-per-arm", type=click.IntRange(3, 50), default=8, show_default=True)
@click.option("--events", type=click.IntRange(5_000, 1_000_000), default=20_000,
              show_default=True, help="Events per Treg-tube FCS file.")
@click.option("--bcell-events", type=click.IntRange(5_000, 3_000_000), default=None,
              help="Events per B-cell-tube FCS file (plasmablasts are rare) "
                   "[default: 3 × --events].")
@click.option("--workers", type=click.IntRange(1, 512), default=None,
              help="Local worker processes [default: all cores].")
def demo(out: Path, seed: int, patients_per_arm: int, events: int, bcell_events: int | None,
         workers: int | None) -> None:
    """Run the whole pipeline on a small simulated trial and write an HTML report."""
    # start-up time: each command loads only what it runs
    from immunoprofile.demo import run_demo

    result = run_demo(out, seed=seed, patients_per_arm=patients_per_arm, n_events=events,
                      bcell_events=bcell_events, workers=workers, say=click.echo)
    click.echo("")
    click.echo(f"Report: {result.report.resolve()}")
    click.echo("Headline findings on the trial's endpoints (changes from W0 at FDR < 0.05, "
               "from the comparison tables):")
    for arm, lines in result.headlines.items():
        click.echo(f"  {arm}:")
        for line in lines:
            click.echo(f"    - {line}")


@main.group()
def template() -> None:
    """Validate, import and export gating templates."""


@template.command("validate")
@click.argument("files", nargs=-1, required=True)
def template_validate(files: tuple[str, ...]) -> None:
    """Check templates (YAML files or shipped names); every problem is listed with its entry."""
    # start-up time: each command loads only what it runs
    from immunoprofile.template import load_template

    failed = 0
    for f in files:
        try:
            t = load_template(f)
        except ImmunoprofileError as exc:
            failed += 1
            click.echo(f"INVALID {exc}", err=True)
            continue
        click.echo(f"ok {f}: template {t.name} v{t.version}, {len(t)} populations, "
                   f"markers {', '.join(t.markers())}")
    if failed:
        sys.exit(1)


@template.command("import")
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="YAML template to write.")
@click.option("--group", default="All Samples", show_default=True,
              help="FlowJo sample group whose gates to import (.wsp only).")
@click.option("--sample", "sample_name", default=None,
              help="FlowJo sample (name or FCS file) or FACSDiva tube (name, specimen/tube or "
                   "FCS file) whose gates to import [default: the first with gates].")
@click.option("--name", default=None, help="Template name (default: file name).")
@click.option("--force", is_flag=True, help="Replace --out when it exists.")
def template_import(source: Path, out: Path, group: str, sample_name: str | None,
                    name: str | None, force: bool) -> None:
    """Import a FlowJo 10 workspace, a FlowJo 9/X workspace, a FACSDiva experiment XML or a
    GatingML 2.0 file (the kind is detected) as a YAML template."""
    _writable(out, inputs=(source,), force=force)
    # start-up time: each command loads only what it runs
    from immunoprofile.template import write_template
    from immunoprofile.template.importers import import_template

    t = import_template(source, sample=sample_name, group=group, name=name)
    write_template(t, out)
    click.echo(f"wrote {out}: {len(t)} populations")


@template.command("export")
@click.argument("template_file")
@click.option("--sample", "sample_path", type=click.Path(exists=True, dir_okay=False),
              required=True, help="FCS file whose panel binds marker names to channels.")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="GatingML 2.0 file to write.")
@click.option("--force", is_flag=True, help="Replace --out when it exists.")
def template_export(template_file: str, sample_path: str, out: Path, force: bool) -> None:
    """Export a template bound to one file's panel as GatingML 2.0 (FlowKit reads it)."""
    _writable(out, inputs=(template_file, sample_path), force=force)
    # start-up time: each command loads only what it runs
    from immunoprofile.template.gatingml import write_gatingml

    write_gatingml(template_file, out, sample=sample_path)
    click.echo(f"wrote {out}")


@main.command()
@click.argument("sheet", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--template", "-t", "templates", multiple=True, required=True,
              help="Shipped template name (treg, bcell, plasma), YAML file or folder; "
                   "repeatable.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run folder to write.")
@click.option("--workers", type=click.IntRange(1, 512), default=None,
              help="Local worker processes [default: all cores].")
@click.option("--scheduler", default=None,
              help="dask.distributed scheduler address (tcp://host:8786): run there instead.")
@click.option("--keep-events", type=click.IntRange(0, 10_000_000), default=20_000,
              show_default=True, help="QC-passing events kept per sample for AnnData.")
@click.option("--resume", is_flag=True,
              help="Skip samples already done for the same file, templates and settings.")
@click.option("--strict", is_flag=True, help="Missing FCS files are sheet errors.")
@click.option("--dry-run", is_flag=True,
              help="Validate the sheet and templates, show the plan, gate nothing.")
@click.option("--qc/--no-qc", "qc", default=None,
              help="Run acquisition QC for every template, or for none. Default: for templates "
                   "with a `qc:` section (the shipped ones), not for templates imported from "
                   "FlowJo or GatingML (they reproduce the source software's counts).")
@click.option("--no-plots", is_flag=True, help="Skip per-sample gating plots.")
@click.option("--frozen", is_flag=True, help="Keep adaptive gates at their default positions.")
@click.option("--seed", type=int, default=0, show_default=True, help="Event subsample seed.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--baseline-locked", "baseline_locked", default=None, metavar="TIMEPOINT",
              help="Also gate each patient's later samples with the gates placed on their "
                   "sample at TIMEPOINT (RUN/subsets_baseline_locked.parquet): the "
                   "sensitivity readout for gates whose marker a treatment may move.")
def gate(sheet: Path, templates: tuple[str, ...], out: Path, workers: int | None,
         scheduler: str | None, keep_events: int, resume: bool, strict: bool, dry_run: bool,
         qc: bool | None, no_plots: bool, frozen: bool, seed: int, progress: bool,
         baseline_locked: str | None) -> None:
    """Gate every sample of SHEET with every template that fits it.

    Exit code 0 when every sample was gated, 3 when some failed (see errors.csv), 1 when
    nothing usable came out or the sheet or templates are invalid, 2 on usage errors.
    """
    # start-up time: each command loads only what it runs
    from immunoprofile.batch import (
        BatchSettings,
        gate_baseline_locked,
        gate_samples,
        plan,
        resolve_templates,
    )
    from immunoprofile.io.samplesheet import read_samplesheet

    parsed = read_samplesheet(sheet, strict=strict)
    resolved = resolve_templates(templates)
    if dry_run:
        table = plan(parsed, resolved)
        click.echo(f"sheet ok: {len(parsed)} samples, timepoints {', '.join(parsed.timepoints)}")
        for t in resolved:
            click.echo(f"template {t.name} v{t.version}: {len(t)} populations")
        click.echo(table.to_string(index=False))
        missing = int((~table["exists"]).sum())
        if missing:
            click.echo(f"{missing} file(s) missing: they will fail on their own", err=True)
        return
    settings = BatchSettings(keep_events=keep_events, seed=seed, qc=qc,
                             plots=not no_plots, adaptive=not frozen)
    with _progress(progress, len(parsed)) as report:
        result = gate_samples(parsed, resolved, out, workers=workers, scheduler=scheduler,
                              resume=resume, settings=settings, progress=report)
    n_failed = sum(o.status == "failed" for o in result.outcomes)
    click.echo(f"{len(result.outcomes) - n_failed}/{len(result.outcomes)} samples gated, "
               f"{len(result.errors)} error row(s); tables in {out}")
    if len(result.errors):
        click.echo(f"see {out / 'errors.csv'}", err=True)
    if baseline_locked is not None:
        locked = gate_baseline_locked(parsed, resolved, out, baseline=baseline_locked,
                                      settings=settings)
        click.echo(f"baseline-locked gates: {len(locked)} row(s) for the populations whose "
                   "gate uses a marker a treatment may move")
    sys.exit(result.exit_code)


class _progress:
    """A rich progress bar (samples, events/s, ETA) fed by the batch's callback."""

    def __init__(self, enabled: bool, total: int):
        self.enabled = enabled and total > 0
        self.total = total
        self.events = 0

    def __enter__(self):
        if not self.enabled:
            return None
        # stdlib, needed only here
        import time

        # start-up time: each command loads only what it runs
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.start = time.perf_counter()
        self.bar = Progress(TextColumn("gating"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                            transient=False)
        self.bar.__enter__()
        self.task = self.bar.add_task("gate", total=self.total, rate="")
        return self.update

    def update(self, outcome, done: int, total: int) -> None:
        # stdlib, needed only here
        import time

        self.events += outcome.n_events
        rate = self.events / max(time.perf_counter() - self.start, 1e-9)
        self.bar.update(self.task, completed=done, rate=f"{rate:,.0f} events/s")

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.__exit__(*exc)
        return False


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the .h5ad files [default: RUN_DIR/anndata].")
@click.option("--n-per-sample", type=click.IntRange(1, None), default=None,
              help="Events per sample [default: the smallest sample's, so all contribute "
                   "equally]; more than the run kept re-reads the FCS files.")
@click.option("--population", default=None,
              help="Parent population of the events [default: the templates' "
                   "reference_population, Live lymphocytes in the shipped ones].")
def assemble(run_dir: Path, out: Path | None, n_per_sample: int | None,
             population: str | None) -> None:
    """Write one AnnData per timepoint (and panel) plus samples.h5ad from a gate run."""
    # start-up time: each command loads only what it runs
    from immunoprofile.assemble import assemble_run

    for path in assemble_run(run_dir, out, n_per_sample=n_per_sample, population=population):
        click.echo(f"wrote {path}")


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--n-clusters", type=click.IntRange(2, 400), default=20, show_default=True,
              help="FlowSOM metaclusters per panel.")
@click.option("--events-per-sample", type=click.IntRange(10, None), default=None,
              help="Events from every sample in the pooled subsample the model is fitted on "
              "[default: the smallest sample's, at most --max-events pooled per panel]; all events "
              "are mapped.")
@click.option("--max-events", type=click.IntRange(1_000, None), default=500_000,
              show_default=True,
              help="Most pooled fitting events per panel when --events-per-sample is not "
              "given: bounds the stage's memory and the SOM's training time.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--xdim", type=click.IntRange(2, 100), default=20, show_default=True,
              help="SOM grid width.")
@click.option("--ydim", type=click.IntRange(2, 100), default=20, show_default=True,
              help="SOM grid height.")
def cluster(run_dir: Path, n_clusters: int, events_per_sample: int | None, max_events: int,
            seed: int, xdim: int, ydim: int) -> None:
    """FlowSOM per panel, fitted once on all timepoints and mapped onto every event.

    Writes each .h5ad file's labels into RUN_DIR/clusters/ (assembling the files first when
    missing), clusters.parquet, cluster_annotation.csv and cluster_agreement.csv in RUN_DIR.
    """
    # start-up time: each command loads only what it runs
    from immunoprofile.cluster import cluster_run

    result = cluster_run(run_dir, n_clusters=n_clusters, events_per_sample=events_per_sample,
                         max_events=max_events, random_state=seed, xdim=xdim, ydim=ydim)
    for panel, n in result.events_per_sample.items():
        click.echo(f"panel {panel or '(single)'}: fitted on {n} events per sample")
    for path in [*result.h5ad, *result.paths.values()]:
        click.echo(f"wrote {path}")


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--control", required=True, help="Control arm, as named in the sample sheet.")
@click.option("--baseline", required=True, help="Baseline timepoint, as named in the sheet.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder [default: RUN_DIR/compare].")
@click.option("--covariate", "covariates", multiple=True,
              help="Sample-sheet column to adjust for (repeatable), e.g. batch.")
@click.option("--pair", "pairs", multiple=True,
              help="Two treatment arms to compare, ARM:REFERENCE (repeatable), e.g. COMBO:IL2.")
@click.option("--responder", default="Treg>=1.5", show_default=True,
              help="Responder rule POPULATION>=FOLD (or <=FOLD) of its pct_parent; '' for none.")
@click.option("--no-plots", is_flag=True, help="Skip plots.")
@click.option("--clinical", "clinical", default=None,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Clinical table (patient_id, timepoint, sledai, c3, c4, anti_dsdna, igg, "
                   "iga, igm, proteinuria, prednisone_mg…): compared across arms, correlated "
                   "with subsets, SLEDAI-4/SRI-4 responders counted.")
@click.option("--cytokines", "cytokines", default=None,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="cytokines.parquet of a CBA run: compared across arms (censored at "
                   "LLOQ/ULOQ: Tobit) and correlated with subsets.")
@click.option("--model", "model", type=click.Choice(["glmm_binomial", "lmm_logit"]),
              default="glmm_binomial", show_default=True,
              help="Abundance model: binomial GLMM on counts (patient and observation-level "
                   "random intercepts) or Gaussian mixed model on the empirical logit.")
def compare(run_dir: Path, control: str, baseline: str, out: Path | None,
            covariates: tuple[str, ...], pairs: tuple[str, ...], responder: str,
            no_plots: bool, clinical: Path | None, cytokines: Path | None,
            model: str) -> None:
    """Compare arms over time: differential abundance and state, response tracking."""
    # start-up time: each command loads only what it runs
    from immunoprofile.compare import compare_run

    result = compare_run(run_dir, control=control, baseline=baseline, out=out, pairs=pairs,
                         covariates=covariates, responder=responder or None,
                         plots=not no_plots, clinical=clinical, cytokines=cytokines,
                         model=model)
    da = result.abundance
    n_sig = int((da["fdr"] < 0.05).sum()) if len(da) else 0
    click.echo(f"{len(da)} abundance and {len(result.state)} state tests "
               f"({n_sig} abundance results at FDR < 0.05); tables in {result.out}")
    for name, table in (("clinical", result.clinical), ("cytokine", result.cytokines),
                        ("correlation", result.correlations)):
        if table is not None:
            hits = int((table["fdr"] < 0.05).sum()) if len(table) else 0
            click.echo(f"{len(table)} {name} tests ({hits} at FDR < 0.05)")


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="HTML file to write [default: RUN_DIR/report.html].")
@click.option("--self-contained/--files", "self_contained", default=None,
              help="One file with every image embedded, or the page with its images beside "
                   "it in REPORT_files/ [default: one file up to 40 gating plots].")
def report(run_dir: Path, out: Path | None, self_contained: bool | None) -> None:
    """Write the HTML report for a run (no network): the run summary first, the gating plots
    of the samples that most need a look, every other plot on demand."""
    # start-up time: each command loads only what it runs
    from immunoprofile.report import write_report

    click.echo(f"wrote {write_report(run_dir, out, self_contained=self_contained)}")


@main.command()
@click.argument("sheet", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--kit", required=True,
              help="Shipped kit name (bd_cba_th1_th2_th17) or a kit YAML file.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write the tables and plots into.")
@click.option("--no-plots", is_flag=True, help="Skip the standard-curve plots.")
def cytokines(sheet: Path, kit: str, out: Path, no_plots: bool) -> None:
    """Quantify cytokines from cytometric bead-array (CBA) files listed in SHEET.

    Writes cytokines.parquet/.csv, cba_standards.csv, cba_curves.csv, errors.csv and
    plots/standard_curves_<plate>.png. Exit code 0 when everything was quantified, 3 when some
    files or curves failed (see errors.csv), 1 when nothing usable came out or the sheet or kit
    is invalid.
    """
    # start-up time: each command loads only what it runs
    from immunoprofile.cba import quantify

    try:
        result = quantify(sheet, kit, out, plots=not no_plots)
    except ImmunoprofileError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    cyto = result.cytokines
    n_samples = cyto["sample_id"].nunique() if len(cyto) else 0
    n_values = int(cyto["conc_pg_ml"].notna().sum()) if len(cyto) else 0
    n_below = int(cyto["below_lloq"].sum()) if len(cyto) else 0
    click.echo(f"{n_samples} samples × {len(result.kit.analytes)} analytes: {n_values} in "
               f"range, {n_below} below LLOQ, {len(result.errors)} error row(s); tables in {out}")
    if len(result.errors):
        click.echo(f"see {out / 'errors.csv'}", err=True)
    sys.exit(result.exit_code)


@main.command()
@click.option("--effect", "effects", multiple=True, required=True,
              help="ARM:POPULATION=FOLD (repeatable): the fold change of the population's odds "
                   "among its parent at the last visit, e.g. IL2:Treg=1.5, "
                   "'TEL:B cells=0.7'.")
@click.option("--patients", "patients", type=click.IntRange(3, 500), multiple=True,
              help="Patients per arm (repeatable) [default: 8 and 12].")
@click.option("--timepoints", default="W0,W12", show_default=True,
              help="Visits, comma-separated, baseline first; the effect is at the last.")
@click.option("--control", default="SOC", show_default=True, help="The control arm's name.")
@click.option("--run", "run_dir", default=None,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A gated run whose subset table gives the baseline shares, parent counts "
                   "and between-patient and visit-to-visit SDs [default: DOMAIN.md's SLE "
                   "figures].")
@click.option("--model", type=click.Choice(["glmm_binomial", "lmm_logit"]),
              default="glmm_binomial", show_default=True, help="The abundance model.")
@click.option("--trials", type=click.IntRange(10, 100_000), default=200, show_default=True,
              help="Simulated trials per size.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--jobs", type=int, default=-1, show_default=True,
              help="Processes (-1: every core).")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the table as CSV.")
def power(effects: tuple[str, ...], patients: tuple[int, ...], timepoints: str, control: str,
          run_dir: Path | None, model: str, trials: int, seed: int, jobs: int,
          out: Path | None) -> None:
    """Power and sample size for a trial: simulate it with the comparison's own models."""
    # start-up time: each command loads only what it runs
    from immunoprofile.tables import write_csv
    from immunoprofile.tl import power as simulate_power

    table = simulate_power(list(effects), patients_per_arm=list(patients) or [8, 12],
                           control=control, timepoints=[t.strip() for t in
                                                        timepoints.split(",") if t.strip()],
                           variability=run_dir, model=model, n_trials=trials, seed=seed,
                           n_jobs=jobs)
    shown = table[["arm", "population", "fold_change", "patients_per_arm", "power",
                   "power_ci_low", "power_ci_high", "coverage"]]
    click.echo(shown.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    if out is not None:
        click.echo(f"wrote {write_csv(table, out)}")


@main.command()
def schema() -> None:
    """Print the documented, versioned columns of every output table."""
    # stdlib, needed only here
    import importlib

    # start-up time: each command loads only what it runs
    from immunoprofile.tables import schema_markdown

    # Later stages document their tables when imported.
    for module in ("immunoprofile.compare", "immunoprofile.cluster", "immunoprofile.cba",
                   "immunoprofile.overrides"):
        try:
            importlib.import_module(module)
        except ImportError:
            pass

    click.echo(schema_markdown())


main.add_command(flowjo)
main.add_command(review)


def run() -> None:
    """Entry point that turns our errors into a clean message and exit code 1."""
    try:
        main(standalone_mode=True)
    except ImmunoprofileError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    run()
