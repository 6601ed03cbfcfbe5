"""A sample's parts in the run folder: written atomically, reused on resume, read to assemble.

Per sample, under ``RUN/.parts``: ``<id>.subsets.parquet`` (its subset rows), ``<id>.qc.json``
(its QC summary) and ``<id>.done.json`` (status, error rows and the resume key), plus its
kept events under ``RUN/events`` and its gating plots under ``RUN/plots``. The done marker is
written last, so a sample killed half-way is gated again on resume.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from immunoprofile._atomic import file_name_problem
from immunoprofile._pool import one_thread
from immunoprofile._version import __version__
from immunoprofile.batch._settings import BatchSettings, SampleOutcome, error_row
from immunoprofile.batch._task import SampleWork, gate_row
from immunoprofile.gating.engine import GatingResult
from immunoprofile.gating.rows import sha256
from immunoprofile.overrides import Override, OverrideError, check_file
from immunoprofile.run import Run
from immunoprofile.tables import EVENTS, SCHEMA_VERSION, SUBSETS, write_parquet
from immunoprofile.template.model import Template
from immunoprofile.template.yaml_io import template_hash, template_to_dict

# What draws a sample's gating plots: a callable (result, png_path) or "module:function".
# The default names the plotting room's function; the batch never imports it itself, so a
# headless pipeline (plots=False) never loads matplotlib, and any plotter can be passed in.
Plotter = Callable[[GatingResult, Path], Any]
DEFAULT_PLOTTER = "immunoprofile.pl:save_gating_plot"


def resolve_plotter(plotter: Plotter | str | None) -> Plotter | None:
    """A plotter from a callable or a ``"module:function"`` name (None: no plots).

    Parameters
    ----------
    plotter
        A callable ``(GatingResult, png_path)``, its import name, or None.

    Returns
    -------
    callable or None
        The plotter.
    """
    if plotter is None or callable(plotter):
        return plotter
    module, _, name = str(plotter).partition(":")
    return getattr(importlib.import_module(module), name)


def resume_key(row: dict, digest: str, templates: list[Template],
               settings: BatchSettings, overrides: tuple[Override, ...] = ()) -> dict:
    """What must match for ``resume`` to reuse a sample's parts.

    The file's checksum, the templates' hashes, the settings, the sheet metadata and the code
    and schema versions: an upgrade regates rather than reuse old parts.

    Parameters
    ----------
    row
        The sample-sheet row.
    digest
        The file's SHA-256.
    templates
        The run's templates.
    settings
        The run's settings.
    overrides
        The sample's gate overrides: adding, changing or removing one regates the sample.

    Returns
    -------
    dict
        The key (JSON-serialisable).
    """
    key = {"sha256": digest, "templates": {t.name: template_hash(t) for t in templates},
            "settings": settings.key(), "schema_version": SCHEMA_VERSION,
            "immunoprofile": __version__,
            "metadata": {k: str(v) for k, v in row.items() if k not in ("path", "row")}}
    if overrides:  # runs without overrides keep the keys they had
        key["overrides"] = [o.to_dict() for o in overrides]
    return key


def write_parts(run: Run, work: SampleWork, settings: BatchSettings, digest: str,
                plotter: Plotter | None = None) -> list[dict[str, str]]:
    """Write a gated sample's events, plots, QC summary and subset rows; return plot errors.

    Parameters
    ----------
    run
        The run folder.
    work
        What :func:`~immunoprofile.batch._task.gate_row` returned (with results).
    settings
        The run's settings.
    digest
        The file's SHA-256.
    plotter
        Draws one result's gating plot to a path (None: no plots).

    Returns
    -------
    list of dict
        Error rows of plots that failed (the numbers are written regardless).
    """
    sid = work.sample_id
    errors: list[dict[str, str]] = []
    table = work.subset_rows(settings, digest)
    events = work.events(settings)
    write_parquet(events, run.events_path(sid), schema=EVENTS,
                  metadata={"sample_id": sid, "channels": events.attrs["channels"],
                            "templates": [r.template.name for r in work.results]})
    if plotter is not None:
        for res in work.results:
            try:
                plotter(res, run.plot_path(sid, res.template.name))
            except Exception as exc:  # a plot failing must not lose the sample's numbers
                errors.append(error_row(work.row, res.template.name, "output",
                                        f"gating plot: {exc}"))
    run.write_json(run.part_qc(sid), work.qc)
    # the gates as placed, for review and export without placing them again
    run.write_json(run.part_gates(sid), {r.template.name: template_to_dict(r.template)
                                         for r in work.results})
    write_parquet(table, run.part_subsets(sid), schema=SUBSETS)
    return errors


def read_parts(run: Run, sample_ids: list[str]
               ) -> tuple[list[pd.DataFrame], list[dict], set[str]]:
    """The subset rows and QC summaries of the samples that have them, in the order given.

    Parameters
    ----------
    run
        The run folder.
    sample_ids
        The samples, in sheet order.

    Returns
    -------
    (subset parts, qc rows, missing)
        The per-sample subset tables and QC summaries found, and the samples without a
        subset table.
    """
    parts, qcs, missing = [], [], set()
    for sid in sample_ids:
        subsets = run.part_subsets(sid)
        if subsets.is_file():
            parts.append(pd.read_parquet(subsets))
        else:
            missing.add(sid)
        qc = run.part_qc(sid)
        if qc.is_file():
            qcs.append(json.loads(qc.read_text()))
    return parts, qcs, missing


def _succeeded(record: dict) -> bool:
    """Whether a sample's earlier outcome may be reused: it gated, and its only errors (if
    any) are templates its file cannot fit, which the same key would give again."""
    status = record.get("status")
    return status == "ok" or (status == "partial" and all(
        e.get("stage") == "fit" for e in record.get("errors", [])))


def forget_sample(run: Run, sample_id: str, templates: list[Template]) -> None:
    """Remove a sample's parts, kept events and gating plots left by an earlier run.

    Parameters
    ----------
    run
        The run folder.
    sample_id
        The sample.
    templates
        The run's templates (the sample's plot of each is removed); files absent are
        skipped.
    """
    paths = [run.part_subsets(sample_id), run.part_qc(sample_id), run.part_done(sample_id),
             run.part_gates(sample_id), run.events_path(sample_id)]
    paths += [run.plot_path(sample_id, t.name) for t in templates]
    for path in paths:
        path.unlink(missing_ok=True)


def done_record(run: Run, sample_id: str) -> dict:
    """A sample's done marker (empty when absent or unreadable).

    Parameters
    ----------
    run
        The run folder.
    sample_id
        The sample.

    Returns
    -------
    dict
        ``key``, ``n_events``, ``errors`` and ``status`` as :func:`process_sample` wrote
        them, or an empty dict.
    """
    done = run.part_done(sample_id)
    try:
        return json.loads(done.read_text()) if done.is_file() else {}
    except (OSError, ValueError):
        return {}


def process_sample(row: dict, templates: list[Template], out: str | Path,
                   settings: BatchSettings, resume: bool = False,
                   plotter: Plotter | str | None = DEFAULT_PLOTTER,
                   overrides: tuple[Override, ...] = ()) -> SampleOutcome:
    """Gate one sample with every template that fits it and write its parts.

    Never raises on bad input: failures become error rows in the outcome.

    Parameters
    ----------
    row
        One sample-sheet row as a dict: ``sample_id``, ``path`` and the metadata columns
        (``panel`` chooses templates).
    templates
        The run's templates; each whose required markers the file carries is applied, and one
        the row names in ``panel`` that does not fit becomes an error row.
    out
        The run folder; the sample's parts are written under its parts folder.
    settings
        The run's :class:`BatchSettings` (``plots=False`` draws nothing).
    resume
        Reuse the sample's parts when an earlier run gated it with the same file hash,
        templates, settings, metadata and immunoprofile version.
    plotter
        Draws a gating plot: a callable ``(GatingResult, png_path)`` or its
        ``"module:function"`` name; default :func:`immunoprofile.pl.save_gating_plot`.
    overrides
        The sample's gate overrides; one made on another version of the file fails the
        sample with an error row (never applied, never silently dropped).

    Returns
    -------
    SampleOutcome
        Status (``ok``, ``partial``, ``failed`` or ``resumed``), event count, error rows and
        the seconds taken.
    """
    run = Run(out)
    start = time.perf_counter()
    sid = str(row["sample_id"])
    unsafe = file_name_problem(sid)
    if unsafe:  # a sheet built in code skips the reader's check: never write outside the run
        return SampleOutcome(sid, "failed", errors=[error_row(
            row, "", "read", f"sample_id {sid!r} {unsafe}; it would name files of the run")])
    path = Path(str(row["path"]))
    if not path.is_file():
        forget_sample(run, sid, templates)
        return SampleOutcome(sid, "failed", errors=[error_row(
            row, "", "read", f"FCS file {path} does not exist")])
    try:
        digest = sha256(path)
    except OSError as exc:
        forget_sample(run, sid, templates)
        return SampleOutcome(sid, "failed", errors=[error_row(row, "", "read", exc)])
    try:
        check_file(overrides, digest, path)
    except OverrideError as exc:
        forget_sample(run, sid, templates)
        return SampleOutcome(sid, "failed", errors=[error_row(row, "", "override", exc)])
    key = resume_key(row, digest, templates, settings, overrides)
    if resume:
        previous = done_record(run, sid)
        if previous.get("key") == key and _succeeded(previous) \
                and run.part_subsets(sid).is_file():
            return SampleOutcome(sid, "resumed", n_events=int(previous.get("n_events", 0)),
                                 errors=previous.get("errors", []))
    # Whatever an earlier run left for this sample goes first: a sample failing now must
    # not keep its old rows in the tables.
    forget_sample(run, sid, templates)
    try:
        with one_thread():
            work = gate_row(row, templates, settings, overrides)
            errors = list(work.errors)
            n_events = work.sample.n_events if work.sample is not None else 0
            if work.results:
                errors += write_parts(run, work, settings, digest,
                                      resolve_plotter(plotter) if settings.plots else None)
    except Exception as exc:  # a bug must not stop the batch: it becomes this sample's error
        errors = [error_row(row, "", "gate", f"{type(exc).__name__}: {exc}")]
        n_events = 0
        forget_sample(run, sid, templates)
    status = ("failed" if not run.part_subsets(sid).is_file()
              else "partial" if errors else "ok")
    record = {"key": key, "n_events": n_events, "errors": errors, "status": status}
    run.write_json(run.part_done(sid), record)
    return SampleOutcome(sid, status, n_events=n_events, errors=errors,
                         seconds=time.perf_counter() - start)
