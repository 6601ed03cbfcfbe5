"""A run as a FlowJo 10 workspace: every sample with its own gates as the run applied them.

``immunoprofile flowjo export RUN --template NAME --out review.wsp`` writes one workspace per
template (FlowJo keeps one gate tree per sample). Each sample is gated again exactly as the run
gated it (same file, template, settings and overrides: the same adaptive positions), and
written with:

- its FCS file (``DataSet`` URI) and a ``SampleNode`` named by the file name;
- its spillover (``Comp-`` parameters) and one transform per parameter: the template's
  arcsinh as FlowJo's ``fasinh`` (GatingML asinh), logicle, linear;
- acquisition QC as two gates above the template's tree (:mod:`._qc_gates`), so counts start
  from the events the run kept;
- every population with its gate as placed: polygons, ranges and rectangles (quadrants are
  four rectangles), complements (``eventsInside="0"``), ellipses as fine polygons checked
  against the run's membership, NOT/AND/OR nodes.

Whatever cannot be represented exactly is listed per sample in the returned notes (and in
``<out>.notes.csv``), never silently approximated.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.path import Path as MplPath

from immunoprofile._atomic import atomic_write_all
from immunoprofile.batch import BatchSettings, gate_row, run_inputs
from immunoprofile.errors import ImmunoprofileError
from immunoprofile.flowjo._qc_gates import QC_NODES, qc_gates
from immunoprofile.flowjo._xml import COMP_PREFIX, GateNode, SampleEntry, workspace_xml
from immunoprofile.gating.engine import GatingResult
from immunoprofile.overrides import for_sample, read_overrides
from immunoprofile.run import Run
from immunoprofile.template.model import BooleanGate, Template

#: Keyword carrying the run's sample id in each exported sample (``flowjo apply`` reads it).
SAMPLE_ID_KEYWORD = "IMMUNOPROFILE_SAMPLE_ID"
ELLIPSE_VERTICES = (256, 1024, 4096)


@dataclass
class ExportedSample:
    """One sample as exported: its entry, the result it came from and what was noted."""

    sample_id: str
    entry: SampleEntry
    result: GatingResult
    notes: list[str]
    gates: dict[str, Any]  # population → FlowKit gate as written (GatingML coordinates)
    channels: dict[str, str]  # marker → $PnN
    factors: dict[str, list[float]]  # population → template-to-GatingML factor per dimension


def _raw(xform: Any, values: list[float | None]) -> list[float | None]:
    if xform is None:
        return [None if v is None else float(v) for v in values]
    return [None if v is None else float(xform.inverse(np.array([[float(v)]]))[0, 0])
            for v in values]


def _ellipse_polygon(gate: Any, n: int) -> np.ndarray:
    mean = np.asarray(gate.coordinates, float)
    cov = np.asarray(gate.covariance_matrix, float)
    chol = np.linalg.cholesky(cov)
    # vertices outside the ellipse by the chord's sag: the polygon encloses it
    angle = np.linspace(0, 2 * np.pi, n, endpoint=False)
    radius = np.sqrt(gate.distance_square) / np.cos(np.pi / n)
    circle = np.column_stack([np.cos(angle), np.sin(angle)]) * radius
    return mean + circle @ chol.T


class _SampleExport:
    """Builds one sample's gate nodes from its gating result."""

    def __init__(self, result: GatingResult, sample: Any, notes: list[str], root: np.ndarray):
        # start-up time: FlowKit is needed only for exports
        from immunoprofile.template.gatingml import flowkit_gates

        self.result = result
        self.root = root  # the events the template's top gates see (QC-kept)
        self.sample = sample
        self.notes = notes
        self.gates, self.xforms, self.channels, self.factors, self.matrices = flowkit_gates(
            result.template, sample)
        self.transforms: dict[str, Any] = {}
        self.comp_refs: set[str] = set()
        self.written: dict[str, Any] = {}  # as drawn: ellipses become their polygons

    def dim_name(self, dim: Any) -> str:
        xform = None if dim.transformation_ref is None else self.xforms[dim.transformation_ref]
        known = self.transforms.get(dim.id, xform)
        if known is not xform and repr(known) != repr(xform):
            self.notes.append(f"{dim.id} is drawn with two transforms; FlowJo keeps one per "
                              "parameter, so gates on it may differ")
        if xform is not None:
            self.transforms.setdefault(dim.id, xform)
        if dim.compensation_ref not in (None, "uncompensated"):
            self.comp_refs.add(dim.compensation_ref)
            return COMP_PREFIX + dim.id
        return dim.id

    def spillover(self) -> pd.DataFrame | None:
        """The one matrix FlowJo compensates the sample with (None: uncompensated)."""
        if not self.comp_refs:
            return None
        if len(self.comp_refs) > 1:
            self.notes.append(f"gates use several compensation matrices "
                              f"({', '.join(sorted(self.comp_refs))}); FlowJo applies one per "
                              "sample, the first is written")
        return self.matrices[sorted(self.comp_refs)[0]]

    def xform(self, dim: Any) -> Any:
        return None if dim.transformation_ref is None else self.xforms[dim.transformation_ref]

    def node(self, name: str, path: tuple[str, ...]) -> GateNode | None:
        pop = self.result.template[name]
        if isinstance(pop.gate, BooleanGate):
            negated = [r for r, neg in pop.gate.refs if neg]
            if pop.gate.op != "not" and negated:
                self.notes.append(f"{name}: FlowJo boolean gates cannot negate one of their "
                                  f"inputs ({', '.join(negated)}); population left out")
                return None
            deps = [(*self.prefix, *self.result.template.ancestors(r)[::-1], r)
                    for r, _ in pop.gate.refs]
            return GateNode(name, path, pop.gate.op, dependents=deps)
        g = self.gates[name]
        self.written[name] = g
        dims = [self.dim_name(d) for d in g.dimensions]
        kind = type(g).__name__
        if kind == "RectangleGate":
            mins, maxs = [], []
            for d in g.dimensions:
                (lo, hi) = _raw(self.xform(d), [d.min, d.max])
                mins.append(lo)
                maxs.append(hi)
            return GateNode(name, path, "rectangle", dims=dims, mins=mins, maxs=maxs,
                            complement=bool(g.use_complement))
        if kind == "PolygonGate":
            verts = np.asarray(g.vertices, float)
        else:  # an ellipse: a polygon fine enough to hold the same events
            # start-up time: FlowKit is needed only for exports
            from flowkit import gates as fk_gates

            verts = self.ellipse_vertices(name, g)
            self.written[name] = fk_gates.PolygonGate(name, g.dimensions, verts.tolist())
        xs = _raw(self.xform(g.dimensions[0]), list(verts[:, 0]))
        ys = _raw(self.xform(g.dimensions[1]), list(verts[:, 1]))
        return GateNode(name, path, "polygon", dims=dims,
                        vertices=[[x, y] for x, y in zip(xs, ys)],
                        complement=bool(getattr(g, "use_complement", False)))

    def ellipse_vertices(self, name: str, g: Any) -> np.ndarray:
        space = self.result.prepared.space
        pop = self.result.template[name]
        parent = self.result.template[name].parent
        idx = np.flatnonzero(self.result.membership[parent] if parent else self.root)
        pts = np.column_stack([space.values(d, idx) for d in pop.gate.dims]) \
            * np.asarray(self.factors[name])
        want = self.result.membership[name][idx]
        for n in ELLIPSE_VERTICES:
            verts = _ellipse_polygon(g, n)
            if np.array_equal(MplPath(verts).contains_points(pts), want):
                return verts
        self.notes.append(f"{name}: the ellipse drawn as a {n}-vertex polygon holds "
                          "different events; counts may differ slightly")
        return verts

    @property
    def prefix(self) -> tuple[str, ...]:
        return self._prefix

    def nodes(self, qc_nodes: list[GateNode]) -> list[GateNode]:
        self._prefix = tuple(n.name for n in qc_nodes)
        out = list(qc_nodes)
        skipped = set(self.result.not_measured)
        for pop in self.result.template.populations:
            if pop.name in skipped or (pop.parent and pop.parent in skipped):
                skipped.add(pop.name)
                continue
            if "/" in pop.name:
                raise ImmunoprofileError(f"population {pop.name!r}: FlowJo paths use '/', "
                                         "so a population name may not hold one")
            path = (*self._prefix, *self.result.template.ancestors(pop.name)[::-1])
            node = self.node(pop.name, path)
            if node is None:
                skipped.add(pop.name)
                continue
            out.append(node)
        if skipped - set(self.result.not_measured):
            left = sorted(skipped - set(self.result.not_measured))
            self.notes.append(f"left out: {', '.join(left)}")
        return out


def export_sample(row: dict, template: Template, settings: BatchSettings,
                  overrides=()) -> ExportedSample | None:
    """One sample of the run as a workspace entry (None when the template did not gate it).

    Parameters
    ----------
    row
        Its sample-sheet row.
    template
        The run's template.
    settings
        The run's settings.
    overrides
        The sample's overrides.

    Returns
    -------
    ExportedSample or None
        The entry and the result it stands for.
    """
    work = gate_row(row, [template], settings, tuple(overrides))
    if not work.results:
        return None
    result, sample = work.results[0], work.sample
    notes: list[str] = []
    finite = sample.finite_events()
    root = work.kept if finite is None else work.kept & finite
    builder = _SampleExport(result, sample, notes, root)
    qc_nodes: list[GateNode] = []
    if result.qc and work.qc_result is not None:
        params = work.qc_result.params
        columns = [str(c) for c in sample.channels["pnn"]]
        margin = [c for c in params.get("margin_channels", []) if c in columns]
        y = margin[0] if margin else next((c for c in columns if c != params.get(
            "time_channel")), None)
        qc = qc_gates(sample.events, columns, work.kept, work.qc_result.failed, margin,
                      params.get("time_channel"), y)
        qc_nodes = qc.nodes
        if qc.problem:
            notes.append(qc.problem)
    nodes = builder.nodes(qc_nodes)
    spill = builder.spillover()
    keywords = {SAMPLE_ID_KEYWORD: str(row["sample_id"]), "$FIL": Path(str(row["path"])).name}
    for k in ("patient_id", "arm", "timepoint"):
        if row.get(k) is not None:
            keywords[k.upper()] = str(row[k])
    entry = SampleEntry(name=Path(str(row["path"])).name,
                        uri=Path(str(row["path"])).resolve().as_uri(), keywords=keywords,
                        spillover=spill, transforms=builder.transforms, gates=nodes)
    return ExportedSample(str(row["sample_id"]), entry, result, notes, builder.written,
                          builder.channels, builder.factors)


def export_workspace(run: str | Path | Run, template: str, out: str | Path, *,
                     force: bool = False) -> pd.DataFrame:
    """Write a run's samples, gated with one template, as a FlowJo 10 workspace.

    Parameters
    ----------
    run
        A gated run folder.
    template
        The name of one of the run's templates.
    out
        The ``.wsp`` file to write (and ``<out>.notes.csv`` beside it).
    force
        Replace an existing ``out``.

    Returns
    -------
    pandas.DataFrame
        One row per sample of the run: ``sample_id``, ``file``, ``exported`` (bool),
        ``n_populations``, ``note`` (what could not be represented exactly; '' when the
        sample's counts in FlowJo are the run's).

    Raises
    ------
    ImmunoprofileError
        Unknown template, an existing ``out`` without ``force``, two samples with the same
        file name (FlowJo names samples by file), or no sample to export.
    """
    run = Run.open(run)
    rows, templates, settings, _ = run_inputs(run)
    if template not in templates:
        raise ImmunoprofileError(f"template {template!r} is not one of the run's "
                                 f"({', '.join(templates)})")
    out = Path(out)
    if out.exists() and not force:
        raise ImmunoprofileError(f"{out} exists; pass --force to replace it")
    overrides = read_overrides(run.overrides_path)
    exported, table = [], []
    for row in rows:
        sid = str(row["sample_id"])
        one = export_sample(row, templates[template], settings, for_sample(overrides, sid))
        file = Path(str(row["path"])).name
        if one is None:
            table.append({"sample_id": sid, "file": file, "exported": False,
                          "n_populations": 0, "note": f"not gated with {template}"})
            continue
        exported.append(one)
        table.append({"sample_id": sid, "file": file, "exported": True,
                      "n_populations": sum(n.name not in QC_NODES for n in one.entry.gates),
                      "note": "; ".join(one.notes)})
    notes = pd.DataFrame(table, columns=["sample_id", "file", "exported", "n_populations",
                                         "note"])
    if not exported:
        raise ImmunoprofileError(f"no sample of {run.path} was gated with {template}")
    names = pd.Series([e.entry.name for e in exported])
    if names.duplicated().any():
        raise ImmunoprofileError(
            f"several samples share the file name {names[names.duplicated()].iloc[0]!r}; "
            "FlowJo names samples by file name: rename the files or export them apart")
    xml = workspace_xml([e.entry for e in exported], group=template)
    buf = io.StringIO()
    notes.to_csv(buf, index=False)
    atomic_write_all([(out, lambda tmp: tmp.write_bytes(xml)),
                      (notes_path(out), lambda tmp: tmp.write_text(buf.getvalue()))])
    return notes


def notes_path(out: str | Path) -> Path:
    """Where :func:`export_workspace` writes its per-sample notes."""
    out = Path(out)
    return out.with_name(out.name + ".notes.csv")


