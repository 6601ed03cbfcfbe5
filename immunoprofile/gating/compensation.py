"""Compensation: which matrix applies to a sample, and applying it exactly as FlowKit does."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from immunoprofile.errors import FCSError, TemplateError
from immunoprofile.io.fcs import FCSSample
from immunoprofile.panel import resolve_markers
from immunoprofile.template.model import Template


def read_matrix(path: str | Path) -> pd.DataFrame:
    """Read a spillover matrix from CSV/TSV: a header row of channel (or marker) names and one
    row per fluorochrome, optionally with the row names in a first column.

    Parameters
    ----------
    path
        The matrix file (delimiter sniffed).

    Returns
    -------
    pandas.DataFrame
        Square float matrix, columns as in the header; rows named by the first column, or
        like the columns when there is none.

    Raises
    ------
    TemplateError
        Unreadable, non-numeric or not square.
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, sep=None, engine="python")
    except (OSError, ValueError) as exc:
        raise TemplateError(f"compensation matrix {path}: cannot be read ({exc})") from exc
    first = table.columns[0]
    if table[first].dtype == object:
        table = table.set_index(first)
    else:
        table.index = list(table.columns)
    try:
        table = table.astype(float)
    except ValueError as exc:
        raise TemplateError(f"compensation matrix {path}: values must be numbers ({exc})") from exc
    if table.shape[0] != table.shape[1]:
        raise TemplateError(f"compensation matrix {path}: must be square, got {table.shape}")
    return table


def matrix_for(
    sample: FCSSample, template: Template, ref: str | None = None
) -> pd.DataFrame | None:
    """The spillover matrix a template reference selects for a sample, columns as $PnN names.

    ``ref`` is ``"file"`` (the sample's own $SPILLOVER; None when it has none, which GatingML
    treats as uncompensated), ``"none"``, the name of a matrix carried by the template, or a
    path to a matrix file (relative to the template's folder).

    Parameters
    ----------
    sample
        The sample; its $SPILLOVER, and its panel to resolve marker-named columns.
    template
        The template: its ``compensation`` default, named ``comp_matrices`` and ``source``.
    ref
        Which matrix (see above); default the template's ``compensation``. ``"FCS"`` means
        ``"file"`` and ``"uncompensated"`` means ``"none"``.

    Returns
    -------
    pandas.DataFrame or None
        The matrix with columns renamed to the sample's $PnN, or None for no compensation.

    Raises
    ------
    TemplateError
        A matrix file cannot be read.
    PanelError
        A matrix column names a marker the sample lacks.
    """
    ref = template.compensation if ref is None else ref
    if ref in ("none", "uncompensated"):
        return None
    if ref in ("file", "FCS"):
        has_keyword = any(str(sample.metadata.get(k, "")).strip() for k in ("spillover", "spill"))
        if sample.spillover is None and has_keyword:
            why = next((w for w in sample.warnings if "spillover matrix is unusable" in w),
                       "it could not be parsed")
            raise FCSError(f"{Path(sample.path).name}: template {template.name} compensates "
                           f"with the file's own matrix, but {why}; give the template a "
                           "matrix file (compensation: PATH) or re-export the FCS file")
        if sample.spillover is not None:
            _check_matrix(sample.spillover, f"the $SPILLOVER of {Path(sample.path).name}",
                          FCSError)
        return sample.spillover
    if ref in template.comp_matrices:
        matrix = template.comp_matrices[ref]
    else:
        path = Path(ref)
        if not path.is_absolute() and template.source:
            path = Path(template.source).parent / path
        matrix = read_matrix(path)
    _check_matrix(matrix, f"compensation matrix {ref!r} of template {template.name}",
                  TemplateError)
    # Matrix columns may name markers ("CD4") rather than detectors: resolve them per file.
    names = resolve_markers(sample, [str(c) for c in matrix.columns],
                            what=f"compensation matrix {ref!r} of template {template.name}")
    out = matrix.copy()
    out.columns = [names[str(c)] for c in matrix.columns]
    return out


def _check_matrix(matrix: pd.DataFrame, what: str, error: type[Exception]) -> None:
    """A spillover matrix must be finite and invertible, or compensation is meaningless."""
    values = np.asarray(matrix.values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise error(f"{what} holds NaN or infinite values: fix the matrix")
    if values.shape[0] != values.shape[1] or np.linalg.matrix_rank(values) < values.shape[0]:
        raise error(f"{what} is singular (its channels cannot be separated): fix the matrix")


# Events solved at a time: the float64 copy of a block stays small (a few MiB) and the block
# is still large enough for LAPACK's matrix-matrix path (speed as one solve of the whole file).
_BLOCK = 1 << 16


def compensate(
    raw: np.ndarray, channel_names: list[str], matrix: pd.DataFrame, *,
    channels: list[str] | None = None, rows: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Compensated float64 columns for every channel the matrix covers (or ``channels``).

    Values are FlowUtils' (and so FlowKit's) ``numpy.linalg.solve(S.T, X.T).T``, bit for bit:
    the same call, made on blocks of events. Each event is solved independently, so a block
    gives the values the whole file would, except for a block of one event: LAPACK then
    takes its matrix-vector path, which rounds differently, so a lone event is solved twice
    over. (SciPy's ``lu_solve`` was used before, but links its own BLAS: its values differed
    from FlowKit's in the last bit for about 1 event in 1,500.)

    Parameters
    ----------
    raw
        The ``(n_events, n_channels)`` event matrix (any float dtype).
    channel_names
        $PnN of ``raw``'s columns.
    matrix
        Spillover matrix, columns named by $PnN.
    channels
        The compensated channels to return (default all the matrix covers): the others are
        solved for but not kept, so memory follows what is asked for.
    rows
        Event numbers to compensate (default all events), in the order given.
    """
    names = [str(c) for c in matrix.columns]
    cols = [channel_names.index(c) for c in names]
    keep = [names.index(c) for c in (names if channels is None else channels)]
    spill_t = np.asarray(matrix.values, dtype=np.float64).T
    n = raw.shape[0] if rows is None else len(rows)
    out = np.empty((len(keep), n))
    bounds = [*range(0, n, _BLOCK), n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        del bounds[-2]  # no one-event block at the end
    for a, b in itertools.pairwise(bounds):
        sel = slice(a, b) if rows is None else rows[a:b]
        if b - a == 1 and raw.shape[0] > 1:  # one event asked for, of a larger file
            sel = np.repeat(sel, 2)
        block = raw[sel][:, cols].astype(np.float64)
        out[:, a:b] = np.linalg.solve(spill_t, block.T)[keep, :b - a]
    return {names[k]: out[i] for i, k in enumerate(keep)}
