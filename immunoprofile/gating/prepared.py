"""One sample made ready for one template: the panel resolved once, one ``EventSpace``.

A :class:`PreparedSample` lives through a sample's whole processing: gating reads its values,
the kept-event subsample and the gating plots read the same ``EventSpace`` (compensation
solved once per channel and event, transforms computed once), and the plots take the template
as written from it instead of re-reading the YAML.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from immunoprofile.gating.events import EventSpace
from immunoprofile.io.fcs import FCSSample, read_fcs
from immunoprofile.panel import resolve_markers
from immunoprofile.template.model import BooleanGate, Template
from immunoprofile.template.yaml_io import load_template


@dataclass
class PreparedSample:
    """A sample, a template, the file's channel for each marker, and their ``EventSpace``.

    Attributes
    ----------
    sample
        The decoded FCS data set.
    template
        The template as written (default gate positions).
    channels
        ``{marker: $PnN}`` as resolved for this file (required and optional markers found).
    not_measured
        ``{population: reason}`` for populations the file cannot be gated for.
    passed
        ``{population: note}`` for ``if_missing: pass`` gates whose markers are absent.
    space
        The values gates, kept events and plots read.
    """

    sample: FCSSample
    template: Template
    channels: dict[str, str]
    not_measured: dict[str, str] = field(default_factory=dict)
    passed: dict[str, str] = field(default_factory=dict)
    space: EventSpace = field(default=None, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.space is None:
            self.space = EventSpace(self.sample, self.template, self.channels)


def prepare_sample(sample: FCSSample | str | Path, template: Template | str | Path, *,
                   mapping: dict[str, str] | None = None) -> PreparedSample:
    """Resolve a template's markers on a file and set up its values.

    Parameters
    ----------
    sample
        An :class:`~immunoprofile.io.fcs.FCSSample` or a path to an FCS file.
    template
        A :class:`~immunoprofile.template.Template`, a YAML path or a shipped template name.
    mapping
        Explicit ``{marker: channel}`` for this file's panel (see :mod:`immunoprofile.panel`).

    Returns
    -------
    PreparedSample
        Ready for :func:`~immunoprofile.gating.engine.gate_sample`.

    Raises
    ------
    PanelError
        The file lacks a required marker ("template treg needs CD25, file … has …").
    """
    if not isinstance(sample, FCSSample):
        sample = read_fcs(sample)
    template = load_template(template)
    required, optional = required_markers(template)
    who = f"template {template.name}"
    channel_of = resolve_markers(sample, required, mapping=mapping, what=who)
    channel_of.update(resolve_markers(sample, optional, mapping=mapping, optional=optional))
    return PreparedSample(sample=sample, template=template, channels=channel_of,
                          not_measured=_not_measured(template, channel_of),
                          passed=_passed_through(template, channel_of))


def _not_measured(template: Template, channel_of: dict[str, str]) -> dict[str, str]:
    """Populations that cannot be gated on this file, with the reason.

    A population with ``if_missing: pass`` whose markers are absent is not listed here but in
    :func:`_passed_through`: its parent's events flow on to its children.
    """
    out: dict[str, str] = {}
    for pop in template.populations:
        lacking = sorted(m for d in pop.gate.dims for m in d.markers() if m not in channel_of)
        if lacking and pop.if_missing == "pass" and pop.parent not in out:
            continue
        if lacking:
            out[pop.name] = f"needs {', '.join(lacking)}, absent from the file"
        elif pop.parent in out:
            out[pop.name] = f"parent {pop.parent!r} not measured"
        elif isinstance(pop.gate, BooleanGate):
            gone = [r for r, _ in pop.gate.refs if r in out]
            if gone:
                out[pop.name] = f"depends on {', '.join(gone)}, not measured"
    return out


def _passed_through(template: Template, channel_of: dict[str, str]) -> dict[str, str]:
    out = {}
    for pop in template.populations:
        lacking = sorted(m for d in pop.gate.dims for m in d.markers() if m not in channel_of)
        if lacking and pop.if_missing == "pass":
            out[pop.name] = (f"gate not applied: needs {', '.join(lacking)}, absent from the "
                             "file; parent events passed through")
    return out


def required_markers(template: Template) -> tuple[list[str], list[str]]:
    """(required, optional) markers of a template; undeclared ones are required.

    Parameters
    ----------
    template
        The template; its declared ``required_markers`` win, otherwise every marker its
        gates use that is not declared optional.

    Returns
    -------
    tuple of list of str
        The required markers and the optional ones (those not also required).
    """
    optional = list(template.optional_markers)
    used = template.markers()
    required = list(template.required_markers) or [m for m in used if m not in optional]
    return required, [m for m in optional if m not in required]
