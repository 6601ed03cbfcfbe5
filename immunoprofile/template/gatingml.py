"""GatingML 2.0 and FlowJo workspace interop, through FlowKit.

FlowKit parses and writes the XML; this module converts between FlowKit's gating strategy and
our :class:`~immunoprofile.template.Template`. Imported gates keep the file's channel names as
dimensions (the panel resolves a $PnN directly), each with its own transform and compensation
reference. User XML is screened first with defusedxml: a document declaring entities or
reaching outside (external DTDs or entities) is refused, never expanded.
"""

from __future__ import annotations

import io
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import flowkit as fk
import numpy as np
import pandas as pd
from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeET

from immunoprofile._atomic import atomic_write
from immunoprofile.errors import TemplateError
from immunoprofile.io.fcs import FCSSample, read_fcs
from immunoprofile.panel import resolve_markers
from immunoprofile.template.model import (
    BooleanGate,
    Dimension,
    EllipseGate,
    Gate,
    PolygonGate,
    Population,
    Ratio,
    RectangleGate,
    Template,
)
from immunoprofile.template.transforms import (
    FlowJoBiex,
    FlowJoLog,
    GMLAsinh,
    GMLLinear,
    GMLLog,
    Hyperlog,
    Identity,
    Logicle,
    Transform,
    to_gatingml,
)
from immunoprofile.template.yaml_io import load_template, ordered_populations

# --- safety ---------------------------------------------------------------------------------


def _screen_xml(path: Path) -> None:
    """Refuse XML with entity declarations or external references before FlowKit sees it."""
    try:
        SafeET.parse(str(path), forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise TemplateError(
            f"{path}: refused: the XML declares entities or external references ({exc}); "
            "GatingML and FlowJo files need neither"
        ) from exc
    except (SafeET.ParseError, OSError) as exc:
        raise TemplateError(f"{path}: not readable XML ({exc})") from exc


# --- FlowKit → template ---------------------------------------------------------------------


def _transform_from_fk(xform: Any) -> Transform:
    cls = type(xform).__name__
    if cls.startswith("WSP"):
        # start-up time: interop needs FlowKit, loaded when first used
        from immunoprofile.template.flowjo import transform_from_wsp

        return transform_from_wsp(xform)
    if cls == "LogicleTransform":
        return Logicle(T=xform.param_t, W=xform.param_w, M=xform.param_m, A=xform.param_a)
    if cls == "HyperlogTransform":
        return Hyperlog(T=xform.param_t, W=xform.param_w, M=xform.param_m, A=xform.param_a)
    if cls == "AsinhTransform":
        return GMLAsinh(T=xform.param_t, M=xform.param_m, A=xform.param_a)
    if cls == "LinearTransform":
        return GMLLinear(T=xform.param_t, A=xform.param_a)
    if cls == "LogTransform":
        return GMLLog(T=xform.param_t, M=xform.param_m)
    raise TemplateError(f"transform {cls} has no equivalent in immunoprofile templates")


def _comp_from_fk(ref: str | None) -> str:
    if ref in (None, "uncompensated"):
        return "none"
    return "file" if ref == "FCS" else str(ref)


class _Converter:
    """Turns one FlowKit GatingStrategy into a Template."""

    def __init__(self, gs: fk.GatingStrategy, matrices: dict[str, pd.DataFrame]):
        self.gs = gs
        self.matrices = matrices

    def xform(self, ref: str | None) -> Transform:
        if ref is None:
            return Identity()
        return _transform_from_fk(self.gs.get_transform(ref))

    def dim(self, d: Any) -> Dimension:
        comp = _comp_from_fk(d.compensation_ref)
        if isinstance(d, fk.RatioDimension):
            ratio = self.gs.get_transform(d.ratio_ref)
            x, y = ratio.dimensions
            return Dimension(marker=d.ratio_ref, transform=self.xform(d.transformation_ref),
                             compensation="none",
                             ratio=Ratio(x, y, ratio.param_a, ratio.param_b, ratio.param_c))
        name = d.dimension_ref if isinstance(d, fk.QuadrantDivider) else d.id
        matrix = self.matrices.get(comp)
        if matrix is not None and name in list(matrix.index) and name not in matrix.columns:
            # GatingML lets a dimension name the fluorochrome of a named matrix; the data
            # live in the matching detector channel.
            name = matrix.columns[list(matrix.index).index(name)]
        return Dimension(marker=name, transform=self.xform(d.transformation_ref),
                         compensation=comp)

    def populations(self, gate: Any, parent: str | None) -> list[Population]:
        cls = type(gate).__name__
        name = gate.gate_name
        if cls == "QuadrantGate":
            dims = {div.id: self.dim(div) for div in gate.dimensions}
            out = []
            for q in gate.quadrants.values():
                ds = tuple(dims[ref] for ref in q.divider_refs)
                rng = [q.get_divider_range(ref) for ref in q.divider_refs]
                out.append(Population(
                    name=q.id, parent=parent, group=name,
                    gate=RectangleGate(dims=ds, mins=tuple(_f(r[0]) for r in rng),
                                       maxs=tuple(_f(r[1]) for r in rng))))
            return out
        return [Population(name=name, parent=parent, gate=self.gate(gate))]

    def gate(self, gate: Any) -> Gate:
        cls = type(gate).__name__
        if cls.startswith("WSP"):
            # start-up time: interop needs FlowKit, loaded when first used
            from immunoprofile.template.flowjo import gate_from_wsp

            return gate_from_wsp(self, gate)
        dims = tuple(self.dim(d) for d in gate.dimensions) if cls != "BooleanGate" else ()
        if cls == "RectangleGate":
            return RectangleGate(dims=dims, mins=tuple(_f(d.min) for d in gate.dimensions),
                                 maxs=tuple(_f(d.max) for d in gate.dimensions),
                                 complement=bool(gate.use_complement))
        if cls == "PolygonGate":
            return PolygonGate(dims=dims, complement=bool(gate.use_complement),
                               vertices=tuple((float(x), float(y)) for x, y in gate.vertices))
        if cls == "EllipsoidGate":
            return EllipseGate(dims=dims, mean=tuple(float(c) for c in gate.coordinates),
                               covariance=tuple(tuple(float(v) for v in row)
                                                for row in gate.covariance_matrix),
                               distance_square=float(gate.distance_square))
        if cls == "BooleanGate":
            return BooleanGate(op=str(gate.type).lower(), refs=tuple(
                (r["ref"], bool(r.get("complement", False))) for r in gate.gate_refs))
        raise TemplateError(f"gate type {cls} is not supported")


def _f(v: Any) -> float | None:
    return None if v is None else float(v)


def _matrices_from_fk(gs: fk.GatingStrategy) -> dict[str, pd.DataFrame]:
    out = {}
    for mid, m in getattr(gs, "comp_matrices", {}).items():
        out[mid] = pd.DataFrame(np.asarray(m.matrix, dtype=float),
                                index=list(m.fluorochromes), columns=list(m.detectors))
    return out


def template_from_flowkit(gs: fk.GatingStrategy, *, name: str, source: str = "",
                          version: str = "1") -> Template:
    """Convert a FlowKit ``GatingStrategy`` into a :class:`Template`.

    Gate names must be unique (they become population names); a FlowKit strategy reusing a
    name under two parents is refused with the paths named.

    Parameters
    ----------
    gs
        The parsed GatingML (or FlowJo) gating strategy.
    name
        Template name.
    source
        Where the strategy came from, kept as the template's ``source`` and used in messages.
    version
        Template version.

    Returns
    -------
    Template
        Populations in hierarchy order, the strategy's spillover matrices as
        ``comp_matrices``, ``compensation="none"`` and no template-level transforms.

    Raises
    ------
    TemplateError
        A gate name is used under several parents, or a gate cannot be converted.
    """
    matrices = _matrices_from_fk(gs)
    conv = _Converter(gs, matrices)
    ids = gs.get_gate_ids()
    names = [g for g, _ in ids]
    dupes = sorted({g for g in names if names.count(g) > 1})
    if dupes:
        raise TemplateError(f"{source}: gate names used under several parents: {dupes}; "
                            "population names must be unique")
    populations: list[Population] = []
    for gate_name, path in ids:
        try:
            gate = gs.get_gate(gate_name, path)
        except fk.exceptions.QuadrantReferenceError:
            continue  # a quadrant: created with its QuadrantGate
        parent = path[-1] if len(path) > 1 else None
        populations.extend(conv.populations(gate, parent))
    template = Template(name=name, version=version, populations=populations, transforms={},
                        compensation="none", source=source, comp_matrices=matrices)
    return ordered_populations(template)


def read_gatingml(path: str | Path, *, name: str | None = None) -> Template:
    """Read a GatingML 2.0 file into a template (gates keep the file's channel names).

    Parameters
    ----------
    path
        The GatingML 2.0 XML file.
    name
        Template name (default: the file name without extension).
    """
    path = Path(path)
    _screen_xml(path)
    try:
        gs = fk.parse_gating_xml(str(path))
    except Exception as exc:  # FlowKit raises bare ValueError/KeyError on malformed GatingML
        raise TemplateError(f"{path}: not a usable GatingML 2.0 file ({exc})") from exc
    return template_from_flowkit(gs, name=name or path.stem, source=str(path))


def read_flowjo(path: str | Path, *, group: str = "All Samples", sample: str | None = None,
                name: str | None = None) -> Template:
    """Read the gates of a FlowJo 10 workspace (.wsp) sample group into a template.

    Parameters
    ----------
    path
        The ``.wsp`` file.
    group
        The sample group whose gates to take (FlowJo's default group is "All Samples").
    sample
        Take this sample's gates (with its custom gates) instead of the group's first sample:
        its FlowJo name, or its FCS file name or path (matched to the workspace's DataSet URI).
    name
        Template name (default: the workspace file name without extension).

    Gate names FlowJo repeats under different parents become ``"Parent/Child"`` (with as many
    ancestors as make them unique); FlowJo quadrant gates (four rectangles ``Q1: …`` …
    ``Q4: …``) share one quadrant ``group``. FlowJo's biex and log transforms become
    :class:`~immunoprofile.template.flowjo.FlowJoBiex` and ``FlowJoLog``.
    """
    path = Path(path)
    _screen_xml(path)
    try:
        wsp = fk.parse_wsp(str(path))
    except Exception as exc:  # FlowKit raises assorted errors on malformed workspaces
        raise TemplateError(f"{path}: not a usable FlowJo workspace ({exc})") from exc
    # stdlib, needed only here
    from urllib.parse import unquote

    # start-up time: interop needs FlowKit, loaded when first used
    from immunoprofile.template import flowjo

    groups = wsp.get("groups", {})
    if group not in groups:
        raise TemplateError(f"{path}: no sample group {group!r} (groups: {', '.join(groups)})")
    samples = groups[group]["samples"]
    if sample is None:
        if not samples:
            raise TemplateError(f"{path}: sample group {group!r} has no samples")
        sample = samples[0]
    if sample not in wsp["samples"]:
        # FlowJo names a sample after its file unless renamed; its DataSet URI keeps the file,
        # so a file name or path also finds it.
        wanted = Path(str(sample)).name
        by_file = [s for s, d in wsp["samples"].items()
                   if unquote(str(d.get("sample_uri") or "")).replace("\\", "/")
                   .rsplit("/", 1)[-1] == wanted]
        if len(by_file) != 1:
            raise TemplateError(f"{path}: no sample {sample!r} "
                                f"(samples: {', '.join(wsp['samples'])})")
        sample = by_file[0]
    gs = wsp["samples"][sample]["gating_strategy"]
    # FlowJo repeats gate names under different parents; population names are ids.
    qualified = flowjo.qualify_duplicates(gs)
    template = template_from_flowkit(gs, name=name or path.stem, source=str(path))
    template = flowjo.rename_populations(template, qualified)
    return flowjo.group_quadrants(template)


# --- template → GatingML ----------------------------------------------------------------------


def gatingml_id(name: str) -> str:
    """The GatingML id (an XML NCName) a population name is exported under.

    ``"CD4+ T cells"`` → ``"CD4pos_T_cells"``: GatingML ids may not hold spaces or ``+``.

    Parameters
    ----------
    name
        Population name.

    Returns
    -------
    str
        ``+`` as ``pos``, other characters but letters, digits, ``_``, ``.`` and ``-`` as
        ``_``, prefixed with ``_`` unless it starts with a letter or ``_``.
    """
    text = re.sub(r"[^A-Za-z0-9_.\-]", "_", name.replace("+", "pos"))
    return text if re.match(r"[A-Za-z_]", text) else f"_{text}"


def _path_of(template: Template, name: str, ids: dict[str, str] | None = None) -> tuple[str, ...]:
    ids = ids or {}
    return ("root", *(ids.get(a, a) for a in reversed(template.ancestors(name))))


class _Exporter:
    def __init__(self, template: Template, sample: FCSSample):
        self.t = template
        self.sample = sample
        markers = [m for p in template.populations for d in p.gate.dims for m in d.markers()]
        self.channel = resolve_markers(sample, markers, what=f"template {template.name}")
        self.gs = fk.GatingStrategy()
        self.ids = _unique_ids(template)
        self.xform_ids: dict[Transform, str] = {}
        self.tops = sample.range_tops()  # once per export, not per gate dimension
        self.matrices: dict[str, pd.DataFrame] = {}  # named matrices used, on $PnN columns
        if template.compensation not in ("file", "none", *template.comp_matrices):
            raise TemplateError("write_gatingml exports templates that use the file's own "
                                "spillover ('file'), a matrix the template carries, or none")

    def matrix(self, comp: str) -> tuple[str, pd.DataFrame | None]:
        """FlowKit's compensation reference for a template's, and the matrix behind it."""
        if comp in ("none", "uncompensated"):
            return "uncompensated", None
        if comp in ("file", "FCS"):
            return "FCS", self.sample.spillover
        if comp not in self.t.comp_matrices:
            raise TemplateError(f"template {self.t.name}: compensation {comp!r} is neither "
                                "'file', 'none' nor one of its matrices")
        if comp not in self.matrices:
            m = self.t.comp_matrices[comp].copy()
            names = resolve_markers(self.sample, [str(c) for c in m.columns],
                                    what=f"compensation matrix {comp!r}")
            m.columns = [names[str(c)] for c in m.columns]
            m.index = list(m.columns)
            self.matrices[comp] = m
            self.gs.add_comp_matrix(comp, fk.Matrix(m.to_numpy(float),
                                                    detectors=list(m.columns)))
        return comp, self.matrices[comp]

    def dim_for(self, d: Dimension, lo: float | None, hi: float | None) -> tuple[Any, float]:
        if d.ratio is not None:
            raise TemplateError(f"ratio dimension {d.marker} cannot be exported yet")
        channel = self.channel[d.marker]
        top = self.tops.get(channel)
        gml, factor = to_gatingml(self.t.transform_for(d).for_channel(top))
        xid = None
        if gml is not None:
            if gml not in self.xform_ids:
                self.xform_ids[gml] = f"xform{len(self.xform_ids) + 1}"
                self.gs.add_transform(self.xform_ids[gml], _fk_transform(gml))
            xid = self.xform_ids[gml]
        ref, matrix = self.matrix(d.compensation or self.t.compensation)
        comp_ref = ref if matrix is not None and channel in list(matrix.columns) \
            else "uncompensated"
        dim = fk.Dimension(channel, compensation_ref=comp_ref, transformation_ref=xid,
                           range_min=None if lo is None else lo * factor,
                           range_max=None if hi is None else hi * factor)
        return dim, factor

    def gate(self, pop: Population) -> Any:
        g = pop.gate
        if isinstance(g, BooleanGate):
            refs = [{"ref": self.ids[r], "path": _path_of(self.t, r, self.ids),
                     "complement": neg} for r, neg in g.refs]
            return fk.gates.BooleanGate(self.ids[pop.name], g.op, refs)
        if isinstance(g, RectangleGate):
            dims = [self.dim_for(d, lo, hi)[0] for d, lo, hi in zip(g.dims, g.mins, g.maxs)]
            return fk.gates.RectangleGate(self.ids[pop.name], dims, use_complement=g.complement)
        pairs = [self.dim_for(d, None, None) for d in g.dims]
        dims = [p[0] for p in pairs]
        f = np.array([p[1] for p in pairs])
        if isinstance(g, PolygonGate):
            verts = [[float(x * f[0]), float(y * f[1])] for x, y in g.vertices]
            return fk.gates.PolygonGate(self.ids[pop.name], dims, verts,
                                        use_complement=g.complement)
        if isinstance(g, EllipseGate):
            cov = np.asarray(g.covariance) * np.outer(f, f)
            return fk.gates.EllipsoidGate(self.ids[pop.name], dims, list(np.asarray(g.mean) * f),
                                          cov.tolist(), g.distance_square)
        raise TemplateError(f"cannot export gate {g!r}")


def _unique_ids(template: Template) -> dict[str, str]:
    ids: dict[str, str] = {}
    for pop in template.populations:
        base = gid = gatingml_id(pop.name)
        k = 2
        while gid in ids.values():
            gid, k = f"{base}_{k}", k + 1
        ids[pop.name] = gid
    return ids


def _fk_transform(t: Transform) -> Any:
    tr = fk.transforms
    if isinstance(t, Logicle):
        return tr.LogicleTransform(param_t=t.T, param_w=t.W, param_m=t.M, param_a=t.A)
    if isinstance(t, Hyperlog):
        return tr.HyperlogTransform(param_t=t.T, param_w=t.W, param_m=t.M, param_a=t.A)
    if isinstance(t, GMLAsinh):
        return tr.AsinhTransform(param_t=t.T, param_m=t.M, param_a=t.A)
    if isinstance(t, GMLLinear):
        return tr.LinearTransform(param_t=t.T, param_a=t.A)
    if isinstance(t, GMLLog):
        return tr.LogTransform(param_t=t.T, param_m=t.M)
    if isinstance(t, FlowJoBiex | FlowJoLog):
        # FlowJo's own transforms (imported workspaces): FlowKit's classes for them, which a
        # FlowJo workspace export writes back as FlowJo wrote them
        from flowkit._models.transforms._wsp_transforms import (  # start-up time: on use
            WSPBiexTransform,
            WSPLogTransform,
        )

        if isinstance(t, FlowJoLog):
            return WSPLogTransform(offset=t.offset, decades=t.decades)
        return WSPBiexTransform(negative=t.negative, width=t.width, positive=t.positive,
                                max_value=t.max_value)
    raise TemplateError(f"transform {t!r} has no GatingML form")


def template_to_flowkit(template: Template | str | Path,
                        sample: FCSSample | str | Path) -> fk.GatingStrategy:
    """Bind a template to one file's panel as a FlowKit ``GatingStrategy``.

    Gate ids are the populations' :func:`gatingml_id`.

    Parameters
    ----------
    template
        A :class:`Template`, a YAML path or a shipped template name.
    sample
        An :class:`~immunoprofile.io.fcs.FCSSample` or FCS path whose channels the markers
        are resolved to.

    Returns
    -------
    flowkit.GatingStrategy
        The strategy; a complemented rectangle or polygon becomes an ``_inside`` gate and a
        NOT gate of it.
    """
    template = load_template(template)
    if not isinstance(sample, FCSSample):
        sample = read_fcs(sample)
    exp = _Exporter(template, sample)
    for pop in template.populations:
        path = _path_of(template, pop.name, exp.ids)
        gate = pop.gate
        if isinstance(gate, RectangleGate | PolygonGate) and gate.complement:
            # GatingML 2.0 has no complement for geometric gates (FlowKit drops the flag on
            # export): write the inside as its own gate and the population as NOT of it.
            inside_id = f"{exp.ids[pop.name]}_inside"
            inside = replace(pop, gate=replace(gate, complement=False))
            exp.gs.add_gate(_renamed(exp.gate(inside), inside_id), path)
            refs = [{"ref": inside_id, "path": path, "complement": False}]
            exp.gs.add_gate(fk.gates.BooleanGate(exp.ids[pop.name], "not", refs), path)
            continue
        exp.gs.add_gate(exp.gate(pop), path)
    return exp.gs


def flowkit_gates(template: Template, sample: FCSSample
                  ) -> tuple[dict[str, Any], dict[str, Any], dict[str, str],
                             dict[str, list[float]], dict[str, Any]]:
    """Each geometric population's gate as a FlowKit gate bound to one file's channels.

    The building blocks of a FlowJo workspace export: gates in GatingML coordinates on the
    file's ``$PnN`` channels (``compensation_ref`` ``"FCS"`` where the file's spillover
    applies), complements kept as ``use_complement``.

    Parameters
    ----------
    template
        The template as applied to the sample (adaptive gates where they landed).
    sample
        The file the markers resolve in.

    Returns
    -------
    (gates, transforms, channels, factors, matrices)
        ``{population: FlowKit gate}`` for every non-boolean population, ``{transform id:
        FlowKit transform}`` the gates' dimensions reference, ``{marker: $PnN}``, per
        population the factor of each dimension from template to GatingML coordinates, and
        ``{compensation_ref: spillover DataFrame}`` (``"FCS"``: the file's own).
    """
    exp = _Exporter(template, sample)
    shaped = [p for p in template.populations if not isinstance(p.gate, BooleanGate)]
    gates = {pop.name: exp.gate(pop) for pop in shaped}
    factors = {pop.name: [exp.dim_for(d, None, None)[1] for d in pop.gate.dims]
               for pop in shaped}
    transforms = {xid: exp.gs.get_transform(xid) for xid in exp.xform_ids.values()}
    return gates, transforms, dict(exp.channel), factors, {"FCS": sample.spillover,
                                                           **exp.matrices}


def _renamed(gate: Any, gate_id: str) -> Any:
    gate.gate_name = gate_id
    return gate


def write_gatingml(template: Template | str | Path, path: str | Path, *,
                   sample: FCSSample | str | Path) -> Path:
    """Export a template, bound to one file's panel, as GatingML 2.0.

    Dimensions become the file's channel names, transforms GatingML's parameterisation
    (``arcsinh(x/c)`` as GatingML asinh, with gate coordinates rescaled), compensation the
    file's own spillover (``FCS``) for the channels it covers. Adaptive gates are written at
    their default positions. The file is written atomically.

    Parameters
    ----------
    template
        A :class:`Template`, a YAML path or a shipped template name.
    path
        The GatingML file to write.
    sample
        An :class:`~immunoprofile.io.fcs.FCSSample` or FCS path that binds markers to
        channels.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    gs = template_to_flowkit(template, sample)
    buf = io.BytesIO()
    fk.export_gatingml(gs, buf)
    return atomic_write(Path(path), lambda tmp: tmp.write_bytes(buf.getvalue()))
