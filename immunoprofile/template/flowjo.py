"""FlowJo 10 workspace (.wsp) specifics: FlowJo's own transforms and gates.

FlowKit parses the workspace (:func:`immunoprofile.template.gatingml.read_flowjo`); most of what
it returns is plain GatingML (linear, logicle and asinh transforms; rectangle, polygon and
boolean gates) and converts like any GatingML file. This module handles the rest:

- FlowJo's ``biex`` and ``log`` transforms (FlowKit's ``WSPBiexTransform``/``WSPLogTransform``)
  become :class:`~immunoprofile.template.transforms.FlowJoBiex` and ``FlowJoLog`` (defined
  with the other transforms, re-exported here), which call FlowKit's own code, so values and
  gate membership are bit-identical to FlowKit's;
- FlowJo ellipses (``WSPEllipsoidGate``, stored as foci and edge points in FlowJo's 256-bin
  display space) become the 128-vertex polygon FlowKit and FlowJo gate with;
- FlowJo quadrant gates arrive as four rectangles named ``Q1: …`` to ``Q4: …``; they are
  grouped back into one quadrant group (:func:`group_quadrants`);
- FlowJo lets gate names repeat under different parents (``CD4+/IFNg+``, ``CD8+/IFNg+``),
  while population names are ids: :func:`qualify_duplicates` names such gates by as much of
  their path as makes them unique (``"CD4+/IFNg+"``).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from immunoprofile.errors import TemplateError
from immunoprofile.template.model import BooleanGate, Gate, Population, RectangleGate, Template
from immunoprofile.template.transforms import FlowJoBiex, FlowJoLog, Transform

if TYPE_CHECKING:
    import flowkit as fk

# FlowKit (with bokeh, ~1 s) is imported where FlowJo transforms or gates are used, not with
# every template: the FlowJo transforms live in transforms.py, which every template imports.


def transform_from_wsp(xform: Any) -> Transform:
    """Convert one of FlowKit's FlowJo-only transforms (``WSP…``) into ours.

    Raises
    ------
    TemplateError
        FlowKit produced a FlowJo transform this module does not know.
    """
    # start-up time: a heavy library, loaded on first use
    from flowkit._models.transforms._wsp_transforms import WSPBiexTransform, WSPLogTransform

    if isinstance(xform, WSPBiexTransform):
        return FlowJoBiex(negative=float(xform.negative), width=float(xform.width),
                          positive=float(xform.positive), max_value=float(xform.max_value))
    if isinstance(xform, WSPLogTransform):
        return FlowJoLog(offset=float(xform.offset), decades=float(xform.decades))
    raise TemplateError(f"FlowJo transform {type(xform).__name__} has no equivalent in "
                        "immunoprofile templates (supported: linear, log, logicle, biex, "
                        "arcsinh)")


# --- gates ----------------------------------------------------------------------------------


def gate_from_wsp(converter: Any, gate: Any) -> Gate:
    """Convert one of FlowKit's FlowJo-only gates (``WSP…``) into ours.

    ``fk.parse_wsp`` already turns FlowJo ellipses into polygons; this path serves a gating
    strategy that still holds a raw ``WSPEllipsoidGate``. The ellipse becomes the same
    128-vertex polygon FlowKit builds (FlowJo also gates ellipses as polygons), scaled by each
    dimension's transform, and converts as a polygon.

    Parameters
    ----------
    converter
        The ``_Converter`` of :mod:`immunoprofile.template.gatingml` (its ``gs`` holds the
        workspace transforms, keyed by channel name as FlowJo keys them).
    gate
        The FlowKit gate.
    """
    cls = type(gate).__name__
    if cls != "WSPEllipsoidGate":
        raise TemplateError(f"FlowJo gate type {cls} is not supported")
    # start-up time: a heavy library, loaded on first use
    import flowkit as fk

    transforms = getattr(converter.gs, "transformations", {})
    xforms, dims = [], []
    for d in gate.dimensions:
        # FlowJo keys transforms by the dimension's channel name, not by a reference.
        ref = d.id if d.id in transforms else None
        xforms.append(transforms[ref] if ref else None)
        dims.append(fk.Dimension(d.id, compensation_ref=d.compensation_ref,
                                 transformation_ref=ref))
    try:
        polygon = gate.convert_to_polygon_gate(xforms)
    except Exception as exc:  # FlowKit raises its own parsing error on degenerate ellipses
        raise TemplateError(f"FlowJo ellipse {gate.gate_name!r} cannot be read ({exc})") from exc
    polygon.dimensions = dims
    return converter.gate(polygon)


# --- workspace-level fix-ups (used by read_flowjo) -----------------------------------------

_QUADRANT = re.compile(r"^Q([1-4]):")


def qualify_duplicates(gs: fk.GatingStrategy) -> dict[str, str]:
    """Give gates whose names repeat under different parents unique names, in place.

    Each such gate is renamed (FlowKit updates boolean references) to a placeholder token, and
    the returned ``{token: qualified name}`` says what to call its population: the gate name
    prefixed by as many ancestors as make it unique, ``"CD4+/IFNg+"``. FlowKit resolves gate
    paths with ``/`` as separator, so the qualified names are put in only after conversion
    (:func:`rename_populations`).
    """
    ids = gs.get_gate_ids()
    counts = Counter(name for name, _ in ids)
    dupes = [(name, path) for name, path in ids if counts[name] > 1]
    if not dupes:
        return {}
    taken = {name for name, _ in ids if counts[name] == 1}
    final: dict[tuple[str, tuple[str, ...]], str] = {}
    for name in sorted({n for n, _ in dupes}):
        paths = [path for n, path in dupes if n == name]
        ancestors = [[p for p in path if p != "root"] for path in paths]
        for k in range(1, max(len(a) for a in ancestors) + 1):
            labels = ["/".join([*a[-k:], name]) for a in ancestors]
            if len(set(labels)) == len(labels) and not set(labels) & taken:
                break
        else:  # only reachable when two gates share a full path, which FlowKit forbids
            raise TemplateError(f"gate {name!r} cannot be told apart by its path")
        taken.update(labels)
        final.update({(name, path): label for path, label in zip(paths, labels)})
    # Deepest first, so the paths of gates still to rename keep their original names.
    tokens = {}
    existing = {name for name, _ in ids}
    for i, (name, path) in enumerate(sorted(final, key=lambda key: -len(key[1]))):
        token = f"__flowjo_gate_{i}__"
        while token in existing:
            token += "_"
        gs.rename_gate(name, token, gate_path=path)
        tokens[token] = final[(name, path)]
    return tokens


def rename_populations(template: Template, names: dict[str, str]) -> Template:
    """Rename populations (and every reference to them) by ``{old: new}``."""
    if not names:
        return template

    def new(name: str | None) -> str | None:
        return None if name is None else names.get(name, name)

    pops = []
    for p in template.populations:
        gate = p.gate
        if isinstance(gate, BooleanGate):
            gate = replace(gate, refs=tuple((new(r), neg) for r, neg in gate.refs))
        pops.append(replace(p, name=new(p.name), parent=new(p.parent), gate=gate,
                            pct_of=tuple(new(r) for r in p.pct_of),
                            group=new(p.group)))
    return template.with_populations(pops)


def group_quadrants(template: Template) -> Template:
    """Group FlowJo quadrant rectangles back into one quadrant group.

    FlowJo saves a quadrant gate as four sibling rectangles named ``Q1: …`` … ``Q4: …``, each
    bounded on one side per axis. Four siblings that read exactly so (same two axes, same cut
    on each axis, one rectangle per sign combination) get ``group = "Q1-Q4 <x> vs <y>"``, as
    our converter gives GatingML quadrant gates. Anything else is left as plain rectangles.
    """
    by_parent: dict[str | None, list[Population]] = {}
    for p in template.populations:
        if _QUADRANT.match(p.name) and isinstance(p.gate, RectangleGate) \
                and p.group is None and len(p.gate.dims) == 2:
            by_parent.setdefault(p.parent, []).append(p)
    groups: dict[str, str] = {}
    for pops in by_parent.values():
        # Group by axes (a parent may hold several quadrant gates on different axes).
        by_dims: dict[tuple, list[Population]] = {}
        for p in pops:
            by_dims.setdefault(p.gate.dims, []).append(p)
        for dims, quad in by_dims.items():
            if _is_quadrant_set(quad):
                label = f"Q1-Q4 {dims[0].marker} vs {dims[1].marker}"
                groups.update({p.name: label for p in quad})
    if not groups:
        return template
    return template.with_populations(
        replace(p, group=groups[p.name]) if p.name in groups else p
        for p in template.populations)


def _is_quadrant_set(quad: list[Population]) -> bool:
    if sorted(_QUADRANT.match(p.name).group(1) for p in quad) != ["1", "2", "3", "4"]:
        return False
    signs, cuts = set(), [set(), set()]
    for p in quad:
        g = p.gate
        if g.complement:
            return False
        sign = []
        for axis, (lo, hi) in enumerate(zip(g.mins, g.maxs)):
            if (lo is None) == (hi is None):  # a quadrant is open on exactly one side
                return False
            cuts[axis].add(hi if lo is None else lo)
            sign.append("-" if lo is None else "+")
        signs.add(tuple(sign))
    return len(signs) == 4 and all(len(c) == 1 for c in cuts)
