"""Reading, validating and writing gating templates as YAML.

The format is documented in ``gating_templates/README.md``. Validation collects every problem
before raising, and each message points at the offending entry (``populations[3] 'Treg'``).
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from immunoprofile._atomic import file_name_problem
from immunoprofile._memo import RecentResults
from immunoprofile.errors import TemplateError
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
from immunoprofile.template.transforms import Transform, transform_from_dict

_GATE_KINDS = ("range", "rectangle", "polygon", "ellipse", "quadrant", "and", "or", "not")
_POP_KEYS = {"name", "parent", "gate", "pct_of", "mfi", "adaptive", "description",
             "if_missing"}
_TOP_KEYS = {"name", "version", "description", "compensation", "markers", "transforms",
             "populations", "qc", "matrices", "reference_population"}


class _Problems(list):
    def add(self, where: str, what: str) -> None:
        self.append(f"{where}: {what}")


def shipped_templates_dir() -> Path:
    """The folder of templates shipped with the package (``gating_templates/`` in the repo)."""
    packaged = Path(str(resources.files("immunoprofile"))) / "gating_templates"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "gating_templates"


def shipped_templates() -> dict[str, Path]:
    """``{name: path}`` of the shipped templates (``treg``, ``bcell``, ``plasma`` …)."""
    folder = shipped_templates_dir()
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))} if folder.is_dir() else {}


def template_hash(template: Template) -> str:
    """A stable SHA-256 of the template's YAML form (what --resume compares).

    Parameters
    ----------
    template
        The template; its :func:`template_to_dict` form is dumped with sorted keys, so the
        hash does not depend on the source file's layout or comments.

    Returns
    -------
    str
        The hexadecimal digest.
    """
    # Every sample of a batch asks for the same templates' hashes: the YAML dump (~5 ms) is
    # done once per template content, found by its pickle (~0.1 ms; equal for equal content).
    content = hashlib.sha256(pickle.dumps(template)).digest()
    return _HASHES.get(content, lambda: hashlib.sha256(yaml.safe_dump(
        template_to_dict(template), sort_keys=True).encode()).hexdigest())


_HASHES: RecentResults[str] = RecentResults(256)


def load_template(source: str | Path | Template) -> Template:
    """Load a template from a YAML file or by the name of a shipped template.

    Parameters
    ----------
    source
        A path to a ``.yaml`` file, the name of a shipped template (``"treg"``), or a
        :class:`Template` (returned unchanged).

    Raises
    ------
    TemplateError
        The file is missing or malformed; the message lists every problem found.
    """
    if isinstance(source, Template):
        return source
    path = Path(source)
    if not path.exists():
        shipped = shipped_templates()
        if str(source) in shipped:
            path = shipped[str(source)]
        else:
            raise TemplateError(
                f"template {source!r} is neither a file nor a shipped template "
                f"(shipped: {', '.join(shipped) or 'none'})"
            )
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"template {path}: cannot be read ({exc})") from exc
    except yaml.YAMLError as exc:
        raise TemplateError(f"template {path}: not valid YAML ({exc})") from exc
    return template_from_dict(data, source=str(path))


def validate_template(source: str | Path) -> Template:
    """Load and fully validate a template; alias of :func:`load_template` for the CLI.

    Parameters
    ----------
    source
        A path to a ``.yaml`` file or the name of a shipped template.

    Returns
    -------
    Template
        The validated template.

    Raises
    ------
    TemplateError
        The file is missing or malformed; the message lists every problem found.
    """
    return load_template(source)


def _as_float(value: Any, where: str, problems: _Problems) -> float | None:
    if value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        problems.add(where, f"{value!r} is not a number")
        return None
    if np.isnan(out):
        problems.add(where, "NaN is not a coordinate")
    return out


def _dimension(spec: Any, where: str, problems: _Problems) -> Dimension | None:
    if isinstance(spec, str):
        return Dimension(marker=spec)
    if isinstance(spec, Mapping):
        transform = None
        if "transform" in spec:
            try:
                transform = transform_from_dict(spec["transform"], where=where)
            except TemplateError as exc:
                problems.append(str(exc))
        compensation = spec.get("compensation")
        compensation = None if compensation is None else str(compensation)
        if "ratio" in spec:
            pair = spec["ratio"]
            if not (isinstance(pair, list | tuple) and len(pair) == 2):
                problems.add(where, "ratio needs two channels: ratio: [X, Y]")
                return None
            ratio = Ratio(str(pair[0]), str(pair[1]), *(
                _as_float(spec.get(k, d), f"{where}.{k}", problems) or d
                for k, d in (("A", 1.0), ("B", 0.0), ("C", 0.0))
            ))
            name = str(spec.get("id", f"{pair[0]}/{pair[1]}"))
            return Dimension(marker=name, transform=transform, compensation=compensation,
                             ratio=ratio)
        if "marker" not in spec:
            problems.add(where, "a dimension needs 'marker' (or 'ratio')")
            return None
        return Dimension(marker=str(spec["marker"]), transform=transform,
                         compensation=compensation)
    problems.add(where, f"a dimension is a marker name or a mapping, not {spec!r}")
    return None


def _dims(specs: Any, where: str, problems: _Problems, n: int | None = None) -> list[Dimension]:
    if not isinstance(specs, list | tuple) or not specs:
        problems.add(where, "'dims' must be a non-empty list of markers")
        return []
    if n is not None and len(specs) != n:
        problems.add(where, f"needs exactly {n} dims, got {len(specs)}")
    dims = [_dimension(s, f"{where}.dims[{i}]", problems) for i, s in enumerate(specs)]
    return [d for d in dims if d is not None]


def _refs(spec: Any, where: str, problems: _Problems) -> tuple[tuple[str, bool], ...]:
    items = spec if isinstance(spec, list | tuple) else [spec]
    refs = []
    for item in items:
        if not isinstance(item, str) or not item.strip("! "):
            problems.add(where, f"boolean gates list population names, got {item!r}")
            continue
        negate = item.startswith("!")
        refs.append((item.lstrip("! ").strip(), negate))
    return tuple(refs)


def _range_gate(spec: Any, where: str, problems: _Problems, complement: bool) -> Gate | None:
    if not isinstance(spec, Mapping) or not spec:
        problems.add(where, "range/rectangle takes {MARKER: [min, max], ...}")
        return None
    if "dims" in spec and "bounds" in spec:
        # Long form, for dimensions that carry their own transform (imported gates).
        long_dims = _dims(spec["dims"], where, problems)
        bounds = spec["bounds"]
        if not isinstance(bounds, list) or len(bounds) != len(long_dims):
            problems.add(where, "'bounds' needs one [min, max] per dimension")
            return None
        gate = _range_gate({f"#{i}": b for i, b in enumerate(bounds)}, where, problems,
                           complement)
        return RectangleGate(dims=tuple(long_dims), mins=gate.mins, maxs=gate.maxs,
                             complement=complement) if gate else None
    dims, mins, maxs = [], [], []
    for marker, bounds in spec.items():
        if not (isinstance(bounds, list | tuple) and len(bounds) == 2):
            problems.add(f"{where}.{marker}", "bounds are [min, max] (null for open)")
            continue
        lo = _as_float(bounds[0], f"{where}.{marker}", problems)
        hi = _as_float(bounds[1], f"{where}.{marker}", problems)
        if lo is None and hi is None:
            problems.add(f"{where}.{marker}", "at least one of min and max is needed")
        if lo is not None and hi is not None and lo >= hi:
            problems.add(f"{where}.{marker}", f"min {lo} is not below max {hi}")
        dims.append(Dimension(marker=str(marker)))
        mins.append(lo)
        maxs.append(hi)
    return RectangleGate(dims=tuple(dims), mins=tuple(mins), maxs=tuple(maxs),
                         complement=complement)


def _polygon_gate(spec: Any, where: str, problems: _Problems, complement: bool) -> Gate | None:
    if not isinstance(spec, Mapping):
        problems.add(where, "polygon takes {dims: [X, Y], vertices: [[x, y], ...]}")
        return None
    dims = _dims(spec.get("dims"), where, problems, n=2)
    vertices = spec.get("vertices")
    if not isinstance(vertices, list) or len(vertices) < 3:
        problems.add(where, "a polygon needs at least 3 vertices [[x, y], ...]")
        return None
    pts = []
    for i, v in enumerate(vertices):
        if not (isinstance(v, list | tuple) and len(v) == 2):
            problems.add(f"{where}.vertices[{i}]", f"a vertex is [x, y], got {v!r}")
            continue
        x = _as_float(v[0], f"{where}.vertices[{i}]", problems)
        y = _as_float(v[1], f"{where}.vertices[{i}]", problems)
        pts.append((x or 0.0, y or 0.0))
    return PolygonGate(dims=tuple(dims), vertices=tuple(pts), complement=complement)


def _ellipse_gate(spec: Any, where: str, problems: _Problems) -> Gate | None:
    if not isinstance(spec, Mapping):
        problems.add(where, "ellipse takes {dims, center, covariance, distance_square} "
                            "or {dims, center, half_axes, angle}")
        return None
    dims = _dims(spec.get("dims"), where, problems)
    center = spec.get("center", spec.get("mean"))
    if not isinstance(center, list) or len(center) != len(dims):
        problems.add(where, "'center' needs one coordinate per dimension")
        return None
    mean = tuple(_as_float(c, f"{where}.center", problems) or 0.0 for c in center)
    if "covariance" in spec:
        cov = np.asarray(spec["covariance"], dtype=float)
        d2 = _as_float(spec.get("distance_square", 1.0), f"{where}.distance_square", problems)
    elif "half_axes" in spec and len(dims) == 2:
        a, b = (float(x) for x in spec["half_axes"])
        theta = np.deg2rad(float(spec.get("angle", 0.0)))
        rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        cov = rot @ np.diag([a * a, b * b]) @ rot.T
        d2 = 1.0
    else:
        problems.add(where, "give 'covariance' (+ distance_square) or, in 2-D, 'half_axes'")
        return None
    if cov.shape != (len(dims), len(dims)) or not np.allclose(cov, cov.T):
        problems.add(where, "covariance must be a symmetric matrix, one row per dimension")
        return None
    if np.any(np.linalg.eigvalsh(cov) <= 0) or not d2 or d2 <= 0:
        problems.add(where, "covariance must be positive definite and distance_square > 0")
        return None
    return EllipseGate(dims=tuple(dims), mean=mean,
                       covariance=tuple(tuple(r) for r in cov.tolist()), distance_square=d2)


def _quadrants(spec: Any, where: str, problems: _Problems) -> list[tuple[str, Gate]]:
    if not isinstance(spec, Mapping):
        problems.add(where, "quadrant takes {dims: [X, Y], dividers: [x, y], quadrants: "
                            "{NAME: [+, -], ...}}")
        return []
    dims = _dims(spec.get("dims"), where, problems)
    dividers = spec.get("dividers")
    quads = spec.get("quadrants")
    if not isinstance(dividers, list) or len(dividers) != len(dims):
        problems.add(where, "'dividers' needs one value per dimension")
        return []
    cuts = [_as_float(d, f"{where}.dividers", problems) for d in dividers]
    if not isinstance(quads, Mapping) or not quads:
        problems.add(where, "'quadrants' maps names to signs, e.g. 'Naive B: [+, -]'")
        return []
    out = []
    for name, signs in quads.items():
        signs = [str(s).strip() for s in (signs if isinstance(signs, list) else [signs])]
        if len(signs) != len(dims) or any(s not in {"+", "-"} for s in signs):
            problems.add(f"{where}.quadrants.{name}", "one '+' or '-' per dimension")
            continue
        mins = tuple(c if s == "+" else None for s, c in zip(signs, cuts))
        maxs = tuple(c if s == "-" else None for s, c in zip(signs, cuts))
        out.append((str(name), RectangleGate(dims=tuple(dims), mins=mins, maxs=maxs)))
    return out


def _gate(spec: Any, where: str, problems: _Problems) -> tuple[str, Any] | None:
    if not isinstance(spec, Mapping):
        problems.add(where, f"'gate' must be a mapping with one of {list(_GATE_KINDS)}")
        return None
    kinds = [k for k in spec if k in _GATE_KINDS]
    if len(kinds) != 1:
        problems.add(where, f"'gate' needs exactly one of {list(_GATE_KINDS)}, got {list(spec)}")
        return None
    kind = kinds[0]
    body = spec[kind]
    complement = bool(spec.get("complement", False))
    if kind in ("range", "rectangle"):
        return kind, _range_gate(body, f"{where}.{kind}", problems, complement)
    if kind == "polygon":
        return kind, _polygon_gate(body, f"{where}.polygon", problems, complement)
    if kind == "ellipse":
        return kind, _ellipse_gate(body, f"{where}.ellipse", problems)
    if kind == "quadrant":
        return kind, _quadrants(body, f"{where}.quadrant", problems)
    refs = _refs(body, f"{where}.{kind}", problems)
    if kind == "not" and len(refs) != 1:
        problems.add(f"{where}.not", "'not' takes exactly one population")
    return kind, BooleanGate(op=kind, refs=refs)


def gate_from_dict(spec: Any, *, where: str = "gate") -> Gate:
    """One gate from its template YAML form (``{polygon: {...}}``, ``{range: {CD25: [2, null]}}``…).

    Parameters
    ----------
    spec
        The mapping under a population's ``gate:`` key (quadrants are not one gate and are
        refused).
    where
        Names the gate in error messages (a file and entry).

    Returns
    -------
    Gate
        The gate.

    Raises
    ------
    TemplateError
        The mapping is not a valid single gate; the message lists every problem.
    """
    problems = _Problems()
    parsed = _gate(spec, where, problems)
    if parsed is not None and parsed[0] == "quadrant":
        problems.add(where, "a quadrant is four gates: give the one quadrant's rectangle")
    if problems or parsed is None or parsed[1] is None:
        raise TemplateError("invalid gate:\n  " + "\n  ".join(problems or [where]))
    return parsed[1]


def _matrices(spec: Any, problems: _Problems) -> dict[str, pd.DataFrame]:
    """Named spillover matrices: ``{id: {detectors: [...], fluorochromes: [...], values}}``."""
    out: dict[str, pd.DataFrame] = {}
    if not isinstance(spec, Mapping):
        problems.add("matrices", "expected {ID: {detectors, values[, fluorochromes]}}")
        return out
    for mid, body in spec.items():
        where = f"matrices.{mid}"
        try:
            detectors = [str(d) for d in body["detectors"]]
            values = np.asarray(body["values"], dtype=float)
            rows = [str(f) for f in body.get("fluorochromes", detectors)]
        except (KeyError, TypeError, ValueError) as exc:
            problems.add(where, f"needs 'detectors' and numeric 'values' ({exc})")
            continue
        if values.shape != (len(rows), len(detectors)):
            problems.add(where, f"values are {values.shape}, expected "
                                f"{len(rows)} x {len(detectors)}")
            continue
        out[str(mid)] = pd.DataFrame(values, index=rows, columns=detectors)
    return out


def _str_tuple(value: Any, where: str, problems: _Problems) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    problems.add(where, f"expected a name or a list of names, got {value!r}")
    return ()


def template_from_dict(data: Any, *, source: str = "<dict>") -> Template:
    """Build and validate a :class:`Template` from its YAML form (see the module docstring).

    Parameters
    ----------
    data
        The parsed YAML: a mapping with ``name``, ``populations`` and the optional keys.
    source
        Where it came from: named in messages, kept as the template's ``source`` (relative
        matrix paths resolve against its folder) and, without ``name``, its stem names it.

    Returns
    -------
    Template
        The validated template, populations in hierarchy order.

    Raises
    ------
    TemplateError
        Every problem found, listed in one message.
    """
    problems = _Problems()
    if not isinstance(data, Mapping):
        raise TemplateError(f"template {source}: expected a mapping at the top level")
    for key in set(data) - _TOP_KEYS:
        problems.add("top level", f"unknown key {key!r} (allowed: {sorted(_TOP_KEYS)})")
    name = str(data.get("name") or Path(source).stem)
    if file_name_problem(name):
        problems.add("name", f"{name!r} {file_name_problem(name)}: a template's name names "
                     "its files in a run (plots, templates/); use letters, digits, '_' and '-'")
    version = str(data.get("version", "1"))
    transforms: dict[str, Transform] = {}
    raw_transforms = data.get("transforms") or {}
    if not isinstance(raw_transforms, Mapping):
        problems.add("transforms", "expected {MARKER: transform, default: transform}")
        raw_transforms = {}
    for marker, spec in raw_transforms.items():
        try:
            transforms[str(marker)] = transform_from_dict(spec, where=f"transforms.{marker}")
        except TemplateError as exc:
            problems.append(str(exc))
    matrices = _matrices(data.get("matrices") or {}, problems)
    markers = data.get("markers") or {}
    if isinstance(markers, list):
        markers = {"required": markers}
    required = _str_tuple(markers.get("required"), "markers.required", problems)
    optional = _str_tuple(markers.get("optional"), "markers.optional", problems)

    populations: list[Population] = []
    broken: set[str] = set()
    raw_pops = data.get("populations")
    if not isinstance(raw_pops, list) or not raw_pops:
        problems.add("populations", "a template needs a non-empty list of populations")
        raw_pops = []
    for i, entry in enumerate(raw_pops):
        label = f"populations[{i}]"
        if not isinstance(entry, Mapping) or not entry.get("name"):
            problems.add(label, "each population needs a 'name'")
            continue
        pname = str(entry["name"])
        where = f"{label} {pname!r}"
        for key in set(entry) - _POP_KEYS:
            problems.add(where, f"unknown key {key!r} (allowed: {sorted(_POP_KEYS)})")
        parent = entry.get("parent")
        parent = None if parent in (None, "", "root") else str(parent)
        pct_of = _str_tuple(entry.get("pct_of"), f"{where}.pct_of", problems)
        mfi = _str_tuple(entry.get("mfi"), f"{where}.mfi", problems)
        adaptive = entry.get("adaptive")
        if adaptive is not None and not isinstance(adaptive, Mapping):
            problems.add(f"{where}.adaptive", "expected a mapping (method and its settings)")
            adaptive = None
        parsed = _gate(entry.get("gate"), f"{where}.gate", problems)
        if parsed is None or parsed[1] is None:
            broken.add(pname)  # reported already; keep references to it from cascading
            continue
        kind, gate = parsed
        if_missing = str(entry.get("if_missing", "not_measured"))
        if if_missing not in ("not_measured", "pass"):
            problems.add(f"{where}.if_missing", "use 'not_measured' or 'pass'")
        common = dict(parent=parent, pct_of=pct_of, mfi=mfi, if_missing=if_missing,
                      description=str(entry.get("description", "")))
        if kind == "quadrant":
            for qname, qgate in gate:
                populations.append(Population(name=qname, gate=qgate, group=pname,
                                              adaptive=dict(adaptive) if adaptive else None,
                                              **common))
        elif gate is not None:
            populations.append(Population(name=pname, gate=gate,
                                          adaptive=dict(adaptive) if adaptive else None,
                                          **common))
    template = Template(
        name=name, version=version, populations=populations, transforms=transforms,
        compensation=str(data.get("compensation", "file")), required_markers=required,
        optional_markers=optional, description=str(data.get("description", "")),
        source=source, qc=None if "qc" not in data else dict(data.get("qc") or {}),
        comp_matrices=matrices,
        reference=None if data.get("reference_population") is None
        else str(data["reference_population"]),
    )
    if template.reference is not None and template.reference not in template \
            and template.reference not in broken:
        problems.add("reference_population", f"{template.reference!r} is not a population of "
                     "the template: name one of its populations")
    if not broken:
        _check_structure(template, problems, declared=bool(required or optional))
    if problems:
        raise TemplateError(
            f"template {source} has {len(problems)} problem(s):\n  - " + "\n  - ".join(problems)
        )
    return ordered_populations(template)


def _check_structure(t: Template, problems: _Problems, *, declared: bool) -> None:
    names = [p.name for p in t.populations]
    seen: set[str] = set()
    for p in t.populations:
        if p.name in seen:
            problems.add(f"population {p.name!r}", "duplicate name (names are ids: make it unique)")
        seen.add(p.name)
    for p in t.populations:
        where = f"population {p.name!r}"
        if p.parent is not None and p.parent not in seen:
            problems.add(where, f"unknown parent {p.parent!r} (known: {', '.join(names)})")
        if isinstance(p.gate, BooleanGate):
            for ref, _ in p.gate.refs:
                if ref not in seen:
                    problems.add(where, f"boolean gate refers to unknown population {ref!r}")
        for ref in p.pct_of:
            if ref not in seen:
                problems.add(f"{where}.pct_of", f"unknown population {ref!r}")
        for key in ("reference", "among"):
            ref = (p.adaptive or {}).get(key)
            if ref is not None and str(ref) not in names:
                problems.add(f"{where}.adaptive.{key}",
                             f"unknown population {ref!r} (known: {', '.join(names)})")
        if (p.adaptive or {}).get("among") is not None \
                and p.adaptive.get("method") not in ("valley", "tail"):
            problems.add(f"{where}.adaptive.among", "only valley and tail cuts are found "
                         f"among another population, not {p.adaptive.get('method')!r}")
    if t.compensation not in ("file", "none", *t.comp_matrices) \
            and not Path(t.compensation).suffix:
        problems.add("compensation", "use 'file', 'none' or a path to a matrix file")
    _check_cycles(t, problems)
    used = set(t.markers())
    for marker in t.transforms:
        if marker != "default" and declared and marker not in set(t.required_markers) | set(
                t.optional_markers):
            problems.add(f"transforms.{marker}", "marker is not declared under 'markers'")
    if declared:
        known = set(t.required_markers) | set(t.optional_markers)
        for marker in sorted(used - known):
            problems.add("markers", f"gate or mfi uses marker {marker!r} that is not declared "
                                    "under markers.required or markers.optional")


def _check_cycles(t: Template, problems: _Problems) -> None:
    deps = {p.name: [d for d in t.dependencies(p) if d] for p in t.populations}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        if state.get(node) == 2 or node not in deps:
            return
        if state.get(node) == 1:
            cycle = [*stack[stack.index(node):], node]
            problems.add(f"population {node!r}", "cycle: " + " -> ".join(cycle))
            return
        state[node] = 1
        for d in deps[node]:
            visit(d, [*stack, node])
        state[node] = 2

    for name in deps:
        visit(name, [])


def ordered_populations(t: Template) -> Template:
    """Parents and boolean references first, otherwise in file order."""
    done: dict[str, Population] = {}
    pending = list(t.populations)
    while pending:
        for p in pending:
            if all(d in done for d in t.dependencies(p)):
                done[p.name] = p
                pending.remove(p)
                break
        else:  # unknown names or a cycle, reported by the checks: keep the file's order
            done.update((p.name, p) for p in pending)
            break
    t.populations = list(done.values())
    return t


# The writing side lives in yaml_write; these names stay importable from here.
from immunoprofile.template.yaml_write import (  # noqa: E402
    template_to_dict,
    template_yaml,
    write_template,
)

__all__ = ["load_template", "shipped_templates", "shipped_templates_dir", "template_from_dict",
           "template_hash", "template_to_dict", "template_yaml", "validate_template",
           "write_template"]
