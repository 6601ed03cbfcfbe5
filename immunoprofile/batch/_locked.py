"""A sensitivity readout for gates a treatment may move: each patient's gates locked at their
baseline position.

Adaptive gates follow each sample's own data. When a drug shifts a gating marker on the
population and its neighbours (low-dose IL-2 raises CD25 on conventional CD4 T cells as well
as on Treg), a gate that follows the data and a gate that stays put can disagree about whether
the population changed. :func:`gate_baseline_locked` gates every later sample of a patient with
the gates as they were placed on that patient's baseline sample (adaptive gates frozen there),
and writes those rows, with ``gate_mode = "baseline_locked"``, beside the run's adaptive table;
``compare`` then tests both.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import pandas as pd

from immunoprofile.batch._gate import restore_types, sheet_rows
from immunoprofile.batch._parts import done_record
from immunoprofile.batch._settings import BatchSettings, resolve_templates
from immunoprofile.batch._task import gate_row
from immunoprofile.errors import ImmunoprofileError
from immunoprofile.gating.rows import stack_rows
from immunoprofile.io.samplesheet import SampleSheet, read_samplesheet
from immunoprofile.run import Run
from immunoprofile.tables import SUBSETS, Column, register, write_parquet
from immunoprofile.template.model import Template

LOCKED: tuple[Column, ...] = (*SUBSETS, Column(
    "gate_mode", "string", "'baseline_locked': the patient's gates as placed on the baseline "
    "sample (adaptive gates frozen there); the other columns as in subsets.parquet."))
register("subsets_baseline_locked.parquet (gate --baseline-locked: one row per sample × "
         "template × population whose gate uses a marker a treatment may move)", LOCKED)

#: Markers a trial drug may move on whole lineages: gates that use them get the readout.
MOVABLE_MARKERS = ("CD25", "FOXP3", "CD38", "CD27")


def moves_with(template: Template, markers: Iterable[str] = MOVABLE_MARKERS) -> list[str]:
    """Populations whose own gate, or an ancestor's, uses one of ``markers``.

    Parameters
    ----------
    template
        The template.
    markers
        Marker names (case-insensitive).

    Returns
    -------
    list of str
        The populations, in template order.
    """
    wanted = {m.upper() for m in markers}
    direct = {p.name for p in template.populations
              if any(m.upper() in wanted for d in p.gate.dims for m in d.markers())}
    return [p.name for p in template.populations
            if p.name in direct or direct & set(template.ancestors(p.name))]


def gate_baseline_locked(
    sheet: SampleSheet | str | Path,
    templates: Iterable[str | Path | Template],
    out: str | Path,
    *,
    baseline: str,
    settings: BatchSettings | None = None,
    markers: Iterable[str] = MOVABLE_MARKERS,
) -> pd.DataFrame:
    """Gate each patient's later samples with the gates placed on their baseline sample.

    Parameters
    ----------
    sheet
        The study's sample sheet (or its path).
    templates
        The run's templates (names, YAML files or templates).
    out
        The run folder; ``subsets_baseline_locked.parquet`` is written into it.
    baseline
        The baseline timepoint, as named in the sheet.
    settings
        The run's settings (QC as in the run; adaptive gates are placed on the baseline
        sample only).
    markers
        Gating markers a treatment may move: the rows of populations whose gate (or an
        ancestor's) uses one are kept.

    Returns
    -------
    pandas.DataFrame
        The subset-table rows (as ``subsets.parquet``) of those populations for every sample
        of a patient with a gated baseline, with ``gate_mode = "baseline_locked"`` (baseline
        samples included, gated as in the run).

    Raises
    ------
    ImmunoprofileError
        The baseline is not a timepoint of the sheet.
    """
    if not isinstance(sheet, SampleSheet):
        sheet = read_samplesheet(sheet)
    templates = resolve_templates(templates)
    settings = settings or BatchSettings()
    table = sheet.table
    if baseline not in set(table["timepoint"].astype(str)):
        raise ImmunoprofileError(f"baseline {baseline!r} is not a timepoint of the sheet "
                                 f"({', '.join(sheet.timepoints)})")
    keep = {t.name: set(moves_with(t, markers)) for t in templates}
    frozen = replace(settings, adaptive=False)
    run = Run(out)
    # the run already hashed every file: its done markers carry the digests
    digests = {sid: done_record(run, sid).get("key", {}).get("sha256")
               for sid in table["sample_id"].astype(str)}
    parts = []

    def rows_of(row: dict, results) -> list[pd.DataFrame]:
        return [r.to_table(row, rare_threshold=settings.rare_threshold,
                           file_sha256=digests.get(str(row["sample_id"])))
                for r in results]

    by_patient: dict[str, list[dict]] = {}
    for row in sheet_rows(sheet):
        by_patient.setdefault(str(row["patient_id"]), []).append(row)
    for records in by_patient.values():
        first = [r for r in records if str(r["timepoint"]) == baseline]
        placed: dict[tuple[str, str], Template] = {}
        for row in first:
            work = gate_row(row, templates, settings)
            for res in work.results:
                placed[(str(row.get("panel") or ""), res.template.name)] = res.template
            parts += rows_of(row, work.results)
        for row in records:
            if str(row["timepoint"]) == baseline:
                continue
            panel = str(row.get("panel") or "")
            locked = [t for (p, _), t in placed.items() if p == panel]
            if not locked:
                continue
            parts += rows_of(row, gate_row(row, locked, frozen).results)
    if not parts:
        return pd.DataFrame()
    out_table = stack_rows(parts)
    wanted = [keep.get(t, set()) for t in out_table["template"]]
    out_table = out_table[[p in w for p, w in zip(out_table["population"], wanted)]]
    out_table = out_table.reset_index(drop=True)
    out_table["gate_mode"] = "baseline_locked"
    out_table = restore_types(out_table, sheet)
    write_parquet(out_table, run.baseline_locked_path, schema=LOCKED)
    return out_table
