"""One sample under review: its gates as placed, events to draw, live counts, saving.

Counts always come from the real gating engine on all of the sample's events (the sample is
read, QC'd and prepared once, then only the gates change); the events drawn are the run's kept
subsample. Saving goes through :func:`immunoprofile.batch.apply_overrides`, exactly as
``flowjo apply`` does: an override and an audit row per changed gate, the sample regated.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from immunoprofile.batch import apply_overrides, gate_row, run_inputs
from immunoprofile.errors import ImmunoprofileError
from immunoprofile.gating.engine import gate_sample
from immunoprofile.overrides import Override, apply_to_template, for_sample, read_overrides
from immunoprofile.refresh import refresh_outputs
from immunoprofile.review.ranking import rank_samples
from immunoprofile.run import Run
from immunoprofile.template.model import Gate, PolygonGate, RectangleGate, Template

#: Events drawn per plot: enough to see a population, few enough to draw in well under 1 s.
DISPLAY_EVENTS = 3000


@dataclass
class RunContext:
    """What every review session of a run shares: sheet rows, templates, settings and the
    ranking (computed once, again after each save, not per browser tab)."""

    run: Run
    rows: dict[str, dict]
    templates: dict[str, Template]
    settings: Any
    _ranking: pd.DataFrame | None = field(default=None, repr=False)

    @classmethod
    def open(cls, run: str | Path | Run) -> RunContext:
        run = Run.open(run)
        rows, templates, settings, _ = run_inputs(run)
        return cls(run, {str(r["sample_id"]): r for r in rows}, templates, settings)

    @property
    def ranking(self) -> pd.DataFrame:
        """:func:`~immunoprofile.review.ranking.rank_samples` of the run, cached."""
        if self._ranking is None:
            self._ranking = rank_samples(self.run)
        return self._ranking

    def refresh(self) -> None:
        """The run's tables changed (a save): read them again, rank again."""
        self.run = Run(self.run.path)
        self._ranking = None


@dataclass
class EditableGate:
    """A population whose gate the reviewer can move."""

    population: str
    parent: str | None
    gate: Gate
    kind: str  # "range", "rectangle" or "polygon"

    @property
    def markers(self) -> list[str]:
        return [d.marker for d in self.gate.dims]


def editable(gate: Gate) -> str | None:
    """``range``, ``rectangle`` or ``polygon`` when the review can move the gate."""
    if any(d.ratio is not None or d.transform is not None for d in gate.dims):
        return None  # imported per-axis transforms: edit those in FlowJo
    if isinstance(gate, RectangleGate) and not gate.complement:
        return "range" if len(gate.dims) == 1 else "rectangle"
    if isinstance(gate, PolygonGate) and not gate.complement:
        return "polygon"
    return None


@dataclass
class SampleEditor:
    """One sample and template under review."""

    context: RunContext
    sample_id: str
    template_name: str
    placed: Template = field(init=False)
    _prepared: Any = field(default=None, init=False, repr=False)
    _mask: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.sample_id not in self.context.rows:
            raise ImmunoprofileError(f"sample {self.sample_id!r} is not in the run")
        placed = self.context.run.placed_templates(self.sample_id).get(self.template_name)
        if placed is None:  # a run gated before gates were recorded: place them again
            placed = self._gate().template
        self.placed = placed

    def _overrides(self) -> tuple[Override, ...]:
        return for_sample(read_overrides(self.context.run.overrides_path), self.sample_id)

    def _gate(self):
        work = gate_row(self.context.rows[self.sample_id],
                        [self.context.templates[self.template_name]], self.context.settings,
                        self._overrides())
        if not work.results:
            raise ImmunoprofileError(f"sample {self.sample_id} is not gated with "
                                     f"{self.template_name}: "
                                     + "; ".join(e["error"] for e in work.errors))
        result = work.results[0]
        self._prepared, self._mask = result.prepared, work.kept
        return result

    def prepare(self) -> None:
        """Read, QC and prepare the sample for live counts (once; later gates only regate)."""
        if self._prepared is None:
            self._gate()

    def gates(self) -> list[EditableGate]:
        """The populations whose gates can be moved here, in template order."""
        out = []
        for pop in self.placed.populations:
            kind = editable(pop.gate)
            if kind:
                out.append(EditableGate(pop.name, pop.parent, pop.gate, kind))
        return out

    def events(self) -> pd.DataFrame:
        """The run's kept events of the sample (transformed values, gate membership),
        subsampled to :data:`DISPLAY_EVENTS` for drawing."""
        frame, _ = self.context.run.events(self.sample_id)
        if len(frame) > DISPLAY_EVENTS:
            frame = frame.sample(DISPLAY_EVENTS, random_state=0).sort_index()
        return frame

    def counts(self, changes: dict[str, Gate] | None = None) -> pd.DataFrame:
        """Population counts on all events with the gates as placed and ``changes`` applied.

        Parameters
        ----------
        changes
            ``{population: gate}`` tried instead of the placed gates.

        Returns
        -------
        pandas.DataFrame
            ``population``, ``parent``, ``count``, ``pct_parent`` from the gating engine.
        """
        self.prepare()
        template = self.placed
        if changes:
            trial = [Override(self.sample_id, self.template_name, p, g, "") for p, g in
                     changes.items()]
            template = apply_to_template(template, trial)
        prepared = replace(self._prepared, template=template)
        result = gate_sample(prepared, sample_id=self.sample_id, event_mask=self._mask,
                             adaptive=False)
        return result.counts[["population", "parent", "count", "pct_parent"]]

    def save(self, changes: dict[str, Gate], *, by: str, reason: str,
             also: list[str] | tuple[str, ...] = ()) -> pd.DataFrame:
        """Write the changed gates as overrides (this sample and ``also``), audit, regate,
        and rebuild the AnnData and report the run has.

        Parameters
        ----------
        changes
            ``{population: gate}``.
        by, reason
            Who and why (required).
        also
            Other samples gated with the same template that get the same gates, each with
            its own override and audit row.

        Returns
        -------
        pandas.DataFrame
            The audit rows added.
        """
        if not changes:
            raise ImmunoprofileError("no gate was moved: nothing to save")
        samples = [self.sample_id, *[s for s in also if s != self.sample_id]]
        entries = [{"sample_id": sid, "template": self.template_name, "population": pop,
                    "gate": gate} for sid in samples for pop, gate in changes.items()]
        added = apply_overrides(self.context.run, entries, by=by, reason=reason, workers=1)
        refresh_outputs(self.context.run)
        # the file, its QC and its preparation do not change with the gates: only `placed`
        placed = self.context.run.placed_templates(self.sample_id).get(self.template_name)
        self.placed = placed if placed is not None else self._gate().template
        return added
