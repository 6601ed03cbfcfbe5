"""immunoprofile: flow-cytometry immune profiling for clinical trials.

``import immunoprofile as ip``; ``ip.read_fcs`` reads a file, ``ip.datasets`` simulates a trial.
"""

from immunoprofile import gating, panel, template
from immunoprofile._version import __version__
from immunoprofile.errors import (
    FCSError,
    ImmunoprofileError,
    PanelError,
    SampleSheetError,
    TemplateError,
)
from immunoprofile.gating import GatingResult, gate_sample
from immunoprofile.io import FCSSample, FCSWarning, read_fcs

__all__ = [
    "FCSError",
    "FCSSample",
    "FCSWarning",
    "GatingResult",
    "ImmunoprofileError",
    "PanelError",
    "SampleSheetError",
    "TemplateError",
    "__version__",
    "gate_sample",
    "gating",
    "panel",
    "read_fcs",
    "template",
]
