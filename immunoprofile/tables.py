"""The per-sample subset table: its schema (documented here, once), writers and the wide pivot.

``subsets.parquet`` / ``subsets.csv`` are long: one row per sample × template × population.
The schema is versioned: ``SCHEMA_VERSION`` is written into ``run.json`` and the Parquet file
metadata, and ``immunoprofile schema`` prints this documentation. A wide pivot
(``subsets_wide.csv``, one row per sample) is a convenience built from the long table, never a
second truth.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from immunoprofile._atomic import atomic_write

SCHEMA_VERSION = "1.2.0"  # 1.1.0: qc_removed_pct; 1.2.0: override


@dataclass(frozen=True)
class Column:
    """One documented column (``name`` may be a pattern such as ``pct_of_<ref>``)."""

    name: str
    dtype: str
    description: str


SUBSETS: tuple[Column, ...] = (
    Column("sample_id", "string", "Sample id from the sample sheet."),
    Column("patient_id", "category", "Patient; a visit is keyed by (patient_id, timepoint)."),
    Column("arm", "category", "Randomised arm, as named in the sample sheet."),
    Column("timepoint", "ordered category", "Visit; ordered by `week` when given, otherwise "
           "naturally (W2 before W12)."),
    Column("<sheet column>", "as in the sheet", "Every other sample-sheet column (week, batch, "
           "panel, visit_date, lymphocytes_per_ul, days_since_last_il2_dose, …) is carried."),
    Column("template", "string", "Gating template name."),
    Column("template_version", "string", "Gating template version."),
    Column("population", "string", "Population name (unique within the template)."),
    Column("parent", "string", "Parent population ('' for a root population)."),
    Column("count", "Int64", "Events in the population (null when not measured)."),
    Column("parent_count", "Int64", "Events in the parent (root: events passing QC)."),
    Column("pct_parent", "float64", "100 × count / parent_count."),
    Column("pct_of_<ref>", "float64", "100 × count / count of the named reference population "
           "(`pct_of` in the template); <ref> is the reference name in snake case with '+' "
           "as 'pos' (`pct_of_cd4pos_t_cells`, `pct_of_live_lymphocytes`). Null in rows of "
           "populations that do not declare that reference."),
    Column("abs_per_ul", "float64", "Cells per µL of blood when count inputs are given: dual "
           "platform = lymphocytes_per_ul × count / count of the template's lymphocyte "
           "reference (its `reference_population`, `Live lymphocytes` in the shipped "
           "templates); single platform = count / bead events × "
           "beads_per_test / blood_volume_ul."),
    Column("abs_method", "string", "'dual_platform', 'beads' or '' (no absolute count)."),
    Column("mfi_median_<marker>", "float64", "Median of compensated linear values of the "
           "marker in the population (markers the template lists under `mfi`)."),
    Column("measured", "bool", "False when the file lacks a marker the gate needs (optional "
           "markers), or the gate was skipped (`if_missing: pass`)."),
    Column("note", "string", "Why a population was not measured, '' otherwise."),
    Column("adaptive_fallback", "bool", "An adaptive gate fell back to its default position "
           "(see qc.csv for where gates landed)."),
    Column("qc_removed_pct", "float64", "Share of the file's events (%) that acquisition QC "
           "removed before this template gated it (0 when QC did not run for the template: "
           "`--no-qc`, or an imported FlowJo/GatingML template without `--qc`)."),
    Column("flag_rare", "bool", "Fewer events than the rare-population threshold (default "
           "50): percentages are imprecise."),
    Column("override", "bool", "The population's gate for this sample is a per-sample "
           "override (RUN/overrides.yaml, audit in RUN/audit.csv), not the template's; its "
           "descendants are gated inside it."),
    Column("file_sha256", "string", "SHA-256 of the FCS file gated."),
)

QC: tuple[Column, ...] = (
    Column("sample_id", "string", "Sample id."),
    Column("n_events", "int64", "Events in the file."),
    Column("n_removed", "int64", "Events failing acquisition QC (any reason)."),
    Column("pct_removed", "float64", "100 × n_removed / n_events."),
    Column("removed_margin", "int64", "Events on the scatter margins ($PnR) or below floor."),
    Column("removed_flow_rate", "int64", "Events in time windows with abnormal flow rate."),
    Column("removed_signal_shift", "int64", "Events in time windows with shifted signal."),
    Column("removed_<reason>", "int64", "Events removed for any other reason QC reports."),
    Column("n_windows", "int64", "Time windows the flow-rate and signal checks judged."),
    Column("n_windows_flagged", "int64", "Windows flagged for flow rate or signal."),
    Column("qc_flags", "string", "QC warnings, '; '-joined (read warnings of the FCS file "
           "too)."),
    Column("<template>/<population>/<setting>", "float64", "Where an adaptive gate landed "
           "(threshold, shift…); `…/fallback` is 1 when it fell back to its default."),
)

ERRORS: tuple[Column, ...] = (
    Column("sample_id", "string", "Sample id ('' for sheet-level problems)."),
    Column("path", "string", "The FCS file."),
    Column("template", "string", "Template concerned ('' when the file itself failed)."),
    Column("stage", "string", "'read', 'qc', 'fit' (no template fits / a marker is missing), "
           "'gate' or 'output'."),
    Column("error", "string", "What went wrong."),
    Column("hint", "string", "What to do about it."),
)

EVENTS: tuple[Column, ...] = (
    Column("event_index", "int64", "The event's row in its FCS file (0-based)."),
    Column("transformed/<marker>", "float32", "Compensated, transformed value (the template's "
           "transform) of each marker the templates read."),
    Column("compensated/<marker>", "float32", "Compensated linear value."),
    Column("<template>/<population>", "bool", "Gate membership."),
)

TABLES = {
    "subsets.parquet / subsets.csv (one row per sample × template × population)": SUBSETS,
    "qc.csv (one row per sample)": QC,
    "errors.csv (one row per failed sample or sample × template)": ERRORS,
    "events/<sample_id>.parquet (seeded subsample of QC-passing events)": EVENTS,
}


def register(title: str, columns: tuple[Column, ...]) -> None:
    """Add another output table's columns to the documentation (later stages call this).

    Parameters
    ----------
    title
        Heading of the table in :func:`schema_markdown` (file name and what a row is); a
        title already registered is replaced.
    columns
        The table's columns, in order.
    """
    TABLES[title] = columns


class SchemaMismatch(ValueError):
    """A table about to be written disagrees with its documented schema (a bug in the code
    or in the documentation, never the user's input)."""


def _names(column: Column) -> list[str]:
    """The column names a documented entry stands for (``"ci_low / ci_high"`` is two)."""
    return [n.strip() for n in re.split(r",\s+|\s+/\s+", column.name) if n.strip()]


def _pattern(name: str) -> re.Pattern:
    return re.compile("^" + re.sub(r"<[^>]+>", ".+", re.escape(name).replace(
        r"\<", "<").replace(r"\>", ">")) + "$")


def schema_for(title: str) -> tuple[Column, ...]:
    """The documented columns of a table, by the start of its registered title
    (``"subsets.parquet"``, ``"qc.csv"``, ``"compare/responders.csv"``).

    Parameters
    ----------
    title
        The registered title's first file name (before `` / `` or `` (``), or a start of
        the title followed by a space.

    Returns
    -------
    tuple of Column
        The table's documented columns, in order (the first title that matches).

    Raises
    ------
    KeyError
        No registered table has that title.
    """
    for name, columns in TABLES.items():
        if name.split(" (")[0].split(" / ")[0] == title or name.startswith(title + " "):
            return columns
    raise KeyError(f"no documented table {title!r} (documented: {', '.join(TABLES)})")


def validate(table: pd.DataFrame, columns: tuple[Column, ...] | str, *,
             where: str = "table", complete: bool = True) -> None:
    """Check a table against its documented schema before it is written.

    Every column must be documented (by name, or by a pattern such as ``pct_of_<ref>``;
    the subset table's sheet columns are those before ``template``), and every documented
    column without a pattern must be present; columns documented as ``bool`` must hold
    booleans and ``Int64`` ones pandas' nullable integers.

    Parameters
    ----------
    table
        The table about to be written.
    columns
        Its documented columns, or the title :func:`schema_for` finds them by.
    where
        The table's name, for the message.
    complete
        Whether every documented column must be present (False for tables whose columns
        depend on what ran, such as ``qc.csv`` without QC).

    Raises
    ------
    SchemaMismatch
        A column is undocumented, missing, or of another type than documented.
    """
    if isinstance(columns, str):
        columns = schema_for(columns)
    fixed, patterns, types = [], [], {}
    for col in columns:
        for name in _names(col):
            if "<" in name:
                patterns.append(_pattern(name))
            else:
                fixed.append(name)
                types[name] = col.dtype
    present = [str(c) for c in table.columns]
    sheet: set[str] = set()
    if any(c.name == "<sheet column>" for c in columns) and "template" in present:
        sheet = set(present[: present.index("template")])
    problems = [f"column {c!r} is not documented" for c in present
                if c not in fixed and c not in sheet and not any(p.match(c) for p in patterns)]
    problems += [f"documented column {c!r} is missing" for c in fixed if complete
                 and c not in present and not (sheet and c in _SHEET_OPTIONAL)]
    for c in present:
        kind = types.get(c)
        if kind == "bool" and not pd.api.types.is_bool_dtype(table[c]) and len(table):
            problems.append(f"column {c!r} is {table[c].dtype}, documented bool")
        if kind == "Int64" and str(table[c].dtype) != "Int64":
            problems.append(f"column {c!r} is {table[c].dtype}, documented Int64")
    if problems:
        raise SchemaMismatch(f"{where} disagrees with its documented schema "
                             f"(immunoprofile schema): " + "; ".join(problems))


# Sheet columns documented by name in SUBSETS that a sheet may lack.
_SHEET_OPTIONAL = frozenset({"patient_id", "arm", "timepoint"})


def schema_markdown() -> str:
    """The documentation of every output table, as Markdown (``immunoprofile schema``)."""
    lines = [f"# immunoprofile output tables (schema {SCHEMA_VERSION})", ""]
    for title, columns in TABLES.items():
        lines += [f"## {title}", "", "| column | type | meaning |", "|---|---|---|"]
        lines += [f"| `{c.name}` | {c.dtype} | {c.description} |" for c in columns]
        lines.append("")
    return "\n".join(lines)


def write_parquet(table: pd.DataFrame, path: Path, *, metadata: dict | None = None,
                  schema: tuple[Column, ...] | str | None = None) -> Path:
    """Parquet with ``schema_version`` (and any ``metadata``) in the file's key-value metadata.

    Parameters
    ----------
    table
        The table; its index is not written.
    path
        Destination; parent folders are created and the file is replaced atomically.
    metadata
        JSON-serialisable entries stored with ``schema_version`` under the ``immunoprofile``
        key.
    schema
        The table's documented columns (or their title): checked by :func:`validate` first.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    return atomic_write(path, parquet_writer(table, metadata=metadata, schema=schema,
                                             where=str(path)))


def write_csv(table: pd.DataFrame, path: Path, *,
              schema: tuple[Column, ...] | str | None = None) -> Path:
    """CSV of a table, written atomically.

    Parameters
    ----------
    table
        The table; its index is not written.
    path
        Destination; parent folders are created and the file is replaced atomically.
    schema
        The table's documented columns (or their title): checked by :func:`validate` first.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    return atomic_write(path, csv_writer(table, schema=schema, where=str(path)))


def write_parquet_chunks(tables: Iterable[pd.DataFrame], path: Path, *,
                         metadata: dict | None = None) -> Path:
    """As :func:`write_parquet` for a table given in pieces of the same columns, each written
    as its own row group as it comes (the pieces are never held together).

    Parameters
    ----------
    tables
        The pieces, in order (at least one; a generator is consumed while the file is
        written); their indexes are not written.
    path
        Destination, replaced atomically (parent folders created).
    metadata
        Entries stored as in :func:`write_parquet`.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    def write(tmp: Path) -> None:
        out = None
        try:
            for table in tables:
                arrow = pa.Table.from_pandas(table, preserve_index=False)
                if out is None:
                    out = pq.ParquetWriter(tmp, _stamped(arrow.schema, metadata))
                out.write_table(arrow.replace_schema_metadata(out.schema.metadata))
        finally:
            if out is not None:
                out.close()
        if out is None:
            raise ValueError(f"{path}: no table to write")

    return atomic_write(path, write)


def parquet_writer(table: pd.DataFrame, *, metadata: dict | None = None,
                   schema: tuple[Column, ...] | str | None = None,
                   where: str = "table") -> Callable[[Path], None]:
    """What :func:`write_parquet` writes, as a function of the file to write it to (for
    writing several files as one, :func:`immunoprofile._atomic.atomic_write_all`); the
    table is checked against ``schema`` now.

    Parameters
    ----------
    table
        The table; its index is not written. It is converted to Arrow now.
    metadata
        JSON-serialisable entries stored with ``schema_version`` under the ``immunoprofile``
        key.
    schema
        The table's documented columns (or their title): checked by :func:`validate` now
        (None: not checked).
    where
        The table's name in the :class:`SchemaMismatch` message.

    Returns
    -------
    callable
        ``write(tmp)``, writing the Parquet file to ``tmp``.
    """
    if schema is not None:
        validate(table, schema, where=where)
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    arrow = arrow.replace_schema_metadata(_stamped(arrow.schema, metadata).metadata)
    return lambda tmp: pq.write_table(arrow, tmp)


def _stamped(schema: pa.Schema, metadata: dict | None) -> pa.Schema:
    """``schema`` with ``schema_version`` and ``metadata`` under the ``immunoprofile`` key."""
    meta = dict(schema.metadata or {})
    meta[b"immunoprofile"] = json.dumps({"schema_version": SCHEMA_VERSION,
                                         **(metadata or {})}).encode()
    return schema.with_metadata(meta)


def read_parquet_with_meta(path: Path) -> tuple[pd.DataFrame, dict]:
    """A Parquet file written by :func:`write_parquet`, and its ``immunoprofile`` metadata.

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    (table, metadata)
        The table and the entries stored under ``immunoprofile`` (``schema_version`` and
        what the writer added; empty when absent).
    """
    table = pq.read_table(path)
    return table.to_pandas(), _stored_meta(table.schema, b"immunoprofile")


def read_parquet_schema(path: Path) -> tuple[list[str], dict]:
    """The column names of a Parquet file and its ``immunoprofile`` metadata, without reading
    its data.

    Parameters
    ----------
    path
        A Parquet file (its footer only is read).

    Returns
    -------
    (columns, metadata)
        As :func:`read_parquet_with_meta` gives them, the table's column names only.
    """
    schema = pq.read_schema(path)  # tables are written without their index
    return list(schema.names), _stored_meta(schema, b"immunoprofile")


def read_parquet_arrays(path: Path, columns: list[str] | None = None
                        ) -> dict[str, np.ndarray]:
    """A Parquet file's columns as NumPy arrays (no DataFrame is built: numeric columns
    without nulls are not even copied).

    Parameters
    ----------
    path
        A Parquet file of plain columns (nulls become NaN or None).
    columns
        Names of the columns to read (the others are not read); default all.

    Returns
    -------
    dict
        ``{column: array}`` in the file's order.
    """
    table = pq.read_table(path, columns=columns)
    return {name: table.column(name).to_numpy() for name in table.column_names}


def _stored_meta(schema: pa.Schema, key: bytes) -> dict:
    """A JSON entry of a Parquet schema's metadata (empty when absent)."""
    return json.loads((schema.metadata or {}).get(key, b"{}"))


def csv_writer(table: pd.DataFrame, *, schema: tuple[Column, ...] | str | None = None,
               where: str = "table") -> Callable[[Path], None]:
    """What :func:`write_csv` writes, as a function of the file to write it to.

    Parameters
    ----------
    table
        The table; its index is not written.
    schema
        The table's documented columns (or their title): checked by :func:`validate` now
        (None: not checked).
    where
        The table's name in the :class:`SchemaMismatch` message.

    Returns
    -------
    callable
        ``write(tmp)``, writing the table as CSV to ``tmp``.
    """
    if schema is not None:
        validate(table, schema, where=where)
    return lambda tmp: table.to_csv(tmp, index=False)


def wide(subsets: pd.DataFrame, id_columns: list[str]) -> pd.DataFrame:
    """One row per sample; columns ``<template>/<population>/<measure>``.

    Parameters
    ----------
    subsets
        The long subset table (``sample_id``, ``template``, ``population`` and the measures
        ``count``, ``pct_parent``, ``abs_per_ul``, ``pct_of_*`` present).
    id_columns
        Per-sample columns kept in front (must include ``sample_id``); each sample's first
        row gives their values.

    Returns
    -------
    pandas.DataFrame
        ``id_columns`` then one column per template × population × measure (missing
        values dropped before pivoting, so NaN where a sample has none).
    """
    measures = [c for c in subsets.columns
                if c in ("count", "pct_parent", "abs_per_ul") or c.startswith("pct_of_")]
    long = subsets.melt(id_vars=["sample_id", "template", "population"], value_vars=measures,
                        var_name="measure").dropna(subset=["value"])
    long["column"] = long["template"] + "/" + long["population"] + "/" + long["measure"]
    table = long.pivot_table(index="sample_id", columns="column", values="value",
                             aggfunc="first", sort=False)
    meta = subsets[id_columns].drop_duplicates("sample_id").set_index("sample_id")
    return meta.join(table, how="left").reset_index()
