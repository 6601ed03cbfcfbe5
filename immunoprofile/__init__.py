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


def __getattr__(name: str):
    # Plotting and analysis load matplotlib, scanpy and friends: import them on first use so
    # that `import immunoprofile` stays quick for pipelines that only gate.
    if name in ("pl", "tl", "datasets", "batch", "tables"):
        import importlib

        return importlib.import_module(f"immunoprofile.{name}")
    raise AttributeError(f"module 'immunoprofile' has no attribute {name!r}")
