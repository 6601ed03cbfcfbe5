"""The work of one batch task: one sample through QC and every template that fits it.

Writes the sample's parts atomically under ``RUN/.parts`` (subset rows, QC summary), its event
subsample under ``RUN/events`` and its gating plots under ``RUN/plots``; returns the number of
events and the error rows. Kept apart from :mod:`immunoprofile.batch` so the scheduler side
stays light and this side can be imported in worker processes only.
"""

from __future__ import annotations

import json
import warnings
import zlib
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from immunoprofile.errors import FCSError, ImmunoprofileError, PanelError
from immunoprofile.gating.engine import GatingResult, gate_sample, required_markers
from immunoprofile.gating.events import EventSpace
from immunoprofile.io.fcs import FCSSample, read_fcs
from immunoprofile.panel import resolve_markers
from immunoprofile.tables import atomic_write, write_parquet
from immunoprofile.template.model import Dimension, Template

if TYPE_CHECKING:
    from immunoprofile.batch import BatchSettings

LYMPHOCYTE_REFERENCE = "Live lymphocytes"
BEADS = "Beads"


def qc_applies(template: Template, settings: BatchSettings) -> bool:
    """Whether acquisition QC masks this template's events: ``--qc``/``--no-qc`` when given,
    otherwise the template's own ``qc:`` section (imported FlowJo/GatingML templates have none,
    so they reproduce the source software's counts)."""
    return template.wants_qc if settings.qc is None else bool(settings.qc)


def _qc(sample: FCSSample, templates: list[Template]):
    from immunoprofile.gating.qc import acquisition_qc

    checks = {"margin": True, "flow_rate": True, "signal": True}
    for t in templates:  # a template may switch a check off for its tube
        for k in checks:
            checks[k] = checks[k] and bool((t.qc or {}).get(k, True))
    return acquisition_qc(sample, **checks)


def _fits(sample: FCSSample, template: Template) -> str | None:
    """None when the file carries every required marker, else the reason."""
    required, _ = required_markers(template)
    try:
        resolve_markers(sample, required, what=f"template {template.name}")
    except PanelError as exc:
        return str(exc)
    return None


def _absolute(table: pd.DataFrame, row: dict) -> tuple[pd.Series, pd.Series]:
    counts = table.set_index("population")["count"]
    n = len(table)
    lymph = row.get("lymphocytes_per_ul")
    if BEADS in counts.index or row.get("bead_count") is not None:
        beads = counts.get(BEADS, row.get("bead_count"))
        per_test, volume = row.get("beads_per_test"), row.get("blood_volume_ul")
        if beads and per_test and volume and not pd.isna(beads):
            value = table["count"].astype(float) / float(beads) * float(per_test) / float(volume)
            return value, pd.Series(["beads"] * n)
    if lymph is not None and not pd.isna(lymph) and LYMPHOCYTE_REFERENCE in counts.index:
        ref = counts[LYMPHOCYTE_REFERENCE]
        if ref and not pd.isna(ref):
            value = float(lymph) * table["count"].astype(float) / float(ref)
            return value, pd.Series(["dual_platform"] * n)
    return pd.Series([np.nan] * n), pd.Series([""] * n)


def _rows(result: GatingResult, row: dict, digest: str, settings: BatchSettings) -> pd.DataFrame:
    table = result.counts.copy()
    meta = {k: v for k, v in row.items() if k not in ("path", "row")}
    abs_value, abs_method = _absolute(table, row)
    table.insert(0, "template_version", result.template.version)
    table.insert(0, "template", result.template.name)
    for i, (k, v) in enumerate(meta.items()):
        table.insert(i, k, v)
    table["abs_per_ul"] = abs_value.to_numpy()
    table["abs_method"] = abs_method.to_numpy()
    # plain bool as documented (an Int64 count would make it pandas' nullable "boolean")
    rare = (table["count"].fillna(0) < settings.rare_threshold) & table["measured"]
    table["flag_rare"] = rare.to_numpy(dtype=bool)
    table["qc_removed_pct"] = float(result.qc.get("pct_removed", 0.0))
    table["file_sha256"] = digest
    return table


def _positions(result: GatingResult) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pop, rec in result.gate_positions.items():
        prefix = f"{result.template.name}/{pop}"
        out[f"{prefix}/fallback"] = int(bool(rec.get("fallback")))
        for k, v in (rec.get("placed") or {}).items():
            if isinstance(v, int | float):
                out[f"{prefix}/{k}"] = float(v)
    return out


def _events(sample: FCSSample, results: list[GatingResult], mask: np.ndarray,
            settings: BatchSettings, sample_id: str) -> pd.DataFrame:
    rng = np.random.default_rng([settings.seed, zlib.crc32(sample_id.encode())])
    passing = np.flatnonzero(mask)
    k = min(settings.keep_events, passing.size)
    idx = np.sort(rng.choice(passing, k, replace=False)) if k < passing.size else passing
    cols: dict[str, np.ndarray] = {"event_index": idx.astype(np.int64)}
    channels: dict[str, str] = {}
    # Compensate and transform the kept events only: an EventSpace over the whole file
    # compensated every event again per template (float64, 1.6× the event matrix on a B tube)
    # to keep 20k of them. Both steps work row by row, so the values are the same.
    kept = replace(sample, events=sample.events[idx])
    rows = np.arange(idx.size)
    for res in results:
        space = EventSpace(kept, res.template, res.channels)
        for marker, pnn in res.channels.items():
            if f"transformed/{marker}" in cols:
                continue
            dim = Dimension(marker=marker)
            cols[f"transformed/{marker}"] = space.values(dim, rows).astype(np.float32)
            cols[f"compensated/{marker}"] = space.linear_channel(pnn).astype(np.float32)
            channels[marker] = pnn
    for res in results:
        for pop, member in res.membership.items():
            cols[f"{res.template.name}/{pop}"] = member[idx]
    frame = pd.DataFrame(cols)
    frame.attrs["channels"] = channels
    return frame


def _gate_all(row: dict, templates: list[Template], settings: BatchSettings):
    """Read, QC and gate one sample with every template that fits.

    Returns ``(sample, kept, results, errors, qc_summary)``: ``kept`` marks the events some
    template gated from (QC-passing events for templates with QC, every event for those
    without), from which the kept-event subsample is drawn; ``sample`` is None when the file
    could not be read.
    """
    from immunoprofile.batch import _error, named_in_panel

    sid = str(row["sample_id"])
    errors: list[dict[str, str]] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            sample = read_fcs(row["path"])
        except FCSError as exc:
            return None, None, [], [_error(row, "", "read", exc)], {}
    read_warnings = [str(w.message) for w in caught]

    fitting: list[Template] = []
    unfit: list[str] = []
    for template in templates:
        reason = _fits(sample, template)
        if reason is None:
            fitting.append(template)
        elif named_in_panel(row.get("panel"), template):
            errors.append(_error(row, template.name, "fit", reason))
        else:
            unfit.append(f"{template.name}: {reason}")

    # QC runs for the templates that gate this sample and ask for it, with their checks.
    everything = np.ones(sample.n_events, bool)
    qc_mask = everything
    qc_summary: dict[str, Any] = {"sample_id": sid, "n_events": sample.n_events}
    checked = [t for t in fitting if qc_applies(t, settings)]
    if checked:
        try:
            qc = _qc(sample, checked)
            qc_mask = qc.mask
            qc_summary.update(qc.summary())
        except Exception as exc:  # QC failing must not lose the sample: gate without it
            errors.append(_error(row, "", "qc", exc))
    if read_warnings:
        flags = [qc_summary.get("flags", "")] if qc_summary.get("flags") else []
        qc_summary["flags"] = "; ".join(flags + read_warnings)
    if "flags" in qc_summary:
        qc_summary["qc_flags"] = qc_summary.pop("flags")

    results: list[GatingResult] = []
    kept = np.zeros(sample.n_events, bool)  # the events some template gated from
    for template in fitting:
        checks = template in checked and "n_removed" in qc_summary
        own = qc_mask if checks else everything
        try:
            result = gate_sample(sample, template, sample_id=sid, event_mask=own,
                                 adaptive=settings.adaptive)
        except ImmunoprofileError as exc:
            errors.append(_error(row, template.name, "gate", exc))
            continue
        if checks:
            result.qc = {k: qc_summary[k] for k in ("n_events", "n_removed", "pct_removed")}
        results.append(result)
        kept |= own
    if not results and not errors:
        errors.append(_error(row, "", "fit", "no template fits this sample: "
                             + " | ".join(unfit)))
    return sample, kept, results, errors, qc_summary


def events_for_sample(row: dict, templates: list[Template],
                      settings: BatchSettings) -> pd.DataFrame:
    """The event subsample a batch run keeps for one sample, computed afresh (no files)."""
    sample, mask, results, errors, _ = _gate_all(row, templates, settings)
    if not results:
        raise ImmunoprofileError(f"sample {row['sample_id']}: "
                                 + "; ".join(e["error"] for e in errors))
    return _events(sample, results, mask, settings, str(row["sample_id"]))


def gate_one(row: dict, templates: list[Template], out: Path, settings: BatchSettings,
             digest: str) -> tuple[int, list[dict[str, str]]]:
    """Read, QC and gate one sample with every template that fits; write its parts."""
    from immunoprofile.batch import _part

    sid = str(row["sample_id"])
    sample, mask, results, errors, qc_summary = _gate_all(row, templates, settings)
    if sample is None:
        return 0, errors
    if not results:
        return sample.n_events, errors

    for res in results:
        qc_summary.update(_positions(res))
    table = pd.concat([_rows(r, row, digest, settings) for r in results], ignore_index=True)
    events = _events(sample, results, mask, settings, sid)
    write_parquet(events, Path(out) / "events" / f"{sid}.parquet",
                  metadata={"sample_id": sid, "channels": events.attrs["channels"],
                            "templates": [r.template.name for r in results]})
    if settings.plots:
        errors.extend(_plots(row, results, sample, Path(out)))
    atomic_write(_part(Path(out), sid, "qc.json"),
                 lambda tmp: tmp.write_text(json.dumps(qc_summary, default=float)))
    write_parquet(table, _part(Path(out), sid, "subsets.parquet"))
    return sample.n_events, errors


def _plots(row: dict, results: list[GatingResult], sample: FCSSample,
           out: Path) -> list[dict[str, str]]:
    from immunoprofile.batch import _error

    try:
        from immunoprofile.pl import gating as plot_gating
    except ImportError:  # plotting is optional for headless pipelines
        return []
    errors = []
    for res in results:
        try:
            fig = plot_gating(res, sample,
                              save=out / "plots" / f"{res.sample_id}_{res.template.name}.png")
            import matplotlib.pyplot as plt

            plt.close(fig)
        except Exception as exc:  # a plot failing must not lose the sample's numbers
            errors.append(_error(row, res.template.name, "output", f"gating plot: {exc}"))
    return errors
