"""Gate one sample with one template: compensate → transform → (QC) → gates → counts.

The result's membership equals FlowKit's ``GatingStrategy.gate_sample`` on the same gates
(tests compare them event for event); speed comes from doing less: a population's gate only
looks at its parent's events, each transformed channel is computed once and only where a gate
needs it, and range tests on monotonic transforms are decided in linear space.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from immunoprofile.errors import FCSError, TemplateError
from immunoprofile.gating.adaptive import Placer
from immunoprofile.gating.events import EventSpace
from immunoprofile.gating.membership import inside, inside_together, members
from immunoprofile.gating.prepared import (  # required_markers: its public path is here too
    PreparedSample,
    prepare_sample,
    required_markers,  # noqa: F401
)
from immunoprofile.gating.rows import RARE_THRESHOLD, subset_rows
from immunoprofile.io.fcs import FCSSample
from immunoprofile.template.model import (
    BooleanGate,
    EllipseGate,
    PolygonGate,
    Population,
    RectangleGate,
    Template,
)
from immunoprofile.template.yaml_io import load_template


def slug(name: str) -> str:
    """A column-safe form of a population name: ``"CD4+ T cells"`` → ``"cd4pos_t_cells"``.

    Parameters
    ----------
    name
        Population name; ``+`` becomes ``pos`` and ``-`` or ``−`` becomes ``neg``.

    Returns
    -------
    str
        Lower-case letters, digits and underscores (``"population"`` when nothing is left).
    """
    text = name.replace("+", "pos").replace("−", "neg").replace("-", "neg ")
    text = re.sub(r"[^0-9a-zA-Z]+", "_", text).strip("_").lower()
    return text or "population"


@dataclass
class GatingResult:
    """What gating one sample with one template gives.

    Attributes
    ----------
    sample_id
        The sample's id (the file stem unless given).
    template
        The template as applied (adaptive gates at the positions found for this sample).
    counts
        One row per population: ``population``, ``parent``, ``count``, ``parent_count``,
        ``pct_parent``, ``pct_of_<ref>`` for each declared reference, ``mfi_median_<marker>``
        (median of compensated linear values), ``measured`` and ``note``.
    membership
        ``{population: boolean array over all events of the file}``.
    n_events
        Events in the file.
    channels
        ``{marker: $PnN}`` as resolved for this file.
    not_measured
        ``{population: reason}`` for populations whose optional markers the file lacks.
    gate_positions
        Per adaptive population, where its gate landed and whether it fell back (next issue).
    qc
        Acquisition-QC summary for the sample (empty when QC is off).
    path
        The FCS file gated.
    prepared
        The :class:`~immunoprofile.gating.prepared.PreparedSample` gating read (its
        ``EventSpace`` serves the kept events and plots); not compared, not shown.
    overridden
        Populations whose gate a per-sample override replaced (:mod:`immunoprofile.overrides`).
    """

    sample_id: str
    template: Template
    counts: pd.DataFrame
    membership: dict[str, np.ndarray]
    n_events: int
    channels: dict[str, str] = field(default_factory=dict)
    not_measured: dict[str, str] = field(default_factory=dict)
    gate_positions: dict[str, dict[str, Any]] = field(default_factory=dict)
    qc: dict[str, Any] = field(default_factory=dict)
    path: str = ""
    prepared: PreparedSample | None = field(default=None, repr=False, compare=False)
    overridden: tuple[str, ...] = ()

    def to_table(self, metadata: Mapping[str, Any] | None = None, *,
                 rare_threshold: int = RARE_THRESHOLD,
                 file_sha256: str | None = None) -> pd.DataFrame:
        """This sample's rows of the subset table, exactly as a batch run writes them.

        Parameters
        ----------
        metadata
            The sample's sheet row (``sample_id``, ``patient_id``, ``arm``, ``timepoint``,
            ``lymphocytes_per_ul`` for absolute counts…); default: the sample id only.
        rare_threshold
            Counts below it are flagged ``flag_rare`` (the batch's ``--rare-threshold``).
        file_sha256
            The file's digest (computed from :attr:`path` when not given).

        Returns
        -------
        pandas.DataFrame
            One row per population, columns as documented (``immunoprofile schema``).
        """
        return subset_rows(self, metadata, rare_threshold=rare_threshold,
                           file_sha256=file_sha256)

    def __repr__(self) -> str:
        return (f"GatingResult({self.sample_id!r}, template={self.template.name!r}, "
                f"{len(self.membership)} populations, {self.n_events} events)")


def pct_of_column(reference: str) -> str:
    """The subset table's column of a population's percentage of ``reference``
    (``pct_of_<slug>``, a template's ``pct_of``)."""
    return f"pct_of_{slug(reference)}"


def _boolean(gate: BooleanGate, membership: dict[str, np.ndarray]) -> np.ndarray:
    arrays = [~membership[r] if neg else membership[r] for r, neg in gate.refs]
    if gate.op == "not":
        return ~arrays[0]
    if gate.op == "or":
        return np.logical_or.reduce(arrays)
    return np.logical_and.reduce(arrays)


def gate_sample(
    sample: FCSSample | PreparedSample | str | Path,
    template: Template | str | Path | None = None,
    *,
    sample_id: str | None = None,
    mapping: dict[str, str] | None = None,
    event_mask: np.ndarray | None = None,
    adaptive: bool = True,
) -> GatingResult:
    """Compensate, transform and gate one sample with one template.

    Parameters
    ----------
    sample
        An :class:`~immunoprofile.io.fcs.FCSSample`, a path to an FCS file, or a
        :class:`~immunoprofile.gating.prepared.PreparedSample` (whose template is used).
    template
        A :class:`~immunoprofile.template.Template`, a YAML path or a shipped template name
        (required unless ``sample`` is prepared).
    sample_id
        Id written into the result (default: the file name without extension).
    mapping
        Explicit ``{marker: channel}`` for this file's panel (see :mod:`immunoprofile.panel`).
    event_mask
        Events allowed into the root populations (e.g. those passing acquisition QC); all
        events by default.
    adaptive
        Place adaptive gates from this sample's data (default); ``False`` freezes them at
        their default positions.

    Returns
    -------
    GatingResult
        Counts table and per-population membership; ``result.prepared`` keeps the prepared
        sample for the kept events and plots.

    Raises
    ------
    PanelError
        The file lacks a required marker ("template treg needs CD25, file … has …").
    """
    if isinstance(sample, PreparedSample):
        prepared = sample
        named = None if template is None else load_template(template).name
        if named is not None and named != prepared.template.name:
            raise TemplateError(f"the sample was prepared for template "
                                f"{prepared.template.name!r}, not {named!r}")
    else:
        if template is None:
            raise TemplateError("gate_sample needs a template (a Template, YAML path or "
                                "shipped name) unless the sample is prepared")
        prepared = prepare_sample(sample, template, mapping=mapping)
    sample, template, space = prepared.sample, prepared.template, prepared.space
    sample_id = sample_id or Path(sample.path).stem
    skipped, passed = prepared.not_measured, prepared.passed

    n = sample.n_events
    if n == 0:
        raise FCSError(f"{Path(sample.path).name} holds no events ($TOT=0): nothing to gate; "
                       "check the acquisition or the export")
    root = np.ones(n, bool) if event_mask is None else np.asarray(event_mask, bool)
    finite = sample.finite_events()
    if finite is not None:  # NaN/inf events would reach compensation and every gate
        root = root & finite
    membership: dict[str, np.ndarray] = {}
    placer = Placer(space, membership)
    positions: dict[str, dict[str, Any]] = {}
    applied: list[Population] = []
    # Event numbers per parent, found once for all its children (a root with many gates
    # asked for the same million indices each time).
    parent_idx: dict[str | None, np.ndarray] = {}
    children_left = Counter(p.parent for p in template.populations
                            if not isinstance(p.gate, BooleanGate))
    # Sibling gates the template fixes (not placed per sample) are decided together, in one
    # pass over their parent's events per kind (each pass reads every event's row).
    fixed: dict[str | None, list[Population]] = {}
    for p in template.populations:
        if (isinstance(p.gate, RectangleGate | PolygonGate | EllipseGate)
                and not (p.adaptive and adaptive)
                and p.name not in skipped and p.name not in passed):
            fixed.setdefault(p.parent, []).append(p)
    decided: dict[str, np.ndarray | None] = {}
    for pop in template.populations:
        if pop.name in skipped:
            applied.append(pop)
            continue
        parent = root if pop.parent is None else membership[pop.parent]
        if pop.name in passed:
            membership[pop.name] = parent.copy()
            applied.append(pop)
            continue
        if isinstance(pop.gate, BooleanGate):
            membership[pop.name] = _boolean(pop.gate, membership) & parent
            applied.append(pop)
            continue
        if pop.parent not in parent_idx:
            parent_idx[pop.parent] = np.flatnonzero(parent)
        idx = parent_idx[pop.parent]
        gate = pop.gate
        if pop.adaptive and adaptive:
            gate, positions[pop.name] = placer.place(pop, idx)
            pop = replace(pop, gate=gate)
        applied.append(pop)
        group = fixed.get(pop.parent, [])
        if pop.name not in decided and any(p.name == pop.name for p in group):
            del fixed[pop.parent]
            if len(group) > 1:
                decided.update(zip([p.name for p in group],
                                   inside_together(space, [p.gate for p in group], idx)))
        hit = decided.pop(pop.name, None)
        if hit is None:
            hit = inside(space, gate, idx)
        children_left[pop.parent] -= 1
        if children_left[pop.parent] <= 0:  # its last child: 8 bytes an event no longer held
            del parent_idx[pop.parent]
        if idx.size == n:  # every event is the parent's: the test is the membership
            membership[pop.name] = np.asarray(hit, bool)
        else:
            membership[pop.name], mine = members(n, idx, hit)
            if children_left[pop.name] > 0:  # its children's events, without a search
                parent_idx[pop.name] = mine

    placed = template.with_populations(applied)
    counts = _counts_table(placed, membership, skipped | passed, space, int(root.sum()))
    counts["adaptive_fallback"] = [
        bool(positions.get(p, {}).get("fallback", False)) for p in counts["population"]]
    return GatingResult(
        sample_id=sample_id, template=placed, counts=counts, membership=membership,
        n_events=n, channels=prepared.channels, not_measured=skipped,
        gate_positions=positions, path=str(sample.path), prepared=prepared,
    )


def _counts_table(template: Template, membership: dict[str, np.ndarray], notes: dict[str, str],
                  space: EventSpace, n_root: int) -> pd.DataFrame:
    totals = {name: int(np.count_nonzero(m)) for name, m in membership.items()}
    rows = []
    for pop in template.populations:
        row: dict[str, Any] = {"population": pop.name, "parent": pop.parent or ""}
        # A passed-through gate has membership (its parent's) but no count of its own.
        measured = pop.name in membership and pop.name not in notes
        count = totals.get(pop.name)
        parent_count = n_root if pop.parent is None else totals.get(pop.parent)
        row["count"] = count if measured else None
        row["parent_count"] = parent_count if measured else None
        row["pct_parent"] = _pct(count, parent_count) if measured else np.nan
        for ref in pop.pct_of:
            row[pct_of_column(ref)] = _pct(count, totals.get(ref)) if measured else np.nan
        for marker in pop.mfi:
            value = np.nan
            if measured and marker in space.channel_of and count:
                # at the population's events only (compensating the whole file per MFI cost)
                values = space.linear_channel(space.channel_of[marker],
                                              idx=np.flatnonzero(membership[pop.name]))
                value = float(np.median(values))
            row[f"mfi_median_{marker}"] = value
        row["measured"] = measured
        row["note"] = notes.get(pop.name, "")
        rows.append(row)
    table = pd.DataFrame(rows)
    for col in ("count", "parent_count"):
        table[col] = table[col].astype("Int64")
    return table


def _pct(count: int | None, of: int | None) -> float:
    if count is None or not of:
        return np.nan
    return 100.0 * count / of
