"""Compensation: which matrix applies to a sample, and applying it exactly as FlowKit does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.linalg import lu_factor, lu_solve

from immunoprofile.errors import TemplateError
from immunoprofile.io.fcs import FCSSample
from immunoprofile.panel import resolve_markers
from immunoprofile.template.model import Template


def read_matrix(path: str | Path) -> pd.DataFrame:
    """Read a spillover matrix from CSV/TSV: a header row of channel (or marker) names and one
    row per fluorochrome, optionally with the row names in a first column."""
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
    """
    ref = template.compensation if ref is None else ref
    if ref in ("none", "uncompensated"):
        return None
    if ref in ("file", "FCS"):
        return sample.spillover
    if ref in template.comp_matrices:
        matrix = template.comp_matrices[ref]
    else:
        path = Path(ref)
        if not path.is_absolute() and template.source:
            path = Path(template.source).parent / path
        matrix = read_matrix(path)
    # Matrix columns may name markers ("CD4") rather than detectors: resolve them per file.
    names = resolve_markers(sample, [str(c) for c in matrix.columns],
                            what=f"compensation matrix {ref!r} of template {template.name}")
    out = matrix.copy()
    out.columns = [names[str(c)] for c in matrix.columns]
    return out


def compensate(
    raw: np.ndarray, channel_names: list[str], matrix: pd.DataFrame
) -> dict[str, np.ndarray]:
    """Compensated float64 columns for every channel the matrix covers.

    FlowUtils (and so FlowKit) computes ``numpy.linalg.solve(S.T, X.T).T``. The same LAPACK
    LU factorisation and triangular solves through SciPy's ``lu_factor``/``lu_solve`` give
    bit-identical values (a test checks it against FlowKit) in a third of the time, because
    they skip numpy's per-call copies of the right-hand side.
    """
    cols = [channel_names.index(c) for c in matrix.columns]
    # (n, k) C-ordered is (k, n) Fortran-ordered: LAPACK solves in place with no copy.
    data = raw[:, cols].astype(np.float64)
    lu = lu_factor(np.asarray(matrix.values, dtype=np.float64).T, check_finite=False)
    comp = lu_solve(lu, data.T, check_finite=False, overwrite_b=True).T
    # Column views: copying them contiguous would cost more than the strided reads save.
    return {name: comp[:, k] for k, name in enumerate(matrix.columns)}
