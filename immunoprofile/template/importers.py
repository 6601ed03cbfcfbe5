"""Which importer reads a gating file: FlowJo 10 workspace, FlowJo 9/X workspace, FACSDiva
experiment or GatingML 2.0, told apart by their content (not their extension alone)."""

from __future__ import annotations

from pathlib import Path

from immunoprofile.errors import TemplateError
from immunoprofile.template.model import Template


def gating_file_kind(path: str | Path) -> str:
    """``"flowjo9"``, ``"diva"``, ``"flowjo"`` (FlowJo 10 ``.wsp``) or ``"gatingml"``.

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    str
        Its kind, from its root element (a FlowJo 9 workspace may also end in ``.wsp``).
    """
    # start-up time: each reader's module is loaded when its kind is asked for
    from immunoprofile.template.diva import is_diva
    from immunoprofile.template.flowjo9 import is_flowjo9

    path = Path(path)
    if not path.is_file():
        raise TemplateError(f"{path} does not exist")
    if is_flowjo9(path):
        return "flowjo9"
    if is_diva(path):
        return "diva"
    return "flowjo" if path.suffix.lower() == ".wsp" else "gatingml"


def import_template(path: str | Path, *, sample: str | None = None, group: str = "All Samples",
                    name: str | None = None) -> Template:
    """Read any supported gating file as a template (``immunoprofile template import``).

    Parameters
    ----------
    path
        A FlowJo 10 workspace, a FlowJo 9/X workspace (versions 2.0 and 3.0), a FACSDiva
        experiment XML or a GatingML 2.0 file.
    sample
        FlowJo: the sample whose gates to take (name or FCS file name); FACSDiva: the tube
        (name, ``specimen/tube`` or FCS file name). Default: the first with gates.
    group
        FlowJo 10: the sample group.
    name
        Template name (default: the file name).

    Returns
    -------
    Template
        The gates, transforms and compensation of the file, in its channel names.
    """
    kind = gating_file_kind(path)
    if kind == "flowjo9":
        from immunoprofile.template.flowjo9 import read_flowjo9  # start-up time: on use

        return read_flowjo9(path, sample=sample, name=name)
    if kind == "diva":
        from immunoprofile.template.diva import read_diva  # start-up time: on use

        return read_diva(path, tube=sample, name=name)
    # start-up time: FlowKit loads only when a FlowJo 10 or GatingML file is read
    from immunoprofile.template.gatingml import read_flowjo, read_gatingml

    if kind == "flowjo":
        return read_flowjo(path, group=group, sample=sample, name=name)
    return read_gatingml(path, name=name)
