"""Per-sample gate overrides: one sample's gate corrected without touching the template.

An automated gate will be wrong on some samples of every real study. An override replaces one
population's gate for one sample (and template) with a fixed gate, written in the template's
own YAML gate syntax (marker names, the template's transformed coordinates), and records who
made it, when, why, and the checksum of the FCS file it was made on. The batch gates that
sample with the override in place (``override`` column of the subset table: True for the
population whose gate was replaced) and refuses an override whose file checksum no longer
matches, so a correction is never applied to data it was not made on.

The file is ``RUN/overrides.yaml`` (written by ``immunoprofile flowjo apply`` or
:func:`immunoprofile.batch.apply_overrides`, or by hand)::

    version: 1
    overrides:
      - sample_id: P01_W0
        template: treg
        population: Treg
        file_sha256: 3f5a…            # the FCS file the correction was made on
        gate:
          polygon:
            dims: [CD127, CD25]
            vertices: [[-3, 2.6], [1.5, 3.0], [3.1, 4.2], [3.1, 10], [-3, 10]]
        by: jdoe
        reason: Treg gate cut the CD25hi tail
        timestamp_utc: "2026-12-04T20:15:00Z"

Every change is also a row of ``RUN/audit.csv`` (:data:`AUDIT_COLUMNS`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from immunoprofile._atomic import atomic_write
from immunoprofile.errors import ImmunoprofileError, TemplateError
from immunoprofile.tables import Column, register
from immunoprofile.template.model import Gate, Template
from immunoprofile.template.yaml_io import gate_from_dict
from immunoprofile.template.yaml_write import gate_to_dict

FORMAT_VERSION = 1

#: Columns of ``RUN/audit.csv``: one row per gate change.
AUDIT_COLUMNS = ("timestamp_utc", "user", "sample_id", "template", "population", "old_gate",
                 "new_gate", "old_count", "new_count", "reason", "file_sha256")

_FIELDS = ("sample_id", "template", "population", "file_sha256", "gate")

register("audit.csv (RUN/audit.csv: one row per gate change made with `flowjo apply`, "
         "`immunoprofile review` or `ip.batch.apply_overrides`; rows are only ever added)", (
             Column("timestamp_utc", "string", "When the change was made (ISO 8601, UTC)."),
             Column("user", "string", "Who made it (--by, or the review's reviewer field)."),
             Column("sample_id", "string", "The sample whose gate changed."),
             Column("template", "string", "Its template."),
             Column("population", "string", "The population whose gate was replaced."),
             Column("old_gate", "string", "The gate before, as one line of template YAML (the "
                    "adaptive position or the previous override)."),
             Column("new_gate", "string", "The override's gate, as one line of template YAML."),
             Column("old_count", "Int64", "The population's events before the change."),
             Column("new_count", "Int64", "Its events with the override."),
             Column("reason", "string", "Why (--reason)."),
             Column("file_sha256", "string", "SHA-256 of the FCS file the change was made on; "
                    "a later file with another checksum refuses the override."),
         ))


class OverrideError(ImmunoprofileError):
    """An override that is invalid or does not belong to the data it would be applied to."""


@dataclass(frozen=True)
class Override:
    """One population's gate replaced for one sample.

    Attributes
    ----------
    sample_id, template, population
        What it replaces.
    gate
        The gate used instead (template coordinates; fixed, never adapted).
    file_sha256
        SHA-256 of the FCS file the correction was made on.
    by, reason, timestamp_utc
        Who made it, why, and when (UTC, ISO 8601).
    """

    sample_id: str
    template: str
    population: str
    gate: Gate
    file_sha256: str
    by: str = ""
    reason: str = ""
    timestamp_utc: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        """``(sample_id, template, population)``: at most one override each."""
        return (self.sample_id, self.template, self.population)

    def to_dict(self) -> dict[str, Any]:
        """The entry as written in ``overrides.yaml``."""
        return {"sample_id": self.sample_id, "template": self.template,
                "population": self.population, "file_sha256": self.file_sha256,
                "gate": gate_to_dict(self.gate), "by": self.by, "reason": self.reason,
                "timestamp_utc": self.timestamp_utc}


def now_utc() -> str:
    """The current time as ``overrides.yaml`` and ``audit.csv`` record it."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def override_from_dict(entry: Any, *, where: str = "override") -> Override:
    """One override from its YAML mapping.

    Parameters
    ----------
    entry
        The mapping (``sample_id``, ``template``, ``population``, ``file_sha256``, ``gate``
        in its YAML form or as a :class:`~immunoprofile.template.model.Gate`; ``by``,
        ``reason``, ``timestamp_utc`` optional).
    where
        Names the entry in error messages.

    Returns
    -------
    Override
        The override.

    Raises
    ------
    OverrideError
        A field is missing or the gate is invalid; the message names the entry and field.
    """
    if not isinstance(entry, Mapping):
        raise OverrideError(f"{where}: an override is a mapping with {', '.join(_FIELDS)}")
    missing = [f for f in _FIELDS if entry.get(f) in (None, "")]
    if missing:
        raise OverrideError(f"{where}: missing {', '.join(missing)} (every override names the "
                            "sample, template, population, the file's sha256 and the gate)")
    try:
        gate = entry["gate"] if isinstance(entry["gate"], Gate) else \
            gate_from_dict(entry["gate"], where=f"{where}.gate")
    except TemplateError as exc:
        raise OverrideError(str(exc)) from exc
    return Override(sample_id=str(entry["sample_id"]), template=str(entry["template"]),
                    population=str(entry["population"]), gate=gate,
                    file_sha256=str(entry["file_sha256"]).lower(),
                    by=str(entry.get("by") or ""), reason=str(entry.get("reason") or ""),
                    timestamp_utc=str(entry.get("timestamp_utc") or ""))


def read_overrides(path: str | Path) -> list[Override]:
    """The overrides of a file (none when it does not exist).

    Parameters
    ----------
    path
        ``overrides.yaml``.

    Returns
    -------
    list of Override
        In file order.

    Raises
    ------
    OverrideError
        The file is not valid YAML, has an unknown version, an invalid entry, or two entries
        for the same sample, template and population; the message names the file and entry.
    """
    path = Path(path)
    if not path.is_file():
        return []
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise OverrideError(f"{path}: not valid YAML ({exc}); fix the file or restore it "
                            "from audit.csv") from exc
    if not isinstance(data, Mapping) or not isinstance(data.get("overrides", []), list):
        raise OverrideError(f"{path}: expected 'version: 1' and a list under 'overrides:'")
    if int(data.get("version", FORMAT_VERSION)) != FORMAT_VERSION:
        raise OverrideError(f"{path}: overrides format version {data.get('version')} is not "
                            f"supported (this immunoprofile reads version {FORMAT_VERSION})")
    out: list[Override] = []
    seen: dict[tuple[str, str, str], int] = {}
    for i, entry in enumerate(data.get("overrides") or []):
        ov = override_from_dict(entry, where=f"{path.name}, override {i + 1}")
        if ov.key in seen:
            raise OverrideError(f"{path.name}: overrides {seen[ov.key] + 1} and {i + 1} both "
                                f"replace {ov.template}/{ov.population} of {ov.sample_id}; "
                                "keep one")
        seen[ov.key] = i
        out.append(ov)
    return out


def write_overrides(path: str | Path, overrides: Iterable[Override]) -> Path:
    """Write ``overrides.yaml`` atomically.

    Parameters
    ----------
    path
        The file.
    overrides
        Every override of the run (this replaces the file).

    Returns
    -------
    pathlib.Path
        The path written.
    """
    text = overrides_text(overrides)
    return atomic_write(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def overrides_text(overrides: Iterable[Override]) -> str:
    """The text of ``overrides.yaml`` holding ``overrides``."""
    body = {"version": FORMAT_VERSION, "overrides": [o.to_dict() for o in overrides]}
    return ("# Per-sample gate overrides (immunoprofile). Each entry replaces one population's\n"
            "# gate for one sample; see the run's audit.csv for every change.\n"
            + yaml.safe_dump(body, sort_keys=False, allow_unicode=True))


def merge_overrides(existing: Iterable[Override], new: Iterable[Override]) -> list[Override]:
    """``existing`` with ``new`` added; a new override replaces one with the same key.

    Parameters
    ----------
    existing, new
        Overrides.

    Returns
    -------
    list of Override
        Existing order kept, new keys appended.
    """
    merged = {o.key: o for o in existing}
    for o in new:
        merged[o.key] = o
    return list(merged.values())


def for_sample(overrides: Iterable[Override], sample_id: str) -> tuple[Override, ...]:
    """The overrides of one sample.

    Parameters
    ----------
    overrides
        All overrides of a run.
    sample_id
        The sample.

    Returns
    -------
    tuple of Override
        Those with that ``sample_id``.
    """
    return tuple(o for o in overrides if o.sample_id == str(sample_id))


def check_file(overrides: Iterable[Override], digest: str, path: str | Path) -> None:
    """Refuse overrides made on another version of the file.

    Parameters
    ----------
    overrides
        One sample's overrides.
    digest
        The SHA-256 of the file now.
    path
        The file (named in the message).

    Raises
    ------
    OverrideError
        An override's ``file_sha256`` differs from ``digest``.
    """
    for o in overrides:
        if o.file_sha256.lower() != str(digest).lower():
            raise OverrideError(
                f"override of {o.template}/{o.population} for sample {o.sample_id} was made on "
                f"a file with sha256 {o.file_sha256[:12]}…, but {Path(path).name} now has "
                f"{str(digest)[:12]}…: the file changed since the gate was corrected. Check "
                "the gate on the new file, then renew or remove the override in overrides.yaml")


def apply_to_template(template: Template, overrides: Iterable[Override]) -> Template:
    """The template with each override's population gated by the override's fixed gate.

    Parameters
    ----------
    template
        The template (as the run uses it).
    overrides
        One sample's overrides; those of other templates are ignored.

    Returns
    -------
    Template
        A copy with the gates replaced and their adaptive rules dropped (an override is
        where the scientist put the gate).

    Raises
    ------
    OverrideError
        An override names a population the template does not have, or a gate whose markers
        the template does not know.
    """
    mine = {o.population: o for o in overrides if o.template == template.name}
    if not mine:
        return template
    unknown = [p for p in mine if p not in template]
    if unknown:
        raise OverrideError(f"override for template {template.name} names "
                            f"{', '.join(unknown)}, which the template does not have "
                            f"(populations: {', '.join(template.population_names)})")
    known = set(template.markers()) | set(template.transforms)
    pops = []
    for pop in template.populations:
        o = mine.get(pop.name)
        if o is not None:
            extra = {d.marker for d in o.gate.dims} - known
            if extra:
                raise OverrideError(f"override of {template.name}/{pop.name} for sample "
                                    f"{o.sample_id} gates on {', '.join(sorted(extra))}, "
                                    "which the template does not use")
            pop = replace(pop, gate=o.gate, adaptive=None)
        pops.append(pop)
    return template.with_populations(pops)


def gate_text(gate: Gate | None) -> str:
    """A gate as one line of YAML (for ``audit.csv``)."""
    if gate is None:
        return ""
    return yaml.safe_dump(gate_to_dict(gate), default_flow_style=True, width=10_000).strip()


def audit_rows(changes: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Rows for ``audit.csv``, in :data:`AUDIT_COLUMNS` order, as text."""
    return [{c: "" if ch.get(c) is None else str(ch.get(c)) for c in AUDIT_COLUMNS}
            for ch in changes]


def append_audit(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Add rows to ``audit.csv`` (created with its header), atomically.

    Parameters
    ----------
    path
        ``audit.csv``.
    rows
        Mappings with the :data:`AUDIT_COLUMNS`.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    path = Path(path)
    text = audit_text(path, rows)
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def audit_text(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> str:
    """The text of ``audit.csv`` with ``rows`` added to what ``path`` holds."""
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=AUDIT_COLUMNS, lineterminator="\n")
    if not old:
        writer.writeheader()
    writer.writerows(audit_rows(rows))
    return old + buf.getvalue()
