"""The gating-template object model: dimensions, gates, populations, templates.

A :class:`Template` is a named, versioned hierarchy of :class:`Population` objects. Each
population has a unique name (its id), a parent (``None`` for the root) and a gate. Gates are
written in **marker names** (or channel names for imported gates) and in the transformed
coordinates the template declares for each marker. Adaptive gates keep a fixed default position
in ``gate`` and describe how to move it per sample in ``adaptive`` (see
:mod:`immunoprofile.gating.adaptive`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from immunoprofile.template.transforms import Identity, Transform

ROOT = "root"

#: Dimensions that are never compensated (a spillover matrix does not cover them).
SCATTER_AND_TIME = frozenset({"FSC-A", "FSC-H", "FSC-W", "SSC-A", "SSC-H", "SSC-W", "Time"})


@dataclass(frozen=True)
class Ratio:
    """A derived dimension ``A * (x - B) / (y - C)`` of two raw channels (GatingML fratio)."""

    numerator: str
    denominator: str
    A: float = 1.0
    B: float = 0.0
    C: float = 0.0


@dataclass(frozen=True)
class Dimension:
    """One axis of a gate.

    Attributes
    ----------
    marker
        Marker name (``CD4``) or channel name ($PnN) resolved through the panel; for a ratio
        dimension, the ratio's id.
    transform
        Transform of this axis; ``None`` means the template's transform for the marker.
    compensation
        ``None`` follows the template; ``"none"`` reads raw values; ``"file"`` the file's own
        spillover; any other string names a matrix in ``Template.comp_matrices``. Channels a
        matrix does not cover (scatter, time) are never compensated.
    ratio
        Set for a derived ratio dimension (computed from raw values, as GatingML says).
    """

    marker: str
    transform: Transform | None = None
    compensation: str | None = None
    ratio: Ratio | None = None

    def markers(self) -> tuple[str, ...]:
        """The markers (or channels) this dimension reads."""
        if self.ratio is not None:
            return (self.ratio.numerator, self.ratio.denominator)
        return (self.marker,)


@dataclass(frozen=True)
class Gate:
    """Base class of gates. ``dims`` are the axes; booleans have none."""

    dims: tuple[Dimension, ...] = ()

    @property
    def kind(self) -> str:
        return type(self).__name__.removesuffix("Gate").lower()

    def extent(self) -> list[tuple[float, float]]:
        """Per dimension, the [low, high] interval outside which no event can be inside."""
        return [(-np.inf, np.inf)] * len(self.dims)


@dataclass(frozen=True)
class RectangleGate(Gate):
    """Range (1-D) or rectangle (n-D): ``min <= x < max`` per dimension; None is open."""

    mins: tuple[float | None, ...] = ()
    maxs: tuple[float | None, ...] = ()
    complement: bool = False

    def extent(self) -> list[tuple[float, float]]:
        if self.complement:
            return super().extent()
        return [
            (-np.inf if lo is None else lo, np.inf if hi is None else hi)
            for lo, hi in zip(self.mins, self.maxs)
        ]


@dataclass(frozen=True)
class PolygonGate(Gate):
    """Polygon in two dimensions (winding-number interior, as GatingML and FlowKit)."""

    vertices: tuple[tuple[float, float], ...] = ()
    complement: bool = False

    def extent(self) -> list[tuple[float, float]]:
        if self.complement:
            return super().extent()
        v = np.asarray(self.vertices, dtype=float)
        return [(float(v[:, 0].min()), float(v[:, 0].max())),
                (float(v[:, 1].min()), float(v[:, 1].max()))]


@dataclass(frozen=True)
class EllipseGate(Gate):
    """Ellipse/ellipsoid: Mahalanobis distance² to ``mean`` ≤ ``distance_square``."""

    mean: tuple[float, ...] = ()
    covariance: tuple[tuple[float, ...], ...] = ()
    distance_square: float = 1.0

    def extent(self) -> list[tuple[float, float]]:
        cov = np.asarray(self.covariance, dtype=float)
        # The test (FlowUtils) is xᵀ·inv(cov)·x ≤ d², i.e. on the symmetric part of inv(cov):
        # the box is that form's. GatingML files carry non-symmetric or indefinite
        # "covariances" (the compliance suite's 3-D ellipsoid does): when the form is not
        # positive definite the region is unbounded, so no box applies.
        try:
            form = np.linalg.inv(cov)
        except np.linalg.LinAlgError:
            return super().extent()
        form = (form + form.T) / 2
        if np.any(np.linalg.eigvalsh(form) <= 0):
            return super().extent()
        half = np.sqrt(self.distance_square * np.diag(np.linalg.inv(form)))
        # A small relative pad: the extent only prefilters, the exact test follows.
        half = half * (1 + 1e-9) + 1e-12
        return [(m - h, m + h) for m, h in zip(self.mean, half)]


@dataclass(frozen=True)
class BooleanGate(Gate):
    """``and`` / ``or`` / ``not`` over other populations; ``refs`` are (population, negate)."""

    op: str = "and"
    refs: tuple[tuple[str, bool], ...] = ()


@dataclass(frozen=True)
class Population:
    """One node of the hierarchy.

    Attributes
    ----------
    name
        Unique within the template; it is the id that ``parent``, ``pct_of``, boolean gates
        and the subset table's ``population`` column use.
    parent
        The parent population's name, or ``None`` for a root population.
    gate
        Where the population lies within its parent (the default position for adaptive gates).
    pct_of
        Populations of the template it is also quoted as a percentage of (usually
        ancestors; any population, as FlowJo's frequency of any gate).
    mfi
        Markers whose median intensity (compensated, linear) is reported for this population.
    adaptive
        How to place the gate per sample (``None`` for a fixed gate).
    group
        Quadrant gates expand into one rectangle population per quadrant sharing a group name.
    description
        Free text for humans.
    if_missing
        ``"not_measured"`` (default): when the file lacks one of the gate's markers, the
        population and its descendants are reported as not measured. ``"pass"``: the gate is
        skipped and its parent's events pass through (for optional steps such as singlets on
        cytometers that export no FSC-H).
    """

    name: str
    parent: str | None
    gate: Gate
    pct_of: tuple[str, ...] = ()
    mfi: tuple[str, ...] = ()
    adaptive: dict[str, Any] | None = field(default=None, hash=False, compare=True)
    group: str | None = None
    description: str = ""
    if_missing: str = "not_measured"


# The reference population of templates that declare none (see Template.reference).
LYMPHOCYTE_REFERENCE = "Live lymphocytes"


@dataclass
class Template:
    """A reusable gating template.

    Attributes
    ----------
    name, version, description
        Identity; ``name`` and ``version`` are written into every result row.
    populations
        In an order where parents (and boolean references) come first.
    transforms
        ``{marker: Transform}``; the key ``"default"`` applies to markers not listed.
    compensation
        ``"file"`` (the FCS file's own spillover keyword), ``"none"``, a path to a matrix file
        (CSV, labelled by channel or marker), or the name of a matrix in ``comp_matrices``.
    comp_matrices
        Named spillover matrices (``pandas.DataFrame``, rows fluorochromes/detectors, columns
        detectors), as GatingML files carry them.
    required_markers, optional_markers
        What a file must carry; populations needing an absent optional marker are reported as
        not measured.
    source
        Where the template was read from (for messages and provenance).
    qc
        The template's ``qc:`` section: which acquisition-QC checks run for it (``margin``,
        ``flow_rate``, ``signal``; all on when the section is empty). ``None`` when it has no
        such section, as templates imported from FlowJo or GatingML do: they reproduce the
        source software's counts, so QC runs for them only when asked (``--qc``).
    reference
        The template's lymphocyte population (YAML ``reference_population``): dual-platform
        absolute counts scale by it, and event AnnData draws from it by default. Templates
        that declare none use a population named ``Live lymphocytes`` when they have one
        (:attr:`reference_population`).
    """

    name: str
    version: str = "1"
    populations: list[Population] = field(default_factory=list)
    transforms: dict[str, Transform] = field(default_factory=dict)
    compensation: str = "file"
    required_markers: tuple[str, ...] = ()
    optional_markers: tuple[str, ...] = ()
    description: str = ""
    source: str = ""
    qc: dict[str, Any] | None = None
    comp_matrices: dict[str, Any] = field(default_factory=dict, repr=False)
    reference: str | None = None

    @property
    def reference_population(self) -> str | None:
        """The lymphocyte reference: the declared one, else ``Live lymphocytes`` when the
        template has that population (templates written before the declaration existed),
        else None (no dual-platform absolute counts)."""
        if self.reference is not None:
            return self.reference
        return LYMPHOCYTE_REFERENCE if LYMPHOCYTE_REFERENCE in self else None

    @property
    def wants_qc(self) -> bool:
        """Whether acquisition QC runs for this template by default (it has a ``qc:`` section)."""
        return self.qc is not None

    def __iter__(self) -> Iterator[Population]:
        return iter(self.populations)

    def __len__(self) -> int:
        return len(self.populations)

    def __contains__(self, name: object) -> bool:
        return any(p.name == name for p in self.populations)

    def __getitem__(self, name: str) -> Population:
        for p in self.populations:
            if p.name == name:
                return p
        raise KeyError(f"template {self.name} has no population {name!r}")

    @property
    def population_names(self) -> list[str]:
        return [p.name for p in self.populations]

    def transform_for(self, dim: Dimension) -> Transform:
        """The transform an axis uses: its own, the marker's, or the template default.

        Parameters
        ----------
        dim
            A gate dimension.

        Returns
        -------
        Transform
            The dimension's transform, else the template's for its marker, else the
            ``"default"`` one, else :class:`Identity`.
        """
        if dim.transform is not None:
            return dim.transform
        if dim.marker in self.transforms:
            return self.transforms[dim.marker]
        return self.transforms.get("default", Identity())

    def markers(self) -> list[str]:
        """Every marker the gates read, MFIs included, in first-use order."""
        seen: dict[str, None] = {}
        for p in self.populations:
            for d in p.gate.dims:
                for m in d.markers():
                    seen.setdefault(m, None)
            for m in p.mfi:
                seen.setdefault(m, None)
        return list(seen)

    def children(self, name: str | None) -> list[Population]:
        """Populations gated directly on ``name``.

        Parameters
        ----------
        name
            A population name, or None for the root populations.

        Returns
        -------
        list of Population
            The children, in template order.
        """
        return [p for p in self.populations if p.parent == name]

    def ancestors(self, name: str) -> list[str]:
        """Names from the parent up to the root.

        Parameters
        ----------
        name
            A population of the template.

        Returns
        -------
        list of str
            Parent first, root population last; empty for a root population.

        Raises
        ------
        KeyError
            No such population.
        """
        out = []
        parent = self[name].parent
        while parent is not None:
            out.append(parent)
            parent = self[parent].parent
        return out

    def depth(self, name: str) -> int:
        """How many gates lie above a population.

        Parameters
        ----------
        name
            A population of the template.

        Returns
        -------
        int
            0 for a root population.
        """
        return len(self.ancestors(name))

    def dependencies(self, pop: Population) -> list[str]:
        """Populations that must be evaluated before ``pop``.

        Parameters
        ----------
        pop
            A population.

        Returns
        -------
        list of str
            Its parent, the populations a Boolean gate refers to and an adaptive gate's
            ``reference`` or ``among`` (direct dependencies only, possibly repeated).
        """
        deps = [pop.parent] if pop.parent else []
        if isinstance(pop.gate, BooleanGate):
            deps += [ref for ref, _ in pop.gate.refs]
        for key in ("reference", "among"):
            if pop.adaptive and pop.adaptive.get(key):
                deps.append(str(pop.adaptive[key]))
        return deps

    def needed_markers(self, name: str) -> set[str]:
        """Markers the population and its ancestors' gates read.

        Parameters
        ----------
        name
            A population of the template.

        Returns
        -------
        set of str
            Markers of its gate and its ancestors' gates, following Boolean gates' references
            (MFI markers and adaptive references are not included).
        """
        out: set[str] = set()
        for n in [name, *self.ancestors(name)]:
            pop = self[n]
            for d in pop.gate.dims:
                out.update(d.markers())
            if isinstance(pop.gate, BooleanGate):
                for ref, _ in pop.gate.refs:
                    out |= self.needed_markers(ref)
        return out

    def with_populations(self, populations: Iterable[Population]) -> Template:
        """A copy with another population list (e.g. adaptive gates frozen or placed).

        Parameters
        ----------
        populations
            The new populations, in evaluation order.

        Returns
        -------
        Template
            A new template; every other field is shared with this one.
        """
        return replace(self, populations=list(populations))
