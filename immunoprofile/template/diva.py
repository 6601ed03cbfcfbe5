"""BD FACSDiva experiment XML (FACSDiva 6.x "Export experiment as XML") → :class:`Template`.

FlowKit cannot read DIVA experiments; this module follows CytoML's DIVA parser
(``R/diva2GatingSet.R``), the reference implementation, with these DIVA facts:

- An experiment holds specimens, each holding tubes; a tube names its FCS file
  (``data_filename``) and carries its own ``instrument_settings`` and ``gates``. Tubes without
  gates of their own use the global worksheet's gates (``acquisition_worksheets``).
- A gate's ``<region>`` stores its points in DIVA's display space, per axis:
  ``is_*_parameter_scaled`` true means a 0–4096 biexponential display whose width follows the
  axis' ``*_parameter_scale_value`` ``r`` (logicle with T = 262144, M = 4.5 and
  W = (M − log10(T / r)) / 2, BD's formula as CytoML has it), false with ``is_*_parameter_log``
  means log10 of the value, else the linear value. Every axis keeps that display transform here,
  so polygon edges are straight where DIVA drew them.
- The tube's compensation coefficients are the *inverse* of the spillover matrix (each
  parameter's coefficients are its column); the template carries the spillover.
- Quadrants are a hidden ``Composite_Classifier`` (``BINNER_REGION``) and four polygons
  reaching the display edges; they become four rectangles open on the outer sides, since DIVA
  piles off-scale events on the axis edge and counts them in the quadrant.
- Gates carry DIVA's own event count (``num_events``): :func:`diva_counts` returns them.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeET

from immunoprofile.errors import TemplateError
from immunoprofile.template.model import (
    BooleanGate,
    Dimension,
    Gate,
    PolygonGate,
    Population,
    RectangleGate,
    Template,
)
from immunoprofile.template.transforms import FlowJoLog, Identity, Logicle, Transform
from immunoprofile.template.xml_root import root_element
from immunoprofile.template.yaml_io import ordered_populations

#: Name of the tube's spillover matrix in ``Template.comp_matrices``.
MATRIX = "diva"

# DIVA's data range and biexponential display (CytoML's constants: 18-bit data, 4.5 decades
# shown, scaled coordinates on a 0–4096 grid).
_T = 262144.0
_M = 4.5
_GRID = 4096.0
_GRID_TOP = 4095.0  # quadrant corners sit here: the last display bin
_SEP = "\\"  # DIVA joins gate paths with a backslash
_REGION_TYPES = ("Region_Classifier", "SnapTo_Classifier", "SnapTo_Interval_Classifier")
_BOOLEAN_TYPES = {"AND_Classifier": "and", "OR_Classifier": "or", "NOT_Classifier": "not"}


def is_diva(path: str | Path) -> bool:
    """Whether a file is a FACSDiva experiment XML (root element ``<bdfacs>``).

    Only the root element is read, so the check is cheap on large files.

    Parameters
    ----------
    path
        Any file.

    Returns
    -------
    bool
        True when the root element is ``bdfacs``; False otherwise (also for unreadable,
        non-XML or entity-declaring files).
    """
    root = root_element(path)
    return root is not None and root.tag == "bdfacs"


def _parse(path: Path) -> tuple[Any, str]:
    """The ``<experiment>`` element and the DIVA version, parsed with entities and network
    access refused."""
    if not path.is_file():
        raise TemplateError(f"{path}: no such file")
    try:
        root = SafeET.parse(str(path), forbid_dtd=False, forbid_entities=True,
                            forbid_external=True).getroot()
    except DefusedXmlException as exc:
        raise TemplateError(f"{path}: refused: the XML declares entities or external "
                            f"references ({exc}); FACSDiva exports need neither") from exc
    except (SafeET.ParseError, OSError) as exc:
        raise TemplateError(f"{path}: not readable XML ({exc})") from exc
    if root.tag != "bdfacs":
        raise TemplateError(
            f"{path}: not a BD FACSDiva experiment XML (root element <{root.tag}>, expected "
            "<bdfacs>); export the experiment from FACSDiva with File > Export > Experiment "
            "as XML, or import FlowJo workspaces and GatingML files as such")
    experiment = root.find("experiment")
    if experiment is None:
        raise TemplateError(f"{path}: the FACSDiva XML holds no <experiment>")
    return experiment, root.get("version", "")


# --- tubes ------------------------------------------------------------------------------------


def _has_gates(gates: Any) -> bool:
    return gates is not None and any(g.find("parent") is not None for g in gates.findall("gate"))


def _global_gates(experiment: Any) -> Any:
    # CytoML takes the first worksheet template of the global worksheets.
    sheets = experiment.findall("acquisition_worksheets/worksheet_template")
    return next((s.find("gates") for s in sheets if _has_gates(s.find("gates"))), None)


def _tube_label(specimen: str, tube: Any) -> str:
    return f"{specimen}/{tube.get('name')} ({tube.findtext('data_filename') or 'no data file'})"


def _find_tube(path: Path, experiment: Any, wanted: str | None) -> tuple[str, Any, Any]:
    """``(specimen name, tube element, gates element)`` of the requested tube."""
    tubes = [(sp.get("name", ""), t) for sp in experiment.findall("specimen")
             for t in sp.findall("tube")]
    if not tubes:
        raise TemplateError(f"{path}: the experiment has no tubes")
    shared = _global_gates(experiment)
    if wanted is None:
        own = [(sp, t) for sp, t in tubes if _has_gates(t.find("gates"))]
        if not own and shared is None:
            raise TemplateError(f"{path}: no tube and no global worksheet has gates")
        sp, t = own[0] if own else tubes[0]
    else:
        key = str(wanted)
        fname = Path(key.replace("\\", "/")).name
        # A tube is found by name, "specimen/tube" (tube names repeat across specimens) or
        # the FCS file it recorded (a bare file name or a path to it).
        hits = [(sp, t) for sp, t in tubes
                if key in (t.get("name"), f"{sp}/{t.get('name')}")
                or fname == (t.findtext("data_filename") or "\0")]
        if len(hits) != 1:
            listing = "; ".join(_tube_label(sp, t) for sp, t in tubes)
            why = "is ambiguous, give specimen/tube" if hits else "matches no tube"
            raise TemplateError(f"{path}: tube {key!r} {why} (tubes, as specimen/tube (FCS "
                                f"file): {listing})")
        sp, t = hits[0]
    gates = t.find("gates") if _has_gates(t.find("gates")) else shared
    if gates is None:
        raise TemplateError(f"{path}: tube {_tube_label(sp, t)} has no gates and the "
                            "experiment has no global worksheet gates")
    return sp, t, gates


# --- instrument settings: compensation and per-parameter scales --------------------------------


def _settings(experiment: Any, tube: Any) -> list[Any]:
    # Tube settings win; the experiment's (cytometer) settings fill in what a tube lacks.
    return [s for s in (tube.find("instrument_settings"),
                        experiment.find("instrument_settings")) if s is not None]


def _flag(settings: list[Any], tag: str, default: bool) -> bool:
    for s in settings:
        text = s.findtext(tag)
        if text is not None:
            return text.strip().lower() == "true"
    return default


def _spillover(path: Path, label: str, settings: list[Any]) -> pd.DataFrame | None:
    """The spillover matrix of the tube, or None when DIVA did not compensate."""
    if not settings or not _flag(settings, "compensation_enabled", False):
        return None
    names, columns = [], []
    for p in settings[0].findall("parameter"):
        coef = [c.text for c in p.findall("compensation/compensation_coefficient")]
        if coef:
            names.append(p.get("name", ""))
            columns.append(coef)
    if not names:
        return None
    try:
        comp = np.array(columns, dtype=float).T  # column j: parameter j's coefficients
    except ValueError as exc:
        raise TemplateError(f"{path}: tube {label}: compensation coefficients are not "
                            f"numbers or not one per compensated parameter ({exc})") from exc
    if comp.shape != (len(names), len(names)) or not np.isfinite(comp).all() \
            or np.linalg.matrix_rank(comp) < len(names):
        raise TemplateError(f"{path}: tube {label}: the compensation matrix is not square, "
                            "finite and invertible; fix it in FACSDiva and export again")
    # DIVA stores the compensation (inverse spillover) matrix; templates carry spillover.
    return pd.DataFrame(np.linalg.inv(comp), index=names, columns=names)


def _tube_scales(settings: list[Any]) -> dict[str, float]:
    """Per parameter, the biexponential scale value the tube displayed it with."""
    auto = _flag(settings, "use_auto_biexp_scale", True)
    tag = "comp_biexp_scale" if auto else "manual_biexp_scale"
    out: dict[str, float] = {}
    for p in (p for s in reversed(settings) for p in s.findall("parameter")):
        with contextlib.suppress(TypeError, ValueError):  # a missing or odd value: no scale
            out[p.get("name", "")] = float(p.findtext(tag))
    return out


# --- axes -------------------------------------------------------------------------------------


def diva_logicle(scale_value: float) -> Logicle:
    """The logicle transform of a DIVA biexponential axis with scale value ``r``.

    Parameters
    ----------
    scale_value
        The axis' ``*_parameter_scale_value`` (or the tube's biexp scale); its sign is ignored.

    Returns
    -------
    Logicle
        T = 262144, M = 4.5, A = 0 and W = (M − log10(T / r)) / 2 clipped to [0, M/2]
        (W = 0 for r = 0), output on the 0–1 scale (DIVA's scaled coordinate / 4096).
    """
    r = abs(float(scale_value))
    w = 0.0 if r == 0 else (_M - math.log10(_T / r)) / 2
    return Logicle(T=_T, W=min(max(w, 0.0), _M / 2), M=_M, A=0.0)


@dataclass(frozen=True)
class _Axis:
    """One gate axis: the display transform and how DIVA's stored coordinates map into it."""

    dim: Dimension
    scale: float  # coordinate = stored * scale + shift
    shift: float
    low: float  # stored values at or beyond these lie on the display edge
    high: float

    def coord(self, v: float) -> float:
        return v * self.scale + self.shift

    def bound(self, v: float, upper: bool) -> float | None:
        """A rectangle bound; open at the display edge, where DIVA piles off-scale events."""
        if (upper and v >= self.high) or (not upper and v <= self.low):
            return None
        return self.coord(v)


def _axis(gate: Any, which: str, channel: str, ctx: _Context) -> _Axis:
    scaled = (gate.findtext(f"is_{which}_parameter_scaled") or "").strip() == "true"
    log = (gate.findtext(f"is_{which}_parameter_log") or "").strip() == "true"
    comp = MATRIX if ctx.matrix is not None and channel in ctx.matrix.columns else "none"
    transform: Transform = Identity()
    scale, shift, low, high = 1.0, 0.0, 0.0, _T - 1  # linear: the value itself
    if scaled:
        scale, high = _T / _GRID, _GRID_TOP
    if scaled and log:
        text = gate.findtext(f"{which}_parameter_scale_value")
        try:
            r = float(text) if text is not None else ctx.scales[channel]
        except (KeyError, ValueError) as exc:
            raise TemplateError(f"{ctx.where}: gate {gate.get('fullname')!r}: no biexponential "
                                f"scale value for {channel}") from exc
        transform, scale = diva_logicle(r), 1 / _GRID
    elif log:
        # A plain log display of `decades` decades ending at T; below it DIVA clamps events
        # to the axis, as FlowJoLog does.
        offset = _T / 10 ** ctx.decades
        transform = FlowJoLog(offset=offset, decades=float(ctx.decades))
        scale, shift = 1 / ctx.decades, -math.log10(offset) / ctx.decades
        low, high = math.log10(offset), math.log10(_T - 1)
    return _Axis(Dimension(marker=channel, transform=transform, compensation=comp),
                 scale, shift, low, high)


@dataclass
class _Context:
    where: str
    matrix: pd.DataFrame | None
    scales: dict[str, float]
    decades: int


# --- gates ------------------------------------------------------------------------------------


def _region_gate(gate: Any, ctx: _Context, quadrant: bool) -> Gate:
    name = gate.get("fullname")
    region = gate.find("region")
    if region is None:
        raise TemplateError(f"{ctx.where}: gate {name!r} has no <region>")
    kind = region.get("type", "")
    xparm, yparm = region.get("xparm"), region.get("yparm")
    try:
        pts = [(float(p.get("x", "nan")), float(p.get("y", "nan")))
               for p in region.findall("points/point")]
    except ValueError as exc:
        raise TemplateError(f"{ctx.where}: gate {name!r}: a point is not a number") from exc
    if not xparm or not pts or any(math.isnan(p[0]) for p in pts):
        raise TemplateError(f"{ctx.where}: gate {name!r}: region without parameter or points")
    x = _axis(gate, "x", xparm, ctx)
    if kind == "INTERVAL_REGION":
        # The y of an interval is only where DIVA drew its label.
        xs = [p[0] for p in pts]
        return RectangleGate(dims=(x.dim,), mins=(x.bound(min(xs), False),),
                             maxs=(x.bound(max(xs), True),))
    if not yparm:
        raise TemplateError(f"{ctx.where}: gate {name!r}: a {kind} needs a y parameter")
    if any(math.isnan(p[1]) for p in pts):
        raise TemplateError(f"{ctx.where}: gate {name!r}: a point has no y")
    y = _axis(gate, "y", yparm, ctx)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    if kind == "RECTANGLE_REGION" or (quadrant and kind == "POLYGON_REGION"):
        if quadrant and (len(set(xs)) != 2 or len(set(ys)) != 2):
            raise TemplateError(f"{ctx.where}: quadrant {name!r} is not axis-aligned")
        return RectangleGate(dims=(x.dim, y.dim),
                             mins=(x.bound(min(xs), False), y.bound(min(ys), False)),
                             maxs=(x.bound(max(xs), True), y.bound(max(ys), True)))
    if kind == "POLYGON_REGION":
        if len(pts) < 3:
            raise TemplateError(f"{ctx.where}: polygon {name!r} has fewer than 3 points")
        return PolygonGate(dims=(x.dim, y.dim),
                           vertices=tuple((x.coord(a), y.coord(b)) for a, b in pts))
    raise TemplateError(f"{ctx.where}: gate {name!r}: region type {kind!r} is not supported "
                        "(supported: rectangle, polygon, interval, snap-to, quadrant); remove or "
                        "redraw the gate in FACSDiva")


def _names(gates: list[Any], composites: set[str]) -> dict[str, str]:
    """Population name per gate path: the DIVA name, qualified by its parents if repeated."""
    paths = [g.get("fullname", "") for g in gates
             if g.find("parent") is not None and g.get("fullname") not in composites]
    short = {p: p.split(_SEP)[-1] for p in paths}
    counts: dict[str, int] = {}
    for s in short.values():
        counts[s] = counts.get(s, 0) + 1
    # DIVA paths start at "All Events"; a repeated name keeps its path below it.
    return {p: (s if counts[s] == 1 else "/".join(p.split(_SEP)[1:])) for p, s in short.items()}


def _populations(gates: list[Any], ctx: _Context) -> list[Population]:
    composites = {g.get("fullname", ""): g for g in gates
                  if g.get("type") == "Composite_Classifier"}
    names = _names(gates, set(composites))
    root = next((g.get("fullname") for g in gates if g.find("parent") is None), "All Events")

    def parent_of(path: str) -> str | None:
        while path in composites:  # a quadrant's parent is its binner's parent
            path = composites[path].findtext("parent") or root
        if path == root:
            return None
        if path not in names:
            raise TemplateError(f"{ctx.where}: gate parent {path!r} is not a gate of the tube")
        return names[path]

    out = []
    for g in gates:
        path, kind = g.get("fullname", ""), g.get("type", "")
        if g.find("parent") is None or path in composites:
            continue
        parent = parent_of(g.findtext("parent", ""))
        inputs = [i.text or "" for i in g.findall("input")]
        group = None
        if kind in _REGION_TYPES:
            binner = next((i for i in inputs if i in composites), None)
            gate: Gate = _region_gate(g, ctx, quadrant=binner is not None)
            if binner is not None:  # named like FlowJo's quadrant groups: "Q1-Q4 X vs Y"
                bins = [b.text.split(_SEP)[-1] for b in composites[binner].findall("bin")
                        if b.text] or [names[path]]
                region = g.find("region")
                group = f"{bins[0]}-{bins[-1]} {region.get('xparm')} vs {region.get('yparm')}"
        elif kind in _BOOLEAN_TYPES or kind == "RestOf_Classifier":
            refs = [parent_of(i) for i in inputs]
            if None in refs or not refs:
                raise TemplateError(f"{ctx.where}: boolean gate {path!r} refers to no gate")
            if kind == "RestOf_Classifier":
                # "Rest of X": the parent's events in none of the listed gates.
                gate = BooleanGate(op="not", refs=((refs[0], False),)) if len(refs) == 1 \
                    else BooleanGate(op="and", refs=tuple((r, True) for r in refs))
            else:
                op = _BOOLEAN_TYPES[kind]
                if (op == "not") != (len(refs) == 1):
                    raise TemplateError(f"{ctx.where}: {op} gate {path!r} has {len(refs)} "
                                        "inputs")
                gate = BooleanGate(op=op, refs=tuple((r, False) for r in refs))
        else:
            raise TemplateError(f"{ctx.where}: gate {path!r} has type {kind!r}, which is not "
                                "supported; remove it in FACSDiva and export again")
        count = g.findtext("num_events")
        desc = f"FACSDiva gate {path}" + (f" ({count} events in DIVA)" if count else "")
        out.append(Population(name=names[path], parent=parent, gate=gate, group=group,
                              description=desc))
    return out


def _deps(p: Population) -> list[str]:
    refs = [r for r, _ in p.gate.refs] if isinstance(p.gate, BooleanGate) else []
    return [p.parent, *refs] if p.parent else refs


# --- public -----------------------------------------------------------------------------------


def read_diva(path: str | Path, *, tube: str | None = None, name: str | None = None) -> Template:
    """Read the gates of one tube of a FACSDiva experiment XML into a template.

    Parameters
    ----------
    path
        The experiment XML (FACSDiva 6.x, File > Export > Experiment as XML).
    tube
        The tube: its name, ``"specimen/tube"`` (tube names repeat across specimens), or the
        name (or a path) of the FCS file it recorded. Default: the first tube with gates of
        its own, else the first tube, gated with the global worksheet's gates.
    name
        Template name (default: the XML file name without extension).

    Returns
    -------
    Template
        One population per DIVA gate (named as in DIVA, "All Events" being the root), on
        the file's channel names; each axis carries DIVA's display transform (linear,
        :class:`~immunoprofile.template.transforms.FlowJoLog` for a plain log display,
        :func:`diva_logicle` for a biexponential one) and the tube's spillover matrix
        (``comp_matrices["diva"]``) on the channels it covers, or no compensation when
        DIVA's compensation was off. Quadrant gates become four rectangles sharing a
        ``group``; each population's ``description`` quotes DIVA's event count.

    Raises
    ------
    TemplateError
        Not a FACSDiva XML, unsafe XML, unknown or ambiguous tube, a gate type this importer
        does not convert, or a malformed gate or compensation matrix.
    """
    path = Path(path)
    experiment, version = _parse(path)
    specimen, tube_el, gates_el = _find_tube(path, experiment, tube)
    label = _tube_label(specimen, tube_el)
    settings = _settings(experiment, tube_el)
    try:
        decades = int(float(experiment.findtext("log_decades") or 5))
    except ValueError as exc:
        raise TemplateError(f"{path}: log_decades is not a number ({exc})") from exc
    if decades <= 0:
        raise TemplateError(f"{path}: log_decades must be positive, got {decades}")
    matrix = _spillover(path, label, settings)
    ctx = _Context(where=f"{path}: tube {label}", matrix=matrix,
                   scales=_tube_scales(settings), decades=decades)
    populations = _populations(gates_el.findall("gate"), ctx)
    if not populations:
        raise TemplateError(f"{ctx.where}: no gates below All Events")
    done: set[str] = set()
    pending = populations
    while pending:  # ordered_populations would loop forever on a missing or circular reference
        ready = {p.name for p in pending if all(d in done for d in _deps(p))}
        if not ready:
            raise TemplateError(f"{ctx.where}: gates {[p.name for p in pending]} refer to "
                                "missing gates or to each other")
        done |= ready
        pending = [p for p in pending if p.name not in done]
    description = (f"BD FACSDiva{(' ' + version) if version else ''} experiment "
                   f"{experiment.get('name', '')!r}, tube {label}")
    template = Template(name=name or path.stem, populations=populations, transforms={},
                        compensation="none", description=description, source=str(path),
                        comp_matrices={MATRIX: matrix} if matrix is not None else {})
    return ordered_populations(template)


def diva_counts(path: str | Path, *, tube: str | None = None) -> dict[str, int]:
    """FACSDiva's own event count per population of a tube (``num_events`` of its gates).

    Parameters
    ----------
    path
        The experiment XML.
    tube
        As for :func:`read_diva`.

    Returns
    -------
    dict
        ``{population name: count}`` with the names :func:`read_diva` gives, plus
        ``"All Events"``; empty when the tube uses global worksheet gates (DIVA records no
        counts for those).
    """
    path = Path(path)
    experiment, _ = _parse(path)
    _, tube_el, gates_el = _find_tube(path, experiment, tube)
    if gates_el is not tube_el.find("gates"):
        return {}
    gates = gates_el.findall("gate")
    composites = {g.get("fullname", "") for g in gates if g.get("type") == "Composite_Classifier"}
    names = _names(gates, composites)
    out = {}
    for g in gates:
        key, count = g.get("fullname", ""), (g.findtext("num_events") or "").strip()
        if count.isdigit() and key not in composites:
            out[key if g.find("parent") is None else names[key]] = int(count)
    return out
