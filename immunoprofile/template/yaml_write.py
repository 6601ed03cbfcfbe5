"""Writing templates as YAML (the inverse of :mod:`immunoprofile.template.yaml_io`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from immunoprofile._atomic import atomic_write
from immunoprofile.errors import TemplateError
from immunoprofile.template.model import (
    BooleanGate,
    Dimension,
    EllipseGate,
    Gate,
    PolygonGate,
    RectangleGate,
    Template,
)


def _dim_to_yaml(d: Dimension) -> Any:
    if d.ratio is None and d.transform is None and d.compensation is None:
        return d.marker
    out: dict[str, Any] = {}
    if d.ratio is not None:
        out.update(id=d.marker, ratio=[d.ratio.numerator, d.ratio.denominator],
                   A=d.ratio.A, B=d.ratio.B, C=d.ratio.C)
    else:
        out["marker"] = d.marker
    if d.transform is not None:
        out["transform"] = d.transform.to_dict()
    if d.compensation is not None:
        out["compensation"] = d.compensation
    return out


def _gate_to_yaml(g: Gate) -> dict[str, Any]:
    if isinstance(g, BooleanGate):
        return {g.op: [("!" if neg else "") + ref for ref, neg in g.refs]}
    if isinstance(g, RectangleGate):
        if all(d.transform is None and d.ratio is None and d.compensation is None
               for d in g.dims):
            body: dict[str, Any] = {
                "range" if len(g.dims) == 1 else "rectangle": {
                    d.marker: [lo, hi] for d, lo, hi in zip(g.dims, g.mins, g.maxs)}}
        else:
            # Dimensions with their own transform cannot be keys: write the long form.
            body = {"rectangle": {"dims": [_dim_to_yaml(d) for d in g.dims],
                                  "bounds": [[lo, hi] for lo, hi in zip(g.mins, g.maxs)]}}
        if g.complement:
            body["complement"] = True
        return body
    if isinstance(g, PolygonGate):
        body = {"polygon": {"dims": [_dim_to_yaml(d) for d in g.dims],
                            "vertices": [list(v) for v in g.vertices]}}
        if g.complement:
            body["complement"] = True
        return body
    if isinstance(g, EllipseGate):
        return {"ellipse": {"dims": [_dim_to_yaml(d) for d in g.dims], "center": list(g.mean),
                            "covariance": [list(r) for r in g.covariance],
                            "distance_square": g.distance_square}}
    raise TemplateError(f"cannot write gate {g!r}")


def gate_to_dict(g: Gate) -> dict[str, Any]:
    """A gate in its template YAML form (the inverse of
    :func:`~immunoprofile.template.yaml_io.gate_from_dict`).

    Parameters
    ----------
    g
        The gate.

    Returns
    -------
    dict
        Plain Python values (floats, lists), ready for ``yaml.safe_dump``.
    """
    return _plain(_gate_to_yaml(g))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


def template_to_dict(t: Template) -> dict[str, Any]:
    """The YAML form of a template (quadrant groups are written as their rectangles).

    Parameters
    ----------
    t
        The template.

    Returns
    -------
    dict
        Plain Python values that :func:`~immunoprofile.template.template_from_dict` reads
        back; optional keys are left out when empty or at their defaults.

    Raises
    ------
    TemplateError
        A gate of a kind that has no YAML form.
    """
    out: dict[str, Any] = {"name": t.name, "version": t.version}
    if t.description:
        out["description"] = t.description
    out["compensation"] = t.compensation
    if t.required_markers or t.optional_markers:
        out["markers"] = {"required": list(t.required_markers),
                          "optional": list(t.optional_markers)}
    if t.transforms:
        out["transforms"] = {k: v.to_dict() for k, v in t.transforms.items()}
    if t.qc is not None:
        out["qc"] = dict(t.qc)
    if t.reference is not None:
        out["reference_population"] = t.reference
    if t.comp_matrices:
        out["matrices"] = {
            mid: {"detectors": list(m.columns), "fluorochromes": list(m.index),
                  "values": m.values.tolist()} for mid, m in t.comp_matrices.items()}
    pops = []
    for p in t.populations:
        entry: dict[str, Any] = {"name": p.name}
        if p.parent:
            entry["parent"] = p.parent
        entry["gate"] = _gate_to_yaml(p.gate)
        if p.adaptive:
            entry["adaptive"] = dict(p.adaptive)
        if p.pct_of:
            entry["pct_of"] = list(p.pct_of)
        if p.mfi:
            entry["mfi"] = list(p.mfi)
        if p.description:
            entry["description"] = p.description
        if p.if_missing != "not_measured":
            entry["if_missing"] = p.if_missing
        pops.append(entry)
    out["populations"] = pops
    return out


def write_template(t: Template, path: str | Path) -> Path:
    """Write a template as YAML, atomically (temporary file, then rename).

    Parameters
    ----------
    t
        The template.
    path
        The ``.yaml`` file to write; parent folders are created.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    text = template_yaml(t)
    return atomic_write(Path(path), lambda tmp: tmp.write_text(text))


def template_yaml(t: Template) -> str:
    """A template as YAML text (what :func:`write_template` writes).

    Parameters
    ----------
    t
        The template.

    Returns
    -------
    str
        The YAML document.
    """
    return yaml.safe_dump(template_to_dict(t), sort_keys=False, allow_unicode=True)
