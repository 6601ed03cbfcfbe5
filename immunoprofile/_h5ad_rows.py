"""Rows of an ``.h5ad`` file written after anndata laid it out: the datasets that hold an
obs column's rows, and a dataset regrown to more rows with its encoding kept. This is how
:func:`immunoprofile.assemble.write_timepoint_h5ad` writes a timepoint one sample at a time
(anndata writes whole arrays only)."""

from __future__ import annotations

import h5py


def row_datasets(node: h5py.Group | h5py.Dataset) -> list[h5py.Dataset]:
    """The datasets holding an obs column's per-row values: itself, a categorical's codes,
    a nullable array's values and mask."""
    kind = str(node.attrs.get("encoding-type", ""))
    if kind == "categorical":
        return [node["codes"]]
    if kind.startswith("nullable"):
        return [node[k] for k in ("values", "mask") if k in node]
    return [node]


def grow_rows(f: h5py.File, key: str, n: int) -> h5py.Dataset:
    """Replace dataset ``key`` by an empty one of ``n`` rows (same dtype, trailing shape and
    anndata encoding attributes)."""
    old = f[key]
    attrs, dtype, shape = dict(old.attrs), old.dtype, (n, *old.shape[1:])
    name = old.name
    del f[name]
    new = f.create_dataset(name, shape=shape, dtype=dtype)
    new.attrs.update(attrs)
    return new
