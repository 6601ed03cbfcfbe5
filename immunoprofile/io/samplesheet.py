"""The sample sheet: one row per FCS file with its patient, arm, visit and count inputs.

Structural problems stop a run before any work and are reported all at once, each with its row
(the line number in the file): missing columns, missing or duplicate ids, a patient seen in two
arms, non-numeric counts, a timepoint given two weeks. A missing or unreadable FCS file is not a
sheet problem: that sample fails on its own and the batch goes on (``strict=True`` makes missing
files sheet errors).
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from immunoprofile._atomic import file_name_problem
from immunoprofile.errors import SampleSheetError

REQUIRED_COLUMNS = ("sample_id", "path", "patient_id", "arm", "timepoint")
NUMERIC_COLUMNS = ("week", "lymphocytes_per_ul", "bead_count", "beads_per_test",
                   "blood_volume_ul", "days_since_last_il2_dose")
#: Columns with a meaning to immunoprofile; any other column is carried into the outputs.
KNOWN_COLUMNS = (*REQUIRED_COLUMNS, "week", "panel", "batch", "visit_date",
                 "lymphocytes_per_ul", "bead_count", "beads_per_test", "blood_volume_ul")


def natural_key(text: str) -> list:
    """Sort key that orders ``W2`` before ``W12`` (numbers compared as numbers).

    Parameters
    ----------
    text
        The value to sort (converted with ``str``).

    Returns
    -------
    list
        Alternating lower-cased text and int pieces, for ``sorted(..., key=natural_key)``.
    """
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(text))]


@dataclass
class SampleSheet:
    """A validated sample sheet.

    Attributes
    ----------
    table
        One row per sample; ``timepoint`` is an ordered categorical (by ``week`` when given,
        otherwise in natural order), ``path`` is absolute, ``row`` the line in the file.
    source
        The file it was read from.
    missing_files
        ``{sample_id: path}`` of rows whose FCS file does not exist (per-sample failures).
    """

    table: pd.DataFrame
    source: Path
    missing_files: dict[str, str]

    @property
    def timepoints(self) -> list[str]:
        """Timepoints in study order."""
        return list(self.table["timepoint"].cat.categories)

    @property
    def metadata_columns(self) -> list[str]:
        """Columns carried into every output row (all but the file path and line number)."""
        return [c for c in self.table.columns if c not in ("path", "row")]

    def __len__(self) -> int:
        return len(self.table)


def _line(i: int) -> str:
    return f"row {i + 1} (line {i + 2})"


def read_table_text(path: Path, *, what: str) -> tuple[pd.DataFrame, list[str]]:
    """A sheet as people and spreadsheets write it: every cell as text, and its problems.

    UTF-8 with or without a byte-order mark ("CSV UTF-8" from Excel), CRLF or LF, comma,
    semicolon or tab separated. A file that is empty or not UTF-8 is refused at once (the
    line of the first bad byte is named); rows with more or fewer fields than the header and
    repeated column names are listed as problems with their rows. Empty trailing columns (a
    trailing comma on every line) are dropped.

    Parameters
    ----------
    path
        The file.
    what
        What the file is, for messages ("sample sheet", "CBA sheet").

    Returns
    -------
    (table, problems)
        Cells as stripped strings ('' when empty) under stripped column names, and the
        structural problems found (the caller adds its own and raises once).

    Raises
    ------
    SampleSheetError
        The file cannot be read, is empty, or is not UTF-8 text.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SampleSheetError(f"{what} {path}: cannot be read ({exc.strerror})") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SampleSheetError(
            f"{what} {path}: line {line} is not UTF-8 text (byte {raw[exc.start]:#x}); save "
            "the sheet as 'CSV UTF-8' (Excel: File > Save As > CSV UTF-8)") from exc
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise SampleSheetError(f"{what} {path}: the file is empty; it needs a header row "
                               "(sample_id,path,patient_id,arm,timepoint,…) and one row per "
                               "file")
    header_line = lines[0]
    counts = {sep: header_line.count(sep) for sep in (",", "\t", ";")}
    sep = max(counts, key=lambda k: counts[k]) if any(counts.values()) else ","
    rows = list(csv.reader(io.StringIO(text), delimiter=sep, skipinitialspace=True))
    rows = [r for r in rows if any(c.strip() for c in r)]
    header = [c.strip() for c in rows[0]]
    body = rows[1:]
    # a trailing separator on every line makes empty trailing columns: not data
    while header and header[-1] == "" and all(len(r) < len(header) or not r[len(header) - 1]
                                              .strip() for r in body):
        header.pop()
        body = [r[: len(header)] if len(r) > len(header) else r for r in body]
    problems: list[str] = []
    seen: dict[str, int] = {}
    for name in header:
        seen[name] = seen.get(name, 0) + 1
    problems += [f"column {name!r} appears {n} times in the header: keep one"
                 for name, n in seen.items() if n > 1 and name]
    if "" in header:
        problems.append("the header has an empty column name: name every column")
    cells = []
    for i, row in enumerate(body):
        if len(row) != len(header):
            hint = ("fill the missing fields (empty ones need their separators)"
                    if len(row) < len(header) else
                    "a trailing separator, or a value holding a separator without quotes?")
            problems.append(f"{_line(i)}: {len(row)} fields, the header has {len(header)}: "
                            f"{hint}")
        cells.append([c.strip() for c in (row + [""] * len(header))[: len(header)]])
    names = [n if seen.get(n, 0) == 1 else f"{n}#{k}" for k, n in enumerate(header)]
    table = pd.DataFrame(cells, columns=names, dtype=str)
    return table, problems


def read_samplesheet(path: str | Path, *, strict: bool = False) -> SampleSheet:
    """Read and validate a sample sheet (CSV or TSV, detected from the content).

    Parameters
    ----------
    path
        The sheet. Relative FCS paths in it are relative to the sheet's folder.
    strict
        Treat missing FCS files as sheet errors instead of per-sample failures.

    Raises
    ------
    SampleSheetError
        Every structural problem, each with its row and line number.
    """
    path = Path(path)
    table, problems = read_table_text(path, what="sample sheet")
    table = table.apply(lambda col: col.str.strip())
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        problems.insert(0, f"missing column(s) {', '.join(missing)} (required: "
                        f"{', '.join(REQUIRED_COLUMNS)}; found: {', '.join(table.columns)})")
        raise SampleSheetError(f"sample sheet {path} has {len(problems)} problem(s):\n  - "
                               + "\n  - ".join(problems))
    if table.empty:
        raise SampleSheetError(f"sample sheet {path}: no rows")

    for col in REQUIRED_COLUMNS:
        for i in np.flatnonzero(table[col].eq("").to_numpy()):
            problems.append(f"{_line(i)}: empty {col}")
    ids = table["sample_id"]
    for i, sid in enumerate(ids):
        reason = file_name_problem(sid) if sid else None
        if reason:
            problems.append(f"{_line(i)}: sample_id {sid!r} {reason}: it names the sample's "
                            "files in the run folder; use letters, digits, '_', '-' and '.'")
    dupes = ids[ids.duplicated(keep=False) & ids.ne("")]
    for sid, idx in dupes.groupby(dupes).groups.items():
        rows = ", ".join(_line(int(table.index.get_loc(i))) for i in idx)
        problems.append(f"duplicate sample_id {sid!r} in {rows}")
    arms = table[table["patient_id"].ne("")].groupby("patient_id")["arm"].unique()
    for patient, values in arms.items():
        values = [v for v in values if v]
        if len(values) > 1:
            rows = ", ".join(_line(i) for i in np.flatnonzero(table["patient_id"].eq(patient)))
            problems.append(f"patient {patient!r} is in several arms ({', '.join(values)}): "
                            f"{rows}")
    for col in NUMERIC_COLUMNS:
        if col not in table.columns:
            continue
        values = pd.to_numeric(table[col].where(table[col].ne("")), errors="coerce")
        bad = values.isna() & table[col].ne("")
        for i in np.flatnonzero(bad.to_numpy()):
            problems.append(f"{_line(i)}: {col} {table[col].iloc[i]!r} is not a number")
        for i in np.flatnonzero(np.isinf(values.to_numpy(float))):
            problems.append(f"{_line(i)}: {col} {table[col].iloc[i]!r} is not a finite number")
        negative = values < 0
        for i in np.flatnonzero(negative.to_numpy()):
            problems.append(f"{_line(i)}: {col} must not be negative ({values.iloc[i]})")
        table[col] = values
    if "week" in table.columns:
        weeks = table.groupby("timepoint")["week"].nunique()
        for tp in weeks[weeks > 1].index:
            at = table["timepoint"].eq(tp).to_numpy()
            values = ", ".join(f"{w:g}" for w in sorted(table.loc[at, "week"].dropna().unique()))
            rows = ", ".join(_line(i) for i in np.flatnonzero(at))
            problems.append(f"timepoint {tp!r} has several weeks ({values}): {rows}")

    base = path.resolve().parent
    resolved = [str(p if Path(p).is_absolute() else base / p) for p in table["path"]]
    table["path"] = resolved
    missing_files = {sid: p for sid, p in zip(table["sample_id"], resolved)
                     if p and not Path(p).is_file()}
    if strict:
        for i, (sid, p) in enumerate(zip(table["sample_id"], resolved)):
            if sid in missing_files:
                problems.append(f"{_line(i)}: FCS file {p} does not exist")
    if problems:
        raise SampleSheetError(
            f"sample sheet {path} has {len(problems)} problem(s):\n  - " + "\n  - ".join(problems)
        )
    table.insert(len(table.columns), "row", np.arange(1, len(table) + 1))
    table["timepoint"] = pd.Categorical(table["timepoint"], categories=_order(table),
                                        ordered=True)
    for col in ("patient_id", "arm") + (("batch",) if "batch" in table.columns else ()):
        table[col] = table[col].astype("category")
    return SampleSheet(table=table.reset_index(drop=True), source=path,
                       missing_files=missing_files)


def _order(table: pd.DataFrame) -> list[str]:
    timepoints = list(dict.fromkeys(table["timepoint"]))
    if "week" in table.columns and table["week"].notna().any():
        week = table.groupby("timepoint")["week"].first()
        return sorted(timepoints, key=lambda t: (np.isnan(week.get(t, np.nan)),
                                                 week.get(t, np.inf), natural_key(t)))
    return sorted(timepoints, key=natural_key)
