"""Applying per-sample gate overrides to a gated run, with an audit row for each change.

:func:`apply_overrides` is what ``immunoprofile flowjo apply`` ends in, and the Python way to
correct a gate: it checks each override against the sample it names (the file's checksum, the
template's populations and markers) by gating that sample with it in memory, records the
change, then regates only the samples whose overrides changed (the others' parts are resumed
as they are) and rewrites the run's tables.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from immunoprofile._atomic import atomic_write_all
from immunoprofile.batch._gate import gate_samples, sheet_rows
from immunoprofile.batch._parts import DEFAULT_PLOTTER, Plotter, done_record
from immunoprofile.batch._settings import BatchSettings
from immunoprofile.batch._task import gate_row
from immunoprofile.errors import ImmunoprofileError
from immunoprofile.gating.rows import sha256
from immunoprofile.io.samplesheet import read_samplesheet
from immunoprofile.overrides import (
    AUDIT_COLUMNS,
    Override,
    OverrideError,
    audit_rows,
    audit_text,
    check_file,
    for_sample,
    gate_text,
    merge_overrides,
    now_utc,
    override_from_dict,
    overrides_text,
    read_overrides,
)
from immunoprofile.run import Run
from immunoprofile.template.model import Template


def run_inputs(run: Run) -> tuple[list[dict], dict[str, Template], BatchSettings, Path]:
    """The sheet rows, templates and settings a run was gated with.

    Parameters
    ----------
    run
        A gated run folder.

    Returns
    -------
    (rows, templates, settings, sheet)
        Sheet rows as the batch gives them to tasks, ``{name: Template}``, the settings and
        the sample sheet's path.

    Raises
    ------
    ImmunoprofileError
        The run has not been gated or its sample sheet is gone.
    """
    manifest = run.manifest
    sheet = Path(str(manifest.get("sample_sheet", "")))
    if not sheet.is_file():
        raise ImmunoprofileError(f"{run.path}: the run's sample sheet {sheet} is gone; put it "
                                 "back where run.json says, or gate again")
    settings = BatchSettings(**manifest.get("settings", {}))
    return sheet_rows(read_samplesheet(sheet)), run.templates(), settings, sheet


def _as_override(item: Override | Mapping[str, Any], digests: dict[str, str], by: str,
                 reason: str, stamp: str, where: str) -> Override:
    if isinstance(item, Override):
        ov = item
    else:
        entry = dict(item)
        if not entry.get("file_sha256") and entry.get("sample_id") is not None:
            entry["file_sha256"] = digests.get(str(entry["sample_id"]), "")
        ov = override_from_dict(entry, where=where)
    return replace(ov, by=ov.by or by, reason=ov.reason or reason,
                   timestamp_utc=ov.timestamp_utc or stamp)


def _count(table: pd.DataFrame, sid: str, template: str, population: str) -> Any:
    hit = table[(table["sample_id"].astype(str) == sid) & (table["template"] == template)
                & (table["population"] == population)]
    return None if hit.empty or pd.isna(hit["count"].iloc[0]) else int(hit["count"].iloc[0])


def apply_overrides(
    run: str | Path | Run,
    overrides: Iterable[Override | Mapping[str, Any]],
    *,
    by: str,
    reason: str,
    workers: int | None = None,
    plotter: Plotter | str | None = DEFAULT_PLOTTER,
) -> pd.DataFrame:
    """Correct gates of single samples: record, audit and regate.

    Parameters
    ----------
    run
        A gated run folder.
    overrides
        :class:`~immunoprofile.overrides.Override` objects or mappings in the
        ``overrides.yaml`` form (``sample_id``, ``template``, ``population``, ``gate``;
        ``file_sha256`` defaults to the checksum the run recorded for the sample).
    by, reason
        Who makes the change and why (required: a trial keeps every manual change on record).
    workers
        Processes for regating the changed samples.
    plotter
        Draws the changed samples' gating plots (as :func:`gate_samples`).

    Returns
    -------
    pandas.DataFrame
        The rows added to ``RUN/audit.csv`` (:data:`~immunoprofile.overrides.AUDIT_COLUMNS`).

    Raises
    ------
    OverrideError
        No ``by`` or ``reason``, an override naming an unknown sample, template or
        population, a file changed since, or an override that fails to gate; nothing is
        written then.
    """
    if not str(by).strip() or not str(reason).strip():
        raise OverrideError("every gate change needs who made it (--by) and why (--reason)")
    run = Run.open(run)
    with _one_change_at_a_time(run):
        return _apply(run, list(overrides), by=by, reason=reason, workers=workers,
                      plotter=plotter)


@contextmanager
def _one_change_at_a_time(run: Run) -> Iterator[None]:
    """Two reviewers saving at once (two browser tabs, a tab and the CLI) both keep their
    change: the second waits for the first to be merged, written and applied."""
    with open(run.overrides_lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _apply(run: Run, overrides: list, *, by: str, reason: str, workers: int | None,
           plotter: Plotter | str | None) -> pd.DataFrame:
    rows, templates, settings, sheet = run_inputs(run)
    by_id = {str(r["sample_id"]): r for r in rows}
    named = {str(o.sample_id if isinstance(o, Override) else o.get("sample_id"))
             for o in overrides}
    digests = {sid: done_record(run, sid).get("key", {}).get("sha256", "")
               for sid in named if sid in by_id}
    stamp = now_utc()
    new = [_as_override(o, digests, by, reason, stamp, f"override {i + 1}")
           for i, o in enumerate(overrides)]
    for o in new:
        if o.sample_id not in by_id:
            raise OverrideError(f"override {o.template}/{o.population}: sample {o.sample_id!r} "
                                "is not in the run's sample sheet")
        if o.template not in templates:
            raise OverrideError(f"override for {o.sample_id}: template {o.template!r} is not "
                                f"one of the run's ({', '.join(templates)})")
    existing = read_overrides(run.overrides_path)
    merged = merge_overrides(existing, new)
    subsets = run.subsets
    changes = []
    for sid in dict.fromkeys(o.sample_id for o in new):
        row = by_id[sid]
        path = Path(str(row["path"]))
        check_file(for_sample(merged, sid), sha256(path), path)
        # the gates as the run placed them (adaptive positions, earlier overrides); placed
        # again only for a run gated before they were recorded
        old = run.placed_templates(sid) or {
            r.template.name: r.template
            for r in gate_row(row, list(templates.values()), settings,
                              for_sample(existing, sid)).results}
        # gated with the change in memory first: an override that does not gate is refused
        # before anything is written
        after = gate_row(row, list(templates.values()), settings, for_sample(merged, sid))
        failed = [e["error"] for e in after.errors if e.get("stage") in ("override", "gate")]
        if failed:
            raise OverrideError(f"sample {sid}: the override does not gate: {failed[0]}")
        new_res = {r.template.name: r for r in after.results}
        for o in (o for o in new if o.sample_id == sid):
            if o.template not in new_res:
                raise OverrideError(f"sample {sid} is not gated with template {o.template}")
            res = new_res[o.template]
            prev = old.get(o.template)
            changes.append({
                "timestamp_utc": o.timestamp_utc, "user": o.by, "sample_id": sid,
                "template": o.template, "population": o.population,
                "old_gate": gate_text(prev[o.population].gate if prev else None),
                "new_gate": gate_text(o.gate),
                "old_count": _count(subsets, sid, o.template, o.population),
                "new_count": _count(res.counts.assign(sample_id=sid, template=o.template),
                                    sid, o.template, o.population),
                "reason": o.reason, "file_sha256": o.file_sha256})
    added = pd.DataFrame(audit_rows(changes), columns=list(AUDIT_COLUMNS))
    _write_overrides_and_audit(run, merged, changes)
    gate_samples(sheet, list(templates.values()), run.path, workers=workers, resume=True,
                 settings=settings, plotter=plotter)
    return added


def _write_overrides_and_audit(run: Run, overrides: list[Override],
                               changes: list[dict]) -> None:
    """overrides.yaml and audit.csv replaced together: a change is never on record without
    being in force, or in force without being on record."""
    text = overrides_text(overrides)
    audit = audit_text(run.audit_path, changes)
    atomic_write_all([(run.overrides_path, lambda tmp: tmp.write_text(text, encoding="utf-8")),
                      (run.audit_path, lambda tmp: tmp.write_text(audit, encoding="utf-8"))])
