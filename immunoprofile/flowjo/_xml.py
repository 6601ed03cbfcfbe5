"""Writing FlowJo 10 workspace XML: samples, their spillover, transforms and gate trees.

FlowJo keeps one gate tree per sample (a ``SampleNode``), gate coordinates in the raw
(untransformed) data space, one transform per parameter of each sample, and the sample's
spillover matrix with a ``Comp-`` prefix on the compensated parameters' names. This module
writes that layout, as FlowJo 10 and FlowKit's ``Workspace`` read it; what to write comes from
:mod:`immunoprofile.flowjo.export`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from lxml import etree

NS = {"gating": "http://www.isac-net.org/std/Gating-ML/v2.0/gating",
      "transforms": "http://www.isac-net.org/std/Gating-ML/v2.0/transformations",
      "data-type": "http://www.isac-net.org/std/Gating-ML/v2.0/datatypes"}
COMP_PREFIX = "Comp-"


def _q(prefix: str, name: str) -> str:
    return f"{{{NS[prefix]}}}{name}"


@dataclass
class GateNode:
    """One population of a sample's tree.

    Attributes
    ----------
    name
        Population name (FlowJo's node name; ``/`` separates paths, so it may not hold one).
    path
        Names of its ancestors, top first (empty for a top population).
    kind
        ``rectangle``, ``polygon``, ``and``, ``or`` or ``not``.
    dims
        Parameter names as FlowJo writes them (``Comp-`` prefix on compensated ones).
    mins, maxs
        Rectangle bounds in raw values (None: open).
    vertices
        Polygon vertices in raw values.
    complement
        Events outside the shape (``eventsInside="0"``).
    dependents
        Boolean gates: the full paths of the populations combined.
    """

    name: str
    path: tuple[str, ...]
    kind: str
    dims: list[str] = field(default_factory=list)
    mins: list[float | None] = field(default_factory=list)
    maxs: list[float | None] = field(default_factory=list)
    vertices: list[list[float]] = field(default_factory=list)
    complement: bool = False
    dependents: list[tuple[str, ...]] = field(default_factory=list)


@dataclass
class SampleEntry:
    """One sample of the workspace: its file, keywords, spillover, transforms and gates."""

    name: str
    uri: str
    keywords: dict[str, str]
    spillover: pd.DataFrame | None
    transforms: dict[str, Any]  # {$PnN: FlowKit transform}
    gates: list[GateNode]


def _number(v: float) -> str:
    return repr(float(v))


def _transform_spec(xform: Any) -> tuple[str, dict[str, float | str]]:
    """FlowJo's element name for a FlowKit transform and its attributes."""
    # start-up time: FlowKit is needed only when a workspace is written
    from flowkit import transforms as tr
    from flowkit._models.transforms._wsp_transforms import WSPBiexTransform, WSPLogTransform

    if isinstance(xform, WSPBiexTransform):
        return "biex", {"length": "256", "maxRange": xform.max_value, "neg": xform.negative,
                        "width": xform.width, "pos": xform.positive}
    if isinstance(xform, WSPLogTransform):
        return "log", {"offset": xform.offset, "decades": xform.decades}
    if isinstance(xform, tr.AsinhTransform):
        return "fasinh", {"length": "256", "maxRange": xform.param_t, "T": xform.param_t,
                          "M": xform.param_m, "A": xform.param_a, "W": "1"}
    if isinstance(xform, tr.LogicleTransform):
        return "logicle", {"length": "256", "T": xform.param_t, "W": xform.param_w,
                           "M": xform.param_m, "A": xform.param_a}
    if isinstance(xform, tr.LinearTransform):  # FlowKit reads minRange as A
        return "linear", {"minRange": xform.param_a, "maxRange": xform.param_t, "gain": "1"}
    raise ValueError(f"{type(xform).__name__} has no FlowJo workspace form")


def _transform_element(parent: Any, channel: str, xform: Any) -> None:
    tag, attrs = _transform_spec(xform)
    el = etree.SubElement(parent, _q("transforms", tag))
    for key, value in attrs.items():
        el.set(_q("transforms", key), value if isinstance(value, str) else _number(value))
    param = etree.SubElement(el, _q("data-type", "parameter"))
    param.set(_q("data-type", "name"), channel)


def _spillover_element(parent: Any, spill: pd.DataFrame) -> None:
    el = etree.SubElement(parent, _q("transforms", "spilloverMatrix"))
    el.set("spectral", "0")
    el.set("prefix", COMP_PREFIX)
    el.set("name", "Acquisition-defined")
    el.set("editable", "0")
    el.set("color", "#c0c0c0")
    el.set("version", "FlowJo-10.6.2")
    el.set("status", "FINALIZED")
    el.set("suffix", "")
    detectors = [str(c) for c in spill.columns]
    params = etree.SubElement(el, _q("data-type", "parameters"))
    for d in detectors:
        p = etree.SubElement(params, _q("data-type", "parameter"))
        p.set(_q("data-type", "name"), d)
        p.set("userProvidedCompInfix", COMP_PREFIX + d)
    values = spill.to_numpy(float)
    for i, d in enumerate(detectors):
        row = etree.SubElement(el, _q("transforms", "spillover"))
        row.set(_q("data-type", "parameter"), d)
        row.set("userProvidedCompInfix", COMP_PREFIX + d)
        for j, d2 in enumerate(detectors):
            c = etree.SubElement(row, _q("transforms", "coefficient"))
            c.set(_q("data-type", "parameter"), d2)
            c.set(_q("transforms", "value"), _number(values[i, j]))


def _dimension(parent: Any, name: str, lo: float | None = None, hi: float | None = None) -> None:
    dim = etree.SubElement(parent, _q("gating", "dimension"))
    if lo is not None and np.isfinite(lo):
        dim.set(_q("gating", "min"), _number(lo))
    if hi is not None and np.isfinite(hi):
        dim.set(_q("gating", "max"), _number(hi))
    fcs = etree.SubElement(dim, _q("data-type", "fcs-dimension"))
    fcs.set(_q("data-type", "name"), name)


def _gate_element(pop: Any, node: GateNode, gate_id: str, parent_id: str | None) -> None:
    gate = etree.SubElement(pop, "Gate")
    gate.set(_q("gating", "id"), gate_id)
    if parent_id:
        gate.set(_q("gating", "parent_id"), parent_id)
    tag = "RectangleGate" if node.kind == "rectangle" else "PolygonGate"
    shape = etree.SubElement(gate, _q("gating", tag))
    shape.set("eventsInside", "0" if node.complement else "1")
    shape.set(_q("gating", "id"), gate_id)
    if parent_id:
        shape.set(_q("gating", "parent_id"), parent_id)
    if node.kind == "rectangle":
        shape.set("percentX", "0")
        shape.set("percentY", "0")
        for name, lo, hi in zip(node.dims, node.mins, node.maxs):
            _dimension(shape, name, lo, hi)
        return
    shape.set("quadID", "-1")
    shape.set("gateResolution", "256")
    for name in node.dims:
        _dimension(shape, name)
    for vertex in node.vertices:
        v = etree.SubElement(shape, _q("gating", "vertex"))
        for coord in vertex:
            c = etree.SubElement(v, _q("gating", "coordinate"))
            c.set(_q("data-type", "value"), _number(coord))


def _tree(parent_el: Any, nodes: list[GateNode], path: tuple[str, ...], ids: dict,
          sample_id: str) -> None:
    children = [n for n in nodes if n.path == path]
    if not children:
        return
    subs = etree.SubElement(parent_el, "Subpopulations")
    for node in children:
        full = (*path, node.name)
        ids[full] = f"ID{sample_id}_{len(ids) + 1}"
        if node.kind in ("and", "or", "not"):
            el = etree.SubElement(subs, {"and": "AndNode", "or": "OrNode",
                                         "not": "NotNode"}[node.kind])
            el.set("name", node.name)
            el.set("annotation", "")
            el.set("owningGroup", "")
            deps = etree.SubElement(el, "Dependents")
            for dep in node.dependents:
                d = etree.SubElement(deps, "Dependent")
                d.set("name", "/".join(dep))
        else:
            el = etree.SubElement(subs, "Population")
            el.set("name", node.name)
            el.set("annotation", "")
            el.set("owningGroup", "")
            _gate_element(el, node, ids[full], ids.get(path))
        _tree(el, nodes, full, ids, sample_id)


def workspace_xml(samples: list[SampleEntry], *, group: str = "All Samples") -> bytes:
    """A FlowJo 10 workspace holding the samples, each with its own gate tree.

    Parameters
    ----------
    samples
        The samples, in the order FlowJo lists them.
    group
        The sample group they all belong to (besides "All Samples").

    Returns
    -------
    bytes
        The workspace XML (UTF-8).
    """
    root = etree.Element("Workspace", nsmap=NS)
    root.set("version", "20.0")
    root.set("modDate", datetime.now(UTC).strftime("%a %b %d %H:%M:%S UTC %Y"))
    root.set("flowJoVersion", "10.6.2")
    root.set("curGroup", "All Samples")
    etree.SubElement(root, "Matrices")
    groups = etree.SubElement(root, "Groups")
    sample_ids = [str(i + 1) for i in range(len(samples))]
    for name in dict.fromkeys(["All Samples", group]):
        node = etree.SubElement(groups, "GroupNode")
        node.set("name", name)
        node.set("annotation", "")
        node.set("owningGroup", name)
        g = etree.SubElement(node, "Group")
        g.set("name", name)
        refs = etree.SubElement(g, "SampleRefs")
        for sid in sample_ids:
            etree.SubElement(refs, "SampleRef").set("sampleID", sid)
    sample_list = etree.SubElement(root, "SampleList")
    for sid, entry in zip(sample_ids, samples):
        s = etree.SubElement(sample_list, "Sample")
        ds = etree.SubElement(s, "DataSet")
        ds.set("uri", entry.uri)
        ds.set("sampleID", sid)
        if entry.spillover is not None:
            _spillover_element(s, entry.spillover)
        xforms = etree.SubElement(s, "Transformations")
        for channel, xform in entry.transforms.items():
            _transform_element(xforms, channel, xform)
        kws = etree.SubElement(s, "Keywords")
        for k, v in entry.keywords.items():
            kw = etree.SubElement(kws, "Keyword")
            kw.set("name", str(k))
            kw.set("value", str(v))
        node = etree.SubElement(s, "SampleNode")
        node.set("name", entry.name)
        node.set("annotation", "")
        node.set("owningGroup", "")
        node.set("sampleID", sid)
        _tree(node, entry.gates, (), {}, sid)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
