"""Gates edited in FlowJo back into the run, as per-sample overrides.

``immunoprofile flowjo apply RUN edited.wsp --by NAME --reason TEXT`` reads a workspace that
``flowjo export`` wrote and a scientist edited, compares every sample's gates with the gates the
run applies, and turns each moved gate into an override
(:func:`immunoprofile.batch.apply_overrides`): recorded in ``RUN/overrides.yaml`` and
``RUN/audit.csv``, the changed samples regated, the tables, AnnData and report rebuilt.

Gates are compared and converted in GatingML coordinates (FlowKit reads the workspace and
applies each sample's transforms); a change smaller than :data:`TOLERANCE` of the gate's span
is FlowJo's rounding, not an edit. The QC gates stand for the run's QC and are ignored;
boolean gates have no shape to move; a gate added in FlowJo is listed in the notes, not
applied (new populations belong in the template).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from immunoprofile.batch import apply_overrides, run_inputs
from immunoprofile.errors import ImmunoprofileError
from immunoprofile.flowjo._qc_gates import QC_NODES
from immunoprofile.flowjo.export import SAMPLE_ID_KEYWORD, export_sample
from immunoprofile.overrides import for_sample, read_overrides
from immunoprofile.refresh import refresh_outputs
from immunoprofile.run import Run
from immunoprofile.template.model import Dimension, Gate, PolygonGate, RectangleGate

#: Relative change (of the gate's extent) below which a coordinate has not moved.
TOLERANCE = 1e-6


def _coords(gate: Any) -> np.ndarray:
    kind = type(gate).__name__
    if kind == "RectangleGate":
        return np.array([[np.nan if d.min is None else d.min,
                          np.nan if d.max is None else d.max] for d in gate.dimensions], float)
    if kind == "PolygonGate":
        return np.asarray(gate.vertices, float)
    return np.array([])


def moved(original: Any, edited: Any) -> bool:
    """Whether an edited FlowKit gate differs from the one exported (beyond rounding).

    Parameters
    ----------
    original, edited
        FlowKit gates in GatingML coordinates.

    Returns
    -------
    bool
        True when the type, the dimensions, the complement or a coordinate changed.
    """
    if type(original).__name__ != type(edited).__name__:
        return True
    if [d.id for d in original.dimensions] != [d.id for d in edited.dimensions]:
        return True
    if bool(getattr(original, "use_complement", False)) != \
            bool(getattr(edited, "use_complement", False)):
        return True
    a, b = _coords(original), _coords(edited)
    if a.shape != b.shape or not np.array_equal(np.isnan(a), np.isnan(b)):
        return True
    finite = ~np.isnan(a)
    scale = max(float(np.ptp(a[finite])) if finite.any() else 1.0, 1.0)
    return bool(np.any(np.abs(a[finite] - b[finite]) > TOLERANCE * scale))


def to_template_gate(edited: Any, axes: dict[str, tuple[Dimension, float]]) -> Gate:
    """An edited FlowKit gate as a template gate: the placed gate's axes, template coordinates.

    Parameters
    ----------
    edited
        The FlowKit gate (GatingML coordinates on ``$PnN`` channels).
    axes
        ``{$PnN: (the placed gate's dimension on it, template → GatingML factor)}``: an
        axis keeps its marker, transform and compensation, and each coordinate is rescaled
        by its own axis's factor, whatever order the edited gate lists them in.

    Returns
    -------
    Gate
        A rectangle or polygon on the placed gate's dimensions.

    Raises
    ------
    ImmunoprofileError
        The gate is drawn on a channel the placed gate does not use, or its type has no
        template form.
    """
    for d in edited.dimensions:
        if d.id not in axes:
            raise ImmunoprofileError(
                f"gate {edited.gate_name!r} is drawn on {d.id}, not on the axes it was "
                f"exported on ({', '.join(axes)}): draw it on the exported axes")
    dims = tuple(axes[d.id][0] for d in edited.dimensions)
    f = [axes[d.id][1] for d in edited.dimensions]
    kind = type(edited).__name__
    if kind == "RectangleGate":
        return RectangleGate(
            dims=dims,
            mins=tuple(None if d.min is None else float(d.min) / k
                       for d, k in zip(edited.dimensions, f)),
            maxs=tuple(None if d.max is None else float(d.max) / k
                       for d, k in zip(edited.dimensions, f)),
            complement=bool(edited.use_complement))
    if kind == "PolygonGate":
        return PolygonGate(dims=dims,
                           vertices=tuple((float(x) / f[0], float(y) / f[1])
                                          for x, y in edited.vertices),
                           complement=bool(getattr(edited, "use_complement", False)))
    raise ImmunoprofileError(f"gate {edited.gate_name!r}: a {kind} has no template form")


def _sample_ids(wsp: dict, rows: list[dict]) -> dict[str, str]:
    """Workspace sample name → run sample id (the export's keyword, else the file name)."""
    by_file: dict[str, list[str]] = {}
    for r in rows:
        by_file.setdefault(Path(str(r["path"])).name, []).append(str(r["sample_id"]))
    out = {}
    for name, data in wsp["samples"].items():
        sid = data["keywords"].get(SAMPLE_ID_KEYWORD)
        if sid is None and len(by_file.get(name, [])) == 1:
            sid = by_file[name][0]
        if sid is not None:
            out[name] = str(sid)
    return out


def edited_overrides(run: str | Path | Run, workspace: str | Path, *,
                     template: str | None = None) -> tuple[list[dict], list[str]]:
    """The gates of an edited workspace that differ from the run's, as override entries.

    Parameters
    ----------
    run
        The gated run the workspace was exported from.
    workspace
        The edited ``.wsp``.
    template
        The run's template the workspace holds (default: its sample group named after one).

    Returns
    -------
    (overrides, notes)
        Override mappings (``sample_id``, ``template``, ``population``, ``gate``) for each
        moved gate, and what was found but not applied (gates added in FlowJo, samples not
        in the run or not gated with the template).
    """
    # start-up time: FlowKit reads the workspace only here
    from flowkit import parse_wsp

    run = Run.open(run)
    rows, templates, settings, _ = run_inputs(run)
    path = Path(workspace)
    if not path.is_file():
        raise ImmunoprofileError(f"workspace {path} does not exist")
    try:
        wsp = parse_wsp(str(path))
    except Exception as exc:  # FlowKit's parser raises many types on a malformed file
        raise ImmunoprofileError(f"{path.name}: not a FlowJo 10 workspace FlowKit can read "
                                 f"({type(exc).__name__}: {exc})") from exc
    if template is None:
        named = [g for g in wsp["groups"] if g in templates]
        if len(named) != 1:
            raise ImmunoprofileError(f"{path.name}: say which template it holds (--template); "
                                     f"the run's: {', '.join(templates)}")
        template = named[0]
    if template not in templates:
        raise ImmunoprofileError(f"template {template!r} is not one of the run's "
                                 f"({', '.join(templates)})")
    ids = _sample_ids(wsp, rows)
    by_id = {str(r["sample_id"]): r for r in rows}
    existing = read_overrides(run.overrides_path)
    found, notes = [], []
    for name, data in wsp["samples"].items():
        sid = ids.get(name)
        if sid not in by_id:
            notes.append(f"{name}: not a sample of the run; skipped")
            continue
        exported = export_sample(by_id[sid], templates[template], settings,
                                 for_sample(existing, sid))
        if exported is None:
            notes.append(f"{name}: the run did not gate it with {template}; skipped")
            continue
        result = exported.result
        gates, channels, factors = exported.gates, exported.channels, exported.factors
        strategy = data["gating_strategy"]
        for gate_name, gate_path in strategy.get_gate_ids():
            edited = strategy.get_gate(gate_name, gate_path)
            if gate_name in QC_NODES:
                continue  # QC is the run's: its gates stand for a mask, not for an edit
            if gate_name not in gates:  # a boolean has no shape to move
                if gate_name not in result.template:
                    notes.append(f"{name}: gate {gate_name!r} is not in template {template}; "
                                 "skipped (new populations belong in the template)")
                continue
            if moved(gates[gate_name], edited):
                placed = result.template[gate_name].gate
                axes = {channels[d.marker]: (d, k)
                        for d, k in zip(placed.dims, factors[gate_name])}
                try:
                    gate = to_template_gate(edited, axes)
                except ImmunoprofileError as exc:
                    raise ImmunoprofileError(f"{path.name}, sample {name}: {exc}") from exc
                found.append({"sample_id": sid, "template": template,
                              "population": gate_name, "gate": gate})
    return found, notes


def apply_workspace(run: str | Path | Run, workspace: str | Path, *, by: str, reason: str,
                    template: str | None = None, workers: int | None = None,
                    refresh: Callable[[Run], Any] | None = refresh_outputs,
                    ) -> tuple[pd.DataFrame, list[str]]:
    """Apply the gates moved in an edited workspace as per-sample overrides.

    Parameters
    ----------
    run
        The gated run.
    workspace
        The edited ``.wsp`` (as ``flowjo export`` wrote it, then edited in FlowJo).
    by, reason
        Who made the changes and why (written into every audit row).
    template
        The template the workspace holds (default: from its group name).
    workers
        Processes for regating the changed samples.
    refresh
        Called with the run after regating; by default the AnnData and report the run
        already has are rebuilt (:func:`immunoprofile.refresh.refresh_outputs`; None: not).

    Returns
    -------
    (audit rows, notes)
        The rows added to ``audit.csv`` (empty when nothing moved) and what was not applied.
    """
    found, notes = edited_overrides(run, workspace, template=template)
    if not found:
        return pd.DataFrame(), notes
    added = apply_overrides(run, found, by=by, reason=reason, workers=workers)
    if refresh is not None:
        refresh(Run.open(run))
    return added, notes
