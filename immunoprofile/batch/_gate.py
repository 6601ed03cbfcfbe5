"""Gating many samples: the run, from sample sheet to the final tables and manifest.

One sample is one task (:func:`~immunoprofile.batch._parts.process_sample`): read → acquisition
QC → every template that fits → per-sample parts (written atomically under ``RUN/.parts``) →
done marker. The final tables are assembled from the parts in sample-sheet order, so a run
killed at any moment and resumed with ``resume=True`` gives the same tables as an uninterrupted
one. Tasks run in-process (``workers=1``), in a local process pool, or on a dask.distributed
cluster given its scheduler address (:mod:`._executors`).
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from immunoprofile._pool import usable_cores
from immunoprofile._version import __version__
from immunoprofile.batch._executors import Task, check_scheduler, run_dask, run_local
from immunoprofile.batch._parts import DEFAULT_PLOTTER, Plotter, done_record, read_parts
from immunoprofile.batch._settings import (
    BatchSettings,
    SampleOutcome,
    named_in_panel,
    resolve_templates,
)
from immunoprofile.errors import ImmunoprofileError
from immunoprofile.gating.rows import stack_rows
from immunoprofile.io.samplesheet import SampleSheet, read_samplesheet
from immunoprofile.overrides import for_sample, read_overrides
from immunoprofile.run import Run
from immunoprofile.tables import (
    ERRORS,
    QC,
    SCHEMA_VERSION,
    SUBSETS,
    csv_writer,
    parquet_writer,
    validate,
    wide,
)
from immunoprofile.template.model import Template
from immunoprofile.template.yaml_io import template_hash


@dataclass
class BatchResult:
    """A finished run: its folder, tables and what happened to each sample."""

    out: Path
    subsets: pd.DataFrame
    qc: pd.DataFrame
    errors: pd.DataFrame
    outcomes: list[SampleOutcome]

    @property
    def exit_code(self) -> int:
        """0: every sample gated; 3: some failed; 1: nothing usable."""
        if self.subsets.empty:
            return 1
        return 3 if len(self.errors) else 0


def _file_size(path: object) -> int:
    try:
        return os.path.getsize(str(path))
    except OSError:
        return -1  # missing: fails at once, last


def plan(sheet: SampleSheet, templates: list[Template]) -> pd.DataFrame:
    """Which templates are named for which sample (``panel``) — the dry-run view.

    Marker fit is checked on each file when it is read; the plan shows the panel choice.

    Parameters
    ----------
    sheet
        The study's sample sheet.
    templates
        The run's templates.

    Returns
    -------
    pandas.DataFrame
        One row per sample: ``sample_id``, ``path``, ``exists`` (the file is there) and
        ``templates`` (names joined by ';', or ``(by markers)`` when the row names none).
    """
    rows = []
    for _, r in sheet.table.iterrows():
        named = [t.name for t in templates if named_in_panel(r.get("panel"), t)]
        rows.append({"sample_id": r["sample_id"], "path": r["path"],
                     "exists": Path(r["path"]).is_file(),
                     "templates": ";".join(named) if named else "(by markers)"})
    return pd.DataFrame(rows)


def gate_samples(
    sheet: SampleSheet | str | Path,
    templates: Iterable[str | Path | Template],
    out: str | Path,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    resume: bool = False,
    strict: bool = False,
    settings: BatchSettings | None = None,
    progress: Callable[[SampleOutcome, int, int], None] | None = None,
    plotter: Plotter | str | None = DEFAULT_PLOTTER,
) -> BatchResult:
    """Gate every sample of a sheet with every template that fits it; write the run folder.

    Parameters
    ----------
    sheet
        A :class:`~immunoprofile.io.samplesheet.SampleSheet` or the path of one.
    templates
        Shipped template names, YAML files or folders of them.
    out
        The run folder (``subsets.parquet``, ``subsets.csv``, ``subsets_wide.csv``, ``qc.csv``,
        ``errors.csv``, ``plots/``, ``events/``, ``templates/``, ``run.json``).
    workers
        Local processes (default: all cores); 1 runs in this process.
    scheduler
        Address of a dask.distributed scheduler: run the same tasks on that cluster instead.
    resume
        Skip samples whose parts exist for the same file checksum, templates and settings.
    strict
        Missing FCS files are sheet errors (raised before any work).
    settings
        Events kept per sample, seed, QC, plots, adaptive gates.
    progress
        Called after each sample with (outcome, done, total).
    plotter
        Draws each sample's gating plots when ``settings.plots``: a callable
        ``(GatingResult, png_path)`` or its ``"module:function"`` name (picklable for the
        workers); default :func:`immunoprofile.pl.save_gating_plot`.

    Returns
    -------
    BatchResult
        The run folder, its tables and each sample's outcome (``exit_code`` 0, 3 or 1).
    """
    t0 = time.time()
    if not isinstance(sheet, SampleSheet):
        sheet = read_samplesheet(sheet, strict=strict)
    templates = resolve_templates(templates)
    settings = settings or BatchSettings()
    if scheduler:
        check_scheduler(scheduler)
    run = Run(out)
    with run.lock("gate"):
        run.clean_temporary()  # the run's own leftovers only, and only while it holds the lock
        run.parts_dir.mkdir(exist_ok=True)
        result = _gate_locked(run, sheet, templates, settings, workers=workers,
                              scheduler=scheduler, resume=resume, progress=progress,
                              plotter=plotter, t0=t0)
    return result


def _gate_locked(run: Run, sheet: SampleSheet, templates: list[Template],
                 settings: BatchSettings, *, workers: int | None, scheduler: str | None,
                 resume: bool, progress, plotter, t0: float) -> BatchResult:
    workers = workers or usable_cores()
    rows = sheet_rows(sheet)
    overrides = read_overrides(run.overrides_path)
    # An absolute run folder: dask workers run in their own working directory (on another
    # machine, at the same path of a shared file system), not the client's.
    tasks: list[Task] = [(r, templates, str(run.path.resolve()), settings, resume, plotter,
                          for_sample(overrides, str(r["sample_id"]))) for r in rows]
    # Largest files first (longest job first): workers then finish together instead of one
    # idling while the other gates a big file last. Tables are assembled in sheet order.
    tasks.sort(key=lambda t: -_file_size(t[0]["path"]))
    outcomes: dict[str, SampleOutcome] = {}
    runner = run_dask(tasks, scheduler) if scheduler else run_local(tasks, workers)
    for outcome in runner:
        outcomes[outcome.sample_id] = outcome
        if progress:
            progress(outcome, len(outcomes), len(tasks))
    ordered = [outcomes[str(r["sample_id"])] for r in rows]
    result, writes = _assemble(run, sheet, templates, ordered)
    manifest = _manifest(run, sheet, templates, settings, ordered, result,
                         time.time() - t0, workers=None if scheduler else workers,
                         scheduler=scheduler)
    # Tables, templates and run.json are replaced together or not at all: a full disk
    # leaves the previous run's files as they were, consistent with each other.
    try:
        run.commit(writes, manifest)
    except OSError as exc:
        raise ImmunoprofileError(
            f"could not write the run's tables into {run.path} ({exc.strerror or exc}); the "
            "previous tables are unchanged and every sample's parts are kept: free space "
            "and rerun with --resume") from exc
    return result


def _assemble(run: Run, sheet: SampleSheet, templates: list[Template],
              outcomes: list[SampleOutcome]) -> tuple[BatchResult, list]:
    """The run's tables from the samples' parts, and the writes that put them on disk."""
    parts, qcs, missing = read_parts(run, [o.sample_id for o in outcomes])
    errors = [e for o in outcomes for e in o.errors]
    paths = {str(r["sample_id"]): str(r["path"]) for r in sheet_rows(sheet)}
    for o in outcomes:
        if o.status in ("ok", "partial", "resumed") and o.sample_id in missing:
            errors.append({"sample_id": o.sample_id, "path": paths.get(o.sample_id, ""),
                           "template": "", "stage": "output",
                           "error": f"the worker reported {o.status} but its results are not "
                                    f"in {run.parts_dir}",
                           "hint": "workers must reach the run folder at the same absolute "
                                   "path (a shared file system); rerun with --resume"})
    meta = sheet.metadata_columns
    subsets = stack_rows(parts) if parts else pd.DataFrame(columns=meta)
    subsets = restore_types(subsets, sheet)
    qc_table = pd.DataFrame(qcs)
    error_table = pd.DataFrame(errors, columns=["sample_id", "path", "template", "stage",
                                                "error", "hint"])
    schema = SUBSETS if not subsets.empty else None
    writes = [(run.subsets_path, parquet_writer(
        subsets, schema=schema, where=str(run.subsets_path),
        metadata={"templates": {t.name: t.version for t in templates}})),
        (run.subsets_csv, csv_writer(subsets))]
    if not subsets.empty:
        writes.append((run.subsets_wide_csv, csv_writer(wide(subsets, meta))))
    # which QC columns exist depends on whether QC ran: undocumented ones are still refused
    validate(qc_table, QC, where=str(run.qc_path), complete=False)
    writes += [(run.qc_path, csv_writer(qc_table)),
               (run.errors_path, csv_writer(error_table, schema=ERRORS)),
               *run.template_writers(templates)]
    result = BatchResult(out=run.path, subsets=subsets, qc=qc_table, errors=error_table,
                         outcomes=outcomes)
    return result, writes


def sheet_rows(sheet: SampleSheet) -> list[dict]:
    """The sheet's rows as plain dicts (None for empty cells, Python scalars), as tasks get them.

    Parameters
    ----------
    sheet
        The sample sheet.

    Returns
    -------
    list of dict
        One dict per row, in sheet order.
    """
    return [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in r.items()}
            for r in sheet.table.astype(object).where(sheet.table.notna(), None)
            .to_dict("records")]


def restore_types(subsets: pd.DataFrame, sheet: SampleSheet) -> pd.DataFrame:
    """Categoricals of the sheet (timepoint order included) and numeric columns survive the
    per-sample parts (an all-empty numeric column must stay float NaN, not object None).

    Parameters
    ----------
    subsets
        Subset rows built from sheet rows (changed in place and returned).
    sheet
        The sample sheet they came from.

    Returns
    -------
    pandas.DataFrame
        ``subsets`` with the sheet's dtypes and Int64 counts.
    """
    for col in sheet.table.columns:
        if col in subsets.columns and pd.api.types.is_numeric_dtype(sheet.table[col]):
            subsets[col] = pd.to_numeric(subsets[col], errors="coerce").astype(float)
        if col in subsets.columns and isinstance(sheet.table[col].dtype, pd.CategoricalDtype):
            subsets[col] = pd.Categorical(subsets[col].astype(str),
                                          categories=[str(c) for c in
                                                      sheet.table[col].cat.categories],
                                          ordered=sheet.table[col].cat.ordered)
    for col in ("count", "parent_count"):
        if col in subsets.columns:
            subsets[col] = subsets[col].astype("Int64")
    return subsets


def _manifest(run: Run, sheet: SampleSheet, templates: list[Template],
              settings: BatchSettings, outcomes: list[SampleOutcome],
              result: BatchResult, seconds: float, *, workers: int | None,
              scheduler: str | None) -> dict:
    # stdlib, needed only here
    from importlib.metadata import PackageNotFoundError, version

    def _installed(dist: str) -> str | None:
        # metadata, not imports: importing anndata to print its version cost ~2 s per run
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    inputs = []
    for o in outcomes:
        digest = done_record(run, o.sample_id).get("key", {}).get("sha256")
        row = sheet.table.loc[sheet.table["sample_id"] == o.sample_id].iloc[0]
        inputs.append({"sample_id": o.sample_id, "path": row["path"], "sha256": digest,
                       "status": o.status, "n_events": o.n_events,
                       "seconds": round(o.seconds, 3)})
    manifest = {
        "immunoprofile": __version__, "schema_version": SCHEMA_VERSION,
        "versions": {"python": platform.python_version(),
                     **{d: _installed(d) for d in ("numpy", "pandas", "flowkit", "anndata")}},
        "sample_sheet": str(sheet.source.resolve()),
        "templates": {t.name: {"version": t.version, "sha256": template_hash(t),
                               "source": t.source} for t in templates},
        "settings": settings.key(), "workers": workers, "scheduler": scheduler,
        "timepoints": sheet.timepoints,
        "samples": len(outcomes),
        "failed": sum(o.status == "failed" for o in outcomes),
        "exit_code": result.exit_code, "seconds": round(seconds, 2),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "inputs": inputs,
    }
    return manifest


def clear_parts(out: str | Path) -> None:
    """Remove the per-sample parts of a run (the final tables stay).

    Parameters
    ----------
    out
        The run folder; a missing parts folder is not an error.
    """
    shutil.rmtree(Run(out).parts_dir, ignore_errors=True)
