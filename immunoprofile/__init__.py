"""immunoprofile: flow-cytometry immune profiling for clinical trials.

``import immunoprofile as ip``; ``ip.read_fcs`` reads a file, ``ip.datasets`` simulates a trial.
"""

from immunoprofile._version import __version__
from immunoprofile.errors import (
    FCSError,
    ImmunoprofileError,
    PanelError,
    SampleSheetError,
    TemplateError,
)
from immunoprofile.io import FCSSample, read_fcs

__all__ = [
    "FCSError",
    "FCSSample",
    "ImmunoprofileError",
    "PanelError",
    "SampleSheetError",
    "TemplateError",
    "__version__",
    "read_fcs",
]
