"""The work of one batch task, pure: a sample-sheet row in, the sample's rows out.

Read the file, run acquisition QC for the templates that ask for it, gate it with every
template that fits, and build its subset rows, QC summary and kept-event subsample. Nothing is
written here (:mod:`._parts` does that), nothing is drawn (plots are passed in), so a notebook,
a test or another scheduler can call it as it is.
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from immunoprofile.batch._settings import BatchSettings, error_row, named_in_panel
from immunoprofile.errors import FCSError, ImmunoprofileError, PanelError
from immunoprofile.gating.engine import GatingResult, gate_sample
from immunoprofile.gating.prepared import PreparedSample, prepare_sample
from immunoprofile.gating.qc import QCResult, acquisition_qc
from immunoprofile.io.fcs import FCSSample, read_fcs
from immunoprofile.overrides import Override, apply_to_template
from immunoprofile.template.model import Dimension, Template


@dataclass
class SampleWork:
    """What gating one sample produced (in memory).

    Attributes
    ----------
    row
        The sample-sheet row.
    sample
        The decoded file (None when it could not be read).
    results
        One :class:`~immunoprofile.gating.engine.GatingResult` per template that gated it.
    kept
        The events some template gated from (QC-passing for templates with QC, all for
        those without): the kept-event subsample is drawn from them.
    errors
        Error rows (``errors.csv``).
    qc
        The QC summary row (``qc.csv``), with where adaptive gates landed.
    qc_result
        The acquisition-QC outcome when QC ran (which events each check removed).
    """

    row: dict
    sample: FCSSample | None = None
    results: list[GatingResult] = field(default_factory=list)
    kept: np.ndarray | None = None
    errors: list[dict[str, str]] = field(default_factory=list)
    qc: dict[str, Any] = field(default_factory=dict)
    qc_result: QCResult | None = None

    @property
    def sample_id(self) -> str:
        return str(self.row["sample_id"])

    def subset_rows(self, settings: BatchSettings, digest: str) -> pd.DataFrame:
        """The sample's rows of the subset table, every template after another.

        Parameters
        ----------
        settings
            The run's settings (``rare_threshold`` sets ``flag_rare``).
        digest
            The file's SHA-256, written into ``file_sha256``.

        Returns
        -------
        pandas.DataFrame
            The rows of each result in :attr:`results`, concatenated in their order.
        """
        return pd.concat([r.to_table(self.row, rare_threshold=settings.rare_threshold,
                                     file_sha256=digest) for r in self.results],
                         ignore_index=True)

    def events(self, settings: BatchSettings) -> pd.DataFrame:
        """The kept-event subsample (see :func:`kept_events`).

        Parameters
        ----------
        settings
            ``keep_events`` and ``seed``.

        Returns
        -------
        pandas.DataFrame
            As :func:`kept_events`, drawn from :attr:`kept`.
        """
        return kept_events(self.results, self.kept, settings, self.sample_id)


def qc_applies(template: Template, settings: BatchSettings) -> bool:
    """Whether acquisition QC masks this template's events: ``--qc``/``--no-qc`` when given,
    otherwise the template's own ``qc:`` section (imported FlowJo/GatingML templates have none,
    so they reproduce the source software's counts).

    Parameters
    ----------
    template
        The template.
    settings
        The run's settings (``qc``: True, False or None for the template's choice).

    Returns
    -------
    bool
        Whether QC masks the template's events.
    """
    return template.wants_qc if settings.qc is None else bool(settings.qc)


def _qc(sample: FCSSample, templates: list[Template]):
    checks = {"margin": True, "flow_rate": True, "signal": True}
    for t in templates:  # a template may switch a check off for its tube
        for k in checks:
            checks[k] = checks[k] and bool((t.qc or {}).get(k, True))
    return acquisition_qc(sample, **checks)


def _positions(result: GatingResult) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pop, rec in result.gate_positions.items():
        prefix = f"{result.template.name}/{pop}"
        out[f"{prefix}/fallback"] = int(bool(rec.get("fallback")))
        for k, v in (rec.get("placed") or {}).items():
            if isinstance(v, int | float):
                out[f"{prefix}/{k}"] = float(v)
    return out


def kept_events(results: list[GatingResult], mask: np.ndarray, settings: BatchSettings,
                sample_id: str) -> pd.DataFrame:
    """A seeded subsample of the gated events: values and gate membership.

    Parameters
    ----------
    results
        The sample's gating results (each keeps its prepared sample).
    mask
        The events the subsample is drawn from.
    settings
        ``keep_events`` and ``seed``.
    sample_id
        Mixed into the seed, so samples get independent draws.

    Returns
    -------
    pandas.DataFrame
        ``event_index``, ``transformed/<marker>``, ``compensated/<marker>`` (float32) and
        ``<template>/<population>`` columns (:data:`immunoprofile.tables.EVENTS`);
        ``attrs['channels']`` maps markers to detectors.
    """
    rng = np.random.default_rng([settings.seed, zlib.crc32(sample_id.encode())])
    passing = np.flatnonzero(mask)
    k = min(settings.keep_events, passing.size)
    idx = np.sort(rng.choice(passing, k, replace=False)) if k < passing.size else passing
    cols: dict[str, np.ndarray] = {"event_index": idx.astype(np.int64)}
    channels: dict[str, str] = {}
    for res in results:
        # The EventSpace gating used: values at the kept events only (channels gating solved
        # for these events are reused; compensation and transforms work row by row).
        space = res.prepared.space
        for marker, pnn in res.channels.items():
            if f"transformed/{marker}" in cols:
                continue
            dim = Dimension(marker=marker)
            cols[f"transformed/{marker}"] = space.values(dim, idx).astype(np.float32)
            cols[f"compensated/{marker}"] = space.linear_channel(pnn, idx=idx).astype(
                np.float32)
            channels[marker] = pnn
    for res in results:
        for pop, member in res.membership.items():
            cols[f"{res.template.name}/{pop}"] = member[idx]
    frame = pd.DataFrame(cols)
    frame.attrs["channels"] = channels
    return frame


def _prepare_all(row: dict, sample: FCSSample, templates: list[Template],
                 work: SampleWork) -> tuple[list[PreparedSample], list[str]]:
    """The templates whose required markers the file carries, each prepared once, and why
    the others do not fit."""
    prepared: list[PreparedSample] = []
    unfit: list[str] = []
    for template in templates:
        try:
            prepared.append(prepare_sample(sample, template))
        except PanelError as exc:
            if named_in_panel(row.get("panel"), template):
                work.errors.append(error_row(row, template.name, "fit", str(exc)))
            else:
                unfit.append(f"{template.name}: {exc}")
    return prepared, unfit


def gate_row(row: dict, templates: list[Template], settings: BatchSettings,
             overrides: tuple[Override, ...] = ()) -> SampleWork:
    """Read, QC and gate one sample with every template that fits.

    Never raises on bad input: a file that cannot be read, a template that does not fit or
    a gate that fails becomes an error row.

    Parameters
    ----------
    row
        One sample-sheet row (``sample_id``, ``path``, metadata; ``panel`` names templates).
    templates
        The run's templates.
    settings
        The run's settings.
    overrides
        This sample's gate overrides (:mod:`immunoprofile.overrides`); their file checksum
        is checked by the caller, which has the file's digest.

    Returns
    -------
    SampleWork
        The results, kept-event mask, QC summary and error rows.
    """
    work = SampleWork(row=row)
    if overrides:
        try:
            templates = [apply_to_template(t, overrides) for t in templates]
        except ImmunoprofileError as exc:
            work.errors.append(error_row(row, "", "override", exc))
            return work
    sid = work.sample_id
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            sample = read_fcs(row["path"])
        except FCSError as exc:
            work.errors.append(error_row(row, "", "read", exc))
            return work
    if sample.n_events == 0:
        work.errors.append(error_row(row, "", "read", "the file holds no events ($TOT=0): "
                                     "nothing to gate"))
        return work
    work.sample = sample
    read_warnings = [str(w.message) for w in caught]
    fitting, unfit = _prepare_all(row, sample, templates, work)

    # QC runs for the templates that gate this sample and ask for it, with their checks.
    everything = np.ones(sample.n_events, bool)
    qc_mask = everything
    qc_summary: dict[str, Any] = {"sample_id": sid, "n_events": sample.n_events}
    checked = {p.template.name for p in fitting if qc_applies(p.template, settings)}
    if checked:
        try:
            qc = _qc(sample, [p.template for p in fitting if p.template.name in checked])
            qc_mask = qc.mask
            qc_summary.update(qc.summary())
            work.qc_result = qc
        except Exception as exc:  # QC failing must not lose the sample: gate without it
            work.errors.append(error_row(row, "", "qc", exc))
    if read_warnings:
        flags = [qc_summary.get("flags", "")] if qc_summary.get("flags") else []
        qc_summary["flags"] = "; ".join(flags + read_warnings)
    if "flags" in qc_summary:
        qc_summary["qc_flags"] = qc_summary.pop("flags")

    kept = np.zeros(sample.n_events, bool)
    for prepared in fitting:
        name = prepared.template.name
        checks = name in checked and "n_removed" in qc_summary
        own = qc_mask if checks else everything
        try:
            result = gate_sample(prepared, sample_id=sid, event_mask=own,
                                 adaptive=settings.adaptive)
        except ImmunoprofileError as exc:
            work.errors.append(error_row(row, name, "gate", exc))
            continue
        if checks:
            result.qc = {k: qc_summary[k] for k in ("n_events", "n_removed", "pct_removed")}
        result.overridden = tuple(o.population for o in overrides if o.template == name)
        work.results.append(result)
        kept |= own
    if not work.results and not work.errors:
        work.errors.append(error_row(row, "", "fit", "no template fits this sample: "
                                     + " | ".join(unfit)))
    for res in work.results:
        qc_summary.update(_positions(res))
    work.kept, work.qc = kept, qc_summary
    return work


def events_for_sample(row: dict, templates: list[Template],
                      settings: BatchSettings) -> pd.DataFrame:
    """The event subsample a batch run keeps for one sample, computed afresh (no files).

    Parameters
    ----------
    row
        The sample-sheet row.
    templates
        The run's templates.
    settings
        The run's settings (``keep_events`` events are kept).

    Returns
    -------
    pandas.DataFrame
        As :func:`kept_events`.

    Raises
    ------
    ImmunoprofileError
        No template gated the sample (the error rows are in the message).
    """
    work = gate_row(row, templates, settings)
    if not work.results:
        raise ImmunoprofileError(f"sample {row['sample_id']}: "
                                 + "; ".join(e["error"] for e in work.errors))
    return work.events(settings)
