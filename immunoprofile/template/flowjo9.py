"""FlowJo 9 workspace XML (Mac FlowJo 9.x, workspace versions 2.0 and 3.0) → template.

FlowKit reads FlowJo 10 workspaces only; this module reads the older XML that CytoML's
``macFlowJoWorkspace`` parses, one sample's gate tree at a time:

- gate vertices are stored in **raw** (compensated, untransformed) units, but FlowJo draws
  and gates on its display scale, so a polygon's edges are straight on that scale. Each
  log-displayed parameter gets the transform that reproduces its ``CalibrationTables`` entry
  (channel 0–4096 → raw value): these tables are FlowJo's biexponential, so a
  :class:`~immunoprofile.template.transforms.FlowJoBiex` is fitted to each table
  (:func:`biex_from_table`, exact to ~1e-4 channel); linear parameters keep
  :class:`~immunoprofile.template.transforms.Identity`;
- compensated parameters are named ``<FITC-A>`` (the matrix's prefix and suffix); the
  sample's ``compensationID`` picks the matrix from ``CompensationMatrices`` (carried in
  ``Template.comp_matrices``), ``-1`` means the FCS file's own spillover, ``-2`` none;
- gates: ``Polygon``, ``PolyRect`` (rectangle), ``Range`` (1-D), ``Ellipse`` (four
  antipodal points on the display scale, as CytoML reads them) and ``BooleanGate``
  (``G0 & !G1`` over gate paths); gate names FlowJo repeats under different parents become
  ``"Parent/Child"``, as :mod:`immunoprofile.template.flowjo` does for FlowJo 10.
"""

from __future__ import annotations

import math
import re
from collections import Counter
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
    EllipseGate,
    Gate,
    PolygonGate,
    Population,
    RectangleGate,
    Template,
)
from immunoprofile.template.transforms import FlowJoBiex, FlowJoLog, Identity, Transform
from immunoprofile.template.xml_root import root_element
from immunoprofile.template.yaml_io import ordered_populations

#: FlowJo's display scale: calibration tables map channels 0..4096 to raw values.
CHANNELS = 4096


@dataclass(frozen=True)
class _Dialect:
    """Where a workspace version keeps samples and names (CytoML's ``nodePath``)."""

    samples: str
    name: str
    matrix_name: str
    matrix_channel: str
    matrix_value: str


_DIALECTS = {
    "2.0": _Dialect("SampleList/Sample", "name", "name", "name", "value"),
    "3.0": _Dialect("Samples/Sample", "nodeName", "matrixName", "fluorName", "spillValue"),
}
_SHAPES = ("Polygon", "PolyRect", "Range", "Ellipse")


# --- file level -----------------------------------------------------------------------------


def is_flowjo9(path: str | Path) -> bool:
    """Whether a file is a FlowJo 9 workspace this module reads (cheap: the root element only).

    Parameters
    ----------
    path
        Any file.

    Returns
    -------
    bool
        True when its root element is ``<Workspace>`` with ``version`` 2.0 or 3.0 (FlowJo 10
        writes 20.0); False for anything else, unreadable files included.
    """
    root = root_element(path, allow_dtd=True)  # FlowJo 9 declares a DOCTYPE
    return root is not None and root.tag == "Workspace" and root.get("version") in _DIALECTS


def _root(path: Path) -> Any:
    try:
        # FlowJo 9 files declare <!DOCTYPE Workspace> (no entities): DTDs pass, entities and
        # external references do not (billion laughs, XXE).
        root = SafeET.parse(str(path), forbid_dtd=False, forbid_entities=True,
                            forbid_external=True).getroot()
    except DefusedXmlException as exc:
        raise TemplateError(f"{path}: refused: the XML declares entities or external "
                            f"references ({exc}); FlowJo workspaces need neither") from exc
    except (SafeET.ParseError, OSError) as exc:
        raise TemplateError(f"{path}: not readable XML ({exc})") from exc
    version = root.get("version")
    if root.tag != "Workspace" or version not in _DIALECTS:
        what = (f"a FlowJo workspace version {version}" if root.tag == "Workspace"
                else f"XML with root <{root.tag}>")
        hint = ("FlowJo 10 workspaces (version 20.0) are read by read_flowjo" if version == "20.0"
                else "for FlowJo 7 (PC) or 10.0 files, re-save the workspace in FlowJo 10")
        raise TemplateError(f"{path}: not a FlowJo 9 workspace (it is {what}); read_flowjo9 "
                            f"reads workspace versions {', '.join(_DIALECTS)}; {hint}")
    return root


def _keyword(sample: Any, name: str) -> str | None:
    for kw in sample.iterfind("Keywords/Keyword"):
        if kw.get("name") == name:
            return (kw.get("value") or "").strip()
    return None


def _label(sample: Any, d: _Dialect) -> str:
    node = sample.find("SampleNode")
    if node is None:
        return ""
    return node.get(d.name) or node.get("name") or node.get("nodeName") or ""


def _pick_sample(root: Any, d: _Dialect, wanted: str | None, path: Path) -> Any:
    samples = [s for s in root.iterfind(d.samples) if s.find("SampleNode") is not None]
    listing = "; ".join(f"{_label(s, d)!r} ({_keyword(s, '$FIL')})" for s in samples)
    if wanted is None:
        gated = [s for s in samples if s.find("SampleNode/Population") is not None]
        if not gated:
            raise TemplateError(f"{path}: no sample has gates (samples: {listing or 'none'})")
        return gated[0]
    by_file = [s for s in samples if _keyword(s, "$FIL") in (wanted, Path(wanted).name)]
    if len(by_file) == 1:
        return by_file[0]
    by_name = [s for s in samples if _label(s, d) == wanted] or by_file
    if len(by_name) == 1:
        return by_name[0]
    if by_name:
        files = ", ".join(repr(_keyword(s, "$FIL")) for s in by_name)
        raise TemplateError(f"{path}: {len(by_name)} samples are named {wanted!r}; give the "
                            f"FCS file name instead ({files})")
    raise TemplateError(f"{path}: no sample {wanted!r}; give a sample name or FCS file name "
                        f"(samples: {listing})")


# --- compensation and display transforms -----------------------------------------------------


@dataclass
class _Comp:
    ref: str  # "none", "file" or the matrix name
    prefix: str
    suffix: str
    matrix: pd.DataFrame | None = None
    tables: str = ""  # the calibration-table group of the compensated parameters


def _compensation(root: Any, sample: Any, d: _Dialect, path: Path) -> _Comp:
    # CytoML's getCompensation: -1 acquisition-defined, -2 none, empty none (unprefixed),
    # otherwise a 1-based index into CompensationMatrices.
    cid = (sample.get("compensationID") or "").strip()
    if cid == "-1":
        return _Comp("file", "<", ">", tables="Acquisition-defined")
    if cid == "-2":
        return _Comp("none", "<", ">")
    if not cid:
        return _Comp("none", "", "")
    nodes = root.findall("CompensationMatrices/CompensationMatrix")
    if not cid.isdigit() or not 1 <= int(cid) <= len(nodes):
        raise TemplateError(f"{path}: sample {_label(sample, d)!r} names compensation matrix "
                            f"{cid}, but the workspace holds {len(nodes)}; re-save it in FlowJo")
    node = nodes[int(cid) - 1]
    name = node.get(d.matrix_name) or node.get("name") or f"matrix{cid}"
    rows, values, detectors = [], [], None
    for ch in node.iterfind("Channel"):
        cells = ch.findall("ChannelValue")
        names = [c.get(d.matrix_channel) or c.get("name") for c in cells]
        detectors = detectors or names
        if names != detectors:
            raise TemplateError(f"{path}: compensation matrix {name!r} lists its detectors in "
                                "different orders per row; re-save it in FlowJo")
        rows.append(ch.get(d.matrix_channel) or ch.get("name"))
        try:
            values.append([float(c.get(d.matrix_value) or c.get("value")) for c in cells])
        except (TypeError, ValueError) as exc:
            raise TemplateError(f"{path}: compensation matrix {name!r} holds a non-numeric "
                                f"value ({exc})") from exc
    if not rows or len(rows) != len(detectors or []):
        raise TemplateError(f"{path}: compensation matrix {name!r} is not square")
    matrix = pd.DataFrame(np.asarray(values, dtype=float), index=rows, columns=detectors)
    return _Comp(name, node.get("prefix", "<"), node.get("suffix", ">"), matrix, name)


def _tables(root: Any, path: Path) -> list[tuple[str, np.ndarray]]:
    out = []
    for table in root.iterfind("CalibrationTables/Table"):
        name = table.get("name") or ""
        try:
            pairs = np.array([float(x) for x in (table.text or "").replace("\n", "").split(",")
                              if x.strip()], dtype=float)
        except ValueError as exc:
            raise TemplateError(f"{path}: calibration table {name!r} is not numeric "
                                f"({exc})") from exc
        out.append((name, pairs))
    return out


def biex_from_table(pairs: np.ndarray, *, where: str = "calibration table") -> Transform:
    """The FlowJo display transform that reproduces a FlowJo 9 calibration table.

    FlowJo 9 writes ``channel,value`` pairs for channels 0–4096 of its biexponential display,
    whose width basis it picks per parameter and does not store. The channel of zero (``z``)
    fixes, in FlowJo's algorithm (FlowKit's ``generate_biex_lut``), all but the width and the
    top value: the width is found by root finding on ``value[0] / value[4096]``, the top from
    ``value[4096]``. Tables without a negative part are a log scale (:class:`FlowJoLog`).

    Parameters
    ----------
    pairs
        The flattened table, ``c0, v0, c1, v1, …``.
    where
        Named in messages (the table and workspace).

    Returns
    -------
    Transform
        A :class:`FlowJoBiex` (output 0–4096) or :class:`FlowJoLog` whose inverse matches
        every table value within 0.1% (or 1 unit near zero).

    Raises
    ------
    TemplateError
        Not 4097 increasing values on channels 0–4096, or no such transform fits.
    """
    # start-up time: SciPy's optimiser is needed only when a workspace is imported
    from scipy.optimize import brentq

    channels = np.arange(CHANNELS + 1, dtype=float)
    if pairs.size != 2 * channels.size or not np.array_equal(pairs[0::2], channels):
        raise TemplateError(f"{where}: expected channels 0..{CHANNELS}, got {pairs.size // 2} "
                            "pairs; only FlowJo's 4096-channel display scale is supported")
    v = pairs[1::2]
    if not np.all(np.diff(v) > 0):
        raise TemplateError(f"{where}: values do not increase with the channel")

    def error(t: Transform, scale: float = 1.0) -> float:
        back = t.inverse(channels / scale)
        return float(np.max(np.abs(back - v) / np.maximum(np.abs(v), 1.0)))

    if v[0] > 0:
        log = FlowJoLog(offset=float(v[0]), decades=float(math.log10(v[-1] / v[0])))
        if error(log, CHANNELS) < 1e-3:  # FlowJoLog's output runs 0–1, not 0–4096
            return log
        raise TemplateError(f"{where}: neither a FlowJo biexponential nor a log scale")
    z = int(np.argmin(np.abs(v)))

    def shape(log_width: float) -> FlowJoBiex:
        # FlowJo's zero channel is int(log10(-width) / 2 * 4096 / positive): this `positive`
        # puts it at z; the effective decades then follow from z and the width alone.
        return FlowJoBiex(negative=0.0, width=-(10.0 ** log_width),
                          positive=log_width * CHANNELS / (2 * (z + 0.5)), max_value=1.0)

    def ratio(log_width: float) -> float:
        lut = shape(log_width).inverse(channels[[0, -1]])
        return float(lut[0] / lut[1] - v[0] / v[-1])

    grid = np.linspace(0.02, 6.0, 61)  # width basis -1.05 … -10**6
    values = [ratio(w) for w in grid]
    best: tuple[float, Transform] | None = None
    for i in np.flatnonzero(np.sign(values[:-1]) != np.sign(values[1:])):
        w = brentq(ratio, grid[i], grid[i + 1], xtol=1e-13)
        unit = shape(w)
        top = float(v[-1] / unit.inverse(channels[-1:])[0])
        fitted = FlowJoBiex(negative=0.0, width=unit.width, positive=unit.positive,
                            max_value=top)
        err = error(fitted)
        if best is None or err < best[0]:
            best = (err, fitted)
    if best is None or best[0] > 1e-3:
        raise TemplateError(f"{where}: not a FlowJo biexponential scale (closest fit off by "
                            f"{'—' if best is None else f'{best[0]:.2%}'})")
    return best[1]


# --- gates ------------------------------------------------------------------------------------


class _Reader:
    """One sample's parameters, compensation and display transforms, and its gates."""

    def __init__(self, root: Any, sample: Any, d: _Dialect, path: Path):
        self.path, self.d = path, d
        self.label = _label(sample, d)
        self.params = {p.get("name"): p for p in sample.iterfind("Parameter")}
        self.comp = _compensation(root, sample, d, path)
        self.tables = _tables(root, path)
        self._transforms: dict[tuple[str, bool], Transform] = {}

    def transform(self, param: str, compensated: bool) -> Transform:
        """The display scale of a parameter (fitted once per parameter)."""
        key = (param, compensated)
        if key not in self._transforms:
            self._transforms[key] = self._display(param, compensated)
        return self._transforms[key]

    def _display(self, param: str, compensated: bool) -> Transform:
        node = self.params[param]
        if node.get("log") != "1":
            return Identity()
        c = self.comp
        # CytoML's order: the compensation group's table for the parameter, else the table
        # the parameter's calibrationIndex (1-based) points at.
        wanted = f"{c.tables} {c.prefix}{param}{c.suffix}" if compensated and c.tables else None
        table = next(((n, t) for n, t in self.tables if n == wanted), None)
        index = node.get("calibrationIndex") or ""
        if table is None and index.isdigit() and 1 <= int(index) <= len(self.tables):
            table = self.tables[int(index) - 1]
        if table is not None:
            return biex_from_table(table[1], where=f"{self.path}: calibration table "
                                                   f"{table[0]!r}")
        low, high = float(node.get("lowValue") or 0), float(node.get("highValue") or 0)
        if low > 0 and high > low:  # a plain log axis from lowValue to highValue
            return FlowJoLog(offset=low, decades=math.log10(high / low))
        return FlowJoBiex(negative=0.0, width=-10.0, positive=4.5, max_value=262144.0)

    def dimension(self, axis: str, where: str) -> Dimension:
        c = self.comp
        inner, compensated = axis, False
        if (c.prefix or c.suffix) and axis.startswith(c.prefix) and axis.endswith(c.suffix) \
                and len(axis) > len(c.prefix) + len(c.suffix):
            inner, compensated = axis[len(c.prefix):len(axis) - len(c.suffix)], True
        elif not (c.prefix or c.suffix) and c.matrix is not None:
            compensated = axis in c.matrix.columns
        if inner not in self.params:
            raise TemplateError(f"{where}: axis {axis!r} is not a parameter of sample "
                                f"{self.label!r} (parameters: {', '.join(self.params)}); "
                                "derived parameters are not supported")
        ref = c.ref if compensated else "none"
        return Dimension(marker=inner, transform=self.transform(inner, compensated),
                         compensation=ref)

    def gate(self, pop: Any, where: str) -> Gate | tuple[str, list[tuple[str, bool]]]:
        boolean = pop.find("BooleanGate")
        if boolean is not None:
            return _boolean(boolean, where)
        holder = pop.find("PolygonGate")
        shape = None if holder is None else next((c for c in holder if c.tag in _SHAPES), None)
        if shape is None:
            kinds = [c.tag for c in holder] if holder is not None else [c.tag for c in pop]
            raise TemplateError(f"{where}: unsupported gate ({', '.join(kinds)}); supported: "
                                f"{', '.join(_SHAPES)} and BooleanGate")
        negated = (shape.get("negated") or "0").lower() not in ("0", "false")
        axes = [a for a in (shape.get("xAxisName"), shape.get("yAxisName")) if a]
        dims = tuple(self.dimension(a, where) for a in axes)
        try:
            raw = np.array([[float(v.get("x")), float(v.get("y"))]
                            for v in shape.iterfind("Polygon/Vertex")], dtype=float)
        except (TypeError, ValueError) as exc:
            raise TemplateError(f"{where}: a vertex is not numeric ({exc})") from exc
        if shape.tag == "Range":
            if len(dims) != 1 or len(raw) != 2:
                raise TemplateError(f"{where}: a range needs one axis and two vertices")
            col = raw[:, 0] if raw[0, 0] != raw[1, 0] else raw[:, 1]  # as CytoML reads them
            t = dims[0].transform
            return RectangleGate(dims=dims, mins=(_bound(t, col.min(), False),),
                                 maxs=(_bound(t, col.max(), True),), complement=negated)
        if len(dims) != 2 or len(raw) < 3:
            raise TemplateError(f"{where}: a {shape.tag} needs two axes and 3+ vertices")
        if shape.tag == "PolyRect" and len(np.unique(raw[:, 0])) == 2 \
                and len(np.unique(raw[:, 1])) == 2:
            pairs = [(dims[k].transform, raw[:, k]) for k in range(2)]
            return RectangleGate(dims=dims, mins=tuple(_bound(t, c.min(), False) for t, c in pairs),
                                 maxs=tuple(_bound(t, c.max(), True) for t, c in pairs),
                                 complement=negated)
        # Vertices go to the display scale, where FlowJo draws straight edges.
        shown = np.column_stack([dims[k].transform.apply(raw[:, k]) for k in range(2)])
        if shape.tag == "Ellipse":
            return _ellipse(dims, shown, negated, where)
        return PolygonGate(dims=dims, vertices=tuple((float(x), float(y)) for x, y in shown),
                           complement=negated)


def _bound(t: Transform, raw: float, upper: bool) -> float | None:
    """A range limit on the display scale; open where the display clamps (off scale)."""
    if isinstance(t, FlowJoBiex):
        bottom, top = t.inverse(np.array([0.0, CHANNELS]))
        # FlowJo's top channel holds everything above it, channel 0 everything below.
        if (upper and raw >= top) or (not upper and raw <= bottom):
            return None
    elif isinstance(t, FlowJoLog) and not upper and raw <= t.offset:
        return None
    return float(t.apply(np.array([raw]))[0])


def _ellipse(dims: tuple[Dimension, ...], v: np.ndarray, negated: bool, where: str) -> Gate:
    """CytoML's ``ellipseGate::computeCov``: four antipodal points → mean and covariance."""
    if len(v) != 4:
        raise TemplateError(f"{where}: an ellipse needs 4 antipodal points, got {len(v)}")
    mean = v.mean(axis=0)
    c = v - mean
    right, left = int(np.argmax(c[:, 0])), int(np.argmin(c[:, 0]))
    rest = [i for i in range(4) if i not in (left, right)]
    if len(rest) != 2:
        raise TemplateError(f"{where}: the ellipse's antipodal points coincide")
    a = np.hypot(*(c[left] - c[right])) / 2
    b = np.hypot(*(c[rest[0]] - c[rest[1]])) / 2
    u, w = c[left] / np.hypot(*c[left]), c[rest[0]] / np.hypot(*c[rest[0]])
    cov = a * a * np.outer(u, u) + b * b * np.outer(w, w)
    if not negated:
        return EllipseGate(dims=dims, mean=tuple(float(m) for m in mean),
                           covariance=tuple(tuple(float(x) for x in r) for r in cov),
                           distance_square=1.0)
    # Ellipses have no complement: a fine polygon of the same ellipse carries the negation.
    theta = np.linspace(0, 2 * np.pi, 256, endpoint=False)
    pts = mean + (np.linalg.cholesky(cov) @ np.vstack([np.cos(theta), np.sin(theta)])).T
    return PolygonGate(dims=dims, vertices=tuple((float(x), float(y)) for x, y in pts),
                       complement=True)


_TOKEN = re.compile(r"^(!?)G(\d+)$")


def _boolean(node: Any, where: str) -> tuple[str, list[tuple[str, bool]]]:
    """``G0 & !G1`` over ``GatePaths`` → (op, [(path, negate)]); paths resolved later."""
    spec = (node.get("specification") or "").replace(" ", "")
    paths = [(s.text or "").strip().strip('"').strip() for s in node.iterfind("GatePaths/*/*")]
    parts = re.split(r"([&|])", spec)
    tokens, ops = parts[0::2], set(parts[1::2])
    if len(ops) > 1:
        raise TemplateError(f"{where}: boolean gate {spec!r} mixes & and |; split it into "
                            "gates of one operator each in FlowJo")
    refs = []
    for tok in tokens:
        m = _TOKEN.match(tok)
        if not m or int(m.group(2)) >= len(paths):
            raise TemplateError(f"{where}: cannot read boolean gate {spec!r} over {paths}")
        refs.append((paths[int(m.group(2))], m.group(1) == "!"))
    op = "or" if ops == {"|"} else "and"
    if (node.get("negated") or "0").lower() not in ("0", "false"):
        # not(A and B) == (not A) or (not B): our booleans negate references, not results.
        op, refs = ("and" if op == "or" else "or"), [(p, not n) for p, n in refs]
    return op, refs


# --- the tree ---------------------------------------------------------------------------------


def _qualified(paths: list[tuple[str, ...]]) -> list[str]:
    """Population names: the gate name, or ``Parent/Child`` (as many ancestors as make it
    unique) for names FlowJo repeats under different parents."""
    counts = Counter(p[-1] for p in paths)
    out = [p[-1] for p in paths]
    taken = {p[-1] for p in paths if counts[p[-1]] == 1}
    for name in sorted(n for n, k in counts.items() if k > 1):
        idx = [i for i, p in enumerate(paths) if p[-1] == name]
        for k in range(2, max(len(paths[i]) for i in idx) + 1):
            labels = ["/".join(paths[i][-k:]) for i in idx]
            if len(set(labels)) == len(labels) and not set(labels) & taken:
                break
        else:
            raise TemplateError(f"gate {name!r} appears twice under the same parent")
        taken.update(labels)
        for i, label in zip(idx, labels):
            out[i] = label
    return out


def _resolve(ref: str, own: tuple[str, ...], paths: list[tuple[str, ...]],
             names: list[str], where: str) -> str:
    """A boolean's gate path (``/A/B`` or a partial one) → population, nearest first."""
    parts = tuple(p for p in ref.split("/") if p)
    hits = [i for i, p in enumerate(paths) if parts and p[-len(parts):] == parts]

    def shared(i: int) -> int:
        return next((k for k, (a, b) in enumerate(zip(paths[i], own)) if a != b),
                    min(len(paths[i]), len(own)))

    hits.sort(key=lambda i: -shared(i))
    if not hits or (len(hits) > 1 and shared(hits[0]) == shared(hits[1])):
        raise TemplateError(f"{where}: boolean gate refers to {ref!r}, which names "
                            f"{'no' if not hits else 'several'} populations")
    return names[hits[0]]


def read_flowjo9(path: str | Path, *, sample: str | None = None,
                 name: str | None = None) -> Template:
    """Read one sample's gates from a FlowJo 9 workspace (XML version 2.0 or 3.0).

    Parameters
    ----------
    path
        The workspace ``.xml`` (or ``.wsp``) file.
    sample
        The sample whose gate tree to take: its FlowJo name (``SampleNode``) or its FCS file
        name (``$FIL``, a path's file name also works); default the first sample with gates.
    name
        Template name (default: the file name without extension).

    Returns
    -------
    Template
        Gates in channel names ($PnN) on FlowJo's display scale per axis (see the module
        docstring), each dimension naming its compensation; the sample's matrix in
        ``comp_matrices``; populations in hierarchy order.

    Raises
    ------
    TemplateError
        Not a FlowJo 9 workspace, unsafe or unreadable XML, no such sample (or an ambiguous
        name), or a gate, axis or calibration table this module cannot convert.
    """
    path = Path(path)
    root = _root(path)
    d = _DIALECTS[root.get("version")]
    node = _pick_sample(root, d, sample, path)
    reader = _Reader(root, node, d, path)
    where_sample = f"{path}: sample {reader.label!r} ({_keyword(node, '$FIL')})"

    found: list[tuple[tuple[str, ...], Any]] = []

    def walk(el: Any, above: tuple[str, ...]) -> None:
        for pop in el.iterfind("Population"):
            here = (*above, pop.get(d.name) or pop.get("name") or "")
            if not here[-1]:
                raise TemplateError(f"{where_sample}: a population under "
                                    f"{'/'.join(above) or 'the sample'} has no name")
            found.append((here, pop))
            walk(pop, here)

    walk(node.find("SampleNode"), ())
    if not found:
        raise TemplateError(f"{where_sample}: the sample has no gates")
    paths = [p for p, _ in found]
    names = _qualified(paths)
    by_path = dict(zip(paths, names))
    populations = []
    for (here, pop), pname in zip(found, names):
        where = f"{where_sample}, gate {'/'.join(here)!r}"
        gate = reader.gate(pop, where)
        if isinstance(gate, tuple):
            op, refs = gate
            gate = BooleanGate(op=op, refs=tuple(
                (_resolve(r, here[:-1], paths, names, where), neg) for r, neg in refs))
        populations.append(Population(name=pname, parent=by_path.get(here[:-1]), gate=gate))
    c = reader.comp
    template = Template(
        name=name or path.stem, version="1", populations=populations, transforms={},
        compensation=c.ref, source=str(path),
        comp_matrices={c.ref: c.matrix} if c.matrix is not None else {},
        description=f"FlowJo {root.get('flowJoVersion', '9')} workspace {path.name}, sample "
                    f"{reader.label!r} ({_keyword(node, '$FIL')})",
    )
    return ordered_populations(template)
