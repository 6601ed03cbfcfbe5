"""What a batch run does to each sample, and the rows it reports when something fails.

Shared by the task (:mod:`._task`), the parts (:mod:`._parts`) and the run (:mod:`._gate`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from immunoprofile.errors import ImmunoprofileError, TemplateError
from immunoprofile.gating.rows import RARE_THRESHOLD
from immunoprofile.template.model import Template
from immunoprofile.template.yaml_io import load_template, shipped_templates


@dataclass
class BatchSettings:
    """What a run does to every sample (part of the resume key)."""

    keep_events: int = 20_000
    seed: int = 0
    qc: bool | None = None  # None: each template's own `qc:` section decides
    plots: bool = True
    adaptive: bool = True
    rare_threshold: int = RARE_THRESHOLD

    def key(self) -> dict[str, Any]:
        """The settings as the resume key and ``run.json`` record them."""
        return dict(self.__dict__)

    @property
    def random_state(self) -> int:
        """The seed under scikit-learn's and scanpy's name."""
        return self.seed


@dataclass
class SampleOutcome:
    """What one sample task reports back (small: the big parts are on disk)."""

    sample_id: str
    status: str  # "ok", "partial", "failed", "resumed"
    n_events: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def resolve_templates(specs: Iterable[str | Path | Template]) -> list[Template]:
    """Templates from shipped names, YAML files, or folders of YAML files (in that order).

    Parameters
    ----------
    specs
        Each a :class:`~immunoprofile.template.Template`, a shipped template name, a YAML
        path, or a folder whose ``*.yaml`` then ``*.yml`` files are loaded in name order.

    Returns
    -------
    list of Template
        The templates, in the order given.

    Raises
    ------
    TemplateError
        A folder holds no ``.yaml`` file, or two templates share a name.
    """
    out: list[Template] = []
    for spec in specs:
        if isinstance(spec, Template):
            out.append(spec)
            continue
        path = Path(spec)
        if path.is_dir():
            files = sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml"))
            if not files:
                raise TemplateError(f"template folder {path} holds no .yaml files")
            out.extend(load_template(f) for f in files)
        else:
            out.append(load_template(spec))
    names = [t.name for t in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise TemplateError(f"several templates are named {', '.join(dupes)}: names must be "
                            f"unique in a run (shipped: {', '.join(shipped_templates())})")
    return out


def named_in_panel(panel: Any, template: Template) -> bool:
    """Whether a sample-sheet `panel` value names this template (``treg`` or ``bcell;plasma``).

    Parameters
    ----------
    panel
        The row's ``panel`` cell: template names separated by ``;`` or ``,``; anything but a
        non-empty string (NaN, None) names no template.
    template
        The template whose name is looked for.

    Returns
    -------
    bool
        True when the template's name is one of the listed names (exact, case-sensitive).
    """
    if not isinstance(panel, str) or not panel:
        return False
    return template.name in {p.strip() for p in panel.replace(",", ";").split(";")}


def _hint(stage: str, exc: BaseException) -> str:
    if stage == "read":
        return ("check that the file is a complete FCS file (re-export it from the "
                "acquisition software) and that the path in the sample sheet is right")
    if stage == "fit":
        return ("add the missing markers to the file's $PnS labels, give a panel mapping, or "
                "set the row's `panel` to templates that fit this tube")
    if stage == "gate":
        return "inspect this sample's gating plot and the template; rerun with --resume"
    return "see the error; rerun with --resume once fixed"


def error_row(row: dict, template: str, stage: str,
              exc: BaseException | str) -> dict[str, str]:
    """One row of ``errors.csv``: the sample, file, template and stage, what went wrong and
    what to do (the columns of :data:`immunoprofile.tables.ERRORS`).

    Parameters
    ----------
    row
        The sample-sheet row (its ``sample_id`` and ``path``).
    template
        The template concerned ('' when the file itself failed).
    stage
        ``read``, ``qc``, ``fit``, ``gate`` or ``output``; it chooses the hint.
    exc
        The failure: a message, used as it is, or an exception, whose text (its type's name
        when empty) is prefixed with its type's name unless it is an
        :class:`~immunoprofile.errors.ImmunoprofileError`.

    Returns
    -------
    dict of str
        The row: ``sample_id``, ``path``, ``template``, ``stage``, ``error``, ``hint``.
    """
    text = exc if isinstance(exc, str) else (str(exc) or type(exc).__name__)
    if not isinstance(exc, str | ImmunoprofileError):
        text = f"{type(exc).__name__}: {text}"
    return {"sample_id": str(row["sample_id"]), "path": str(row["path"]),
            "template": template, "stage": stage, "error": text,
            "hint": _hint(stage, exc) if not isinstance(exc, str) else _hint(stage, Exception())}
