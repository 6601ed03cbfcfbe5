"""The subset-table row: one owner for what a gated sample contributes to ``subsets.parquet``.

:meth:`GatingResult.to_table <immunoprofile.gating.engine.GatingResult.to_table>` and the
batch both call :func:`subset_rows`, so a notebook's table for a sample is the pipeline's,
column for column (``immunoprofile schema`` documents them; :func:`tables.validate
<immunoprofile.tables.validate>` checks them on every write).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from immunoprofile.gating.engine import GatingResult

RARE_THRESHOLD = 50
BEADS = "Beads"
# Sheet columns that describe where a file is, not the sample: never copied into rows.
_NOT_METADATA = ("path", "row")


def sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (the ``file_sha256`` column; part of the resume key).

    Parameters
    ----------
    path
        The file to hash.
    chunk
        Bytes read at a time (1 MiB by default), so a large FCS file is never held whole.

    Returns
    -------
    str
        The hexadecimal digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def absolute_counts(table: pd.DataFrame, metadata: Mapping[str, Any],
                    reference: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Cells per µL for every row of a counts table, and how they were obtained.

    Single platform (beads) when the template gates a ``Beads`` population or the sheet gives
    ``bead_count``, with ``beads_per_test`` and ``blood_volume_ul``; otherwise dual platform
    when the sheet gives ``lymphocytes_per_ul`` and the template has a lymphocyte
    ``reference`` population.

    Parameters
    ----------
    table
        A gated sample's counts (``population``, ``count``).
    metadata
        The sample's sheet row.
    reference
        The template's lymphocyte population (:attr:`Template.reference_population`).

    Returns
    -------
    (values, methods)
        ``abs_per_ul`` (NaN where not available) and ``abs_method`` (``'beads'``,
        ``'dual_platform'`` or ``''``).
    """
    counts = table.set_index("population")["count"]
    n = len(table)
    lymph = metadata.get("lymphocytes_per_ul")
    if BEADS in counts.index or metadata.get("bead_count") is not None:
        beads = counts.get(BEADS, metadata.get("bead_count"))
        per_test, volume = metadata.get("beads_per_test"), metadata.get("blood_volume_ul")
        if beads and per_test and volume and not pd.isna(beads):
            value = table["count"].astype(float) / float(beads) * float(per_test) / float(volume)
            return value.to_numpy(), np.array(["beads"] * n, dtype=object)
    if lymph is not None and not pd.isna(lymph) and reference in counts.index:
        ref = counts[reference]
        if ref and not pd.isna(ref):
            value = float(lymph) * table["count"].astype(float) / float(ref)
            return value.to_numpy(), np.array(["dual_platform"] * n, dtype=object)
    return np.full(n, np.nan), np.array([""] * n, dtype=object)


def subset_rows(result: GatingResult, metadata: Mapping[str, Any] | None = None, *,
                rare_threshold: int = RARE_THRESHOLD,
                file_sha256: str | None = None) -> pd.DataFrame:
    """The subset-table rows of one gated sample (one per population).

    Parameters
    ----------
    result
        What :func:`~immunoprofile.gating.engine.gate_sample` returned.
    metadata
        The sample's sheet row (``sample_id``, ``patient_id``, ``arm``, ``timepoint``,
        ``lymphocytes_per_ul``…); ``path`` and ``row`` are left out. Default: the sample id
        only.
    rare_threshold
        Counts below it are flagged ``flag_rare``.
    file_sha256
        The FCS file's digest; computed from the file the result was gated on when not given
        (empty when that file is unknown).

    Returns
    -------
    pandas.DataFrame
        The sheet columns, then ``template``, ``template_version``, the counts, percentages
        and MFIs, ``abs_per_ul``, ``abs_method``, ``flag_rare``, ``qc_removed_pct``, ``override``
        and ``file_sha256``, as documented in :data:`immunoprofile.tables.SUBSETS`.
    """
    metadata = dict(metadata or {})
    metadata.setdefault("sample_id", result.sample_id)
    meta = {k: v for k, v in metadata.items() if k not in _NOT_METADATA}
    if file_sha256 is None:
        file_sha256 = sha256(result.path) if result.path and Path(result.path).is_file() \
            else ""
    table = result.counts.copy()
    abs_value, abs_method = absolute_counts(table, metadata, result.template
                                            .reference_population)
    table.insert(0, "template_version", result.template.version)
    table.insert(0, "template", result.template.name)
    for i, (k, v) in enumerate(meta.items()):
        table.insert(i, k, v)
    table["abs_per_ul"] = abs_value
    table["abs_method"] = abs_method
    # plain bool as documented (an Int64 count would make it pandas' nullable "boolean")
    rare = (table["count"].fillna(0) < rare_threshold) & table["measured"]
    table["flag_rare"] = rare.to_numpy(dtype=bool)
    table["qc_removed_pct"] = float(result.qc.get("pct_removed", 0.0))
    table["override"] = table["population"].isin(result.overridden).to_numpy(dtype=bool)
    table["file_sha256"] = file_sha256
    return table


def stack_rows(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Samples' subset rows as one table, columns in order of first appearance.

    A column a sample has no value in (a reference only another template declares, absolute
    counts without a lymphocyte count) is left out of that sample's part before stacking, so
    the other samples' values decide its type, as they always have (pandas is changing what
    all-empty columns do to a concatenation).

    Parameters
    ----------
    parts
        Per-sample subset tables.

    Returns
    -------
    pandas.DataFrame
        The rows of every part, in order.
    """
    columns = list(dict.fromkeys(c for part in parts for c in part.columns))
    kept = [part.dropna(axis=1, how="all") for part in parts]
    return pd.concat(kept, ignore_index=True).reindex(columns=columns)
