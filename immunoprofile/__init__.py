"""immunoprofile: flow-cytometry immune profiling for clinical trials.

``import immunoprofile as ip``; ``ip.read_fcs`` reads a file, ``ip.gate_sample`` gates it
(``result.to_table(metadata)`` gives its subset-table rows), ``ip.Run`` opens a run folder,
``ip.pp.qc`` checks its acquisition, ``ip.read_samplesheet`` and ``ip.gate_samples`` run a
study, ``ip.tl`` / ``ip.pl`` analyse and plot, ``ip.cba`` and ``ip.clinical`` handle cytokines
and clinical indexes, ``ip.datasets`` simulates a trial.
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
from immunoprofile.gating import GatingResult, PreparedSample, gate_sample, prepare_sample
from immunoprofile.io import FCSSample, FCSWarning, read_fcs
from immunoprofile.run import Run

__all__ = [
    "FCSError",
    "FCSSample",
    "FCSWarning",
    "GatingResult",
    "ImmunoprofileError",
    "PanelError",
    "PreparedSample",
    "Run",
    "SampleSheetError",
    "TemplateError",
    "__version__",
    "gate_sample",
    "gating",
    "panel",
    "prepare_sample",
    "read_fcs",
    "template",
]


# Reached on first use, so that `import immunoprofile` stays quick for pipelines that only
# gate (plotting and analysis load matplotlib, scanpy and friends).
_LAZY_MODULES = ("pl", "tl", "pp", "datasets", "batch", "tables", "assemble", "cba",
                 "clinical", "cluster", "compare", "report", "demo")
_LAZY_NAMES = {
    "read_samplesheet": "immunoprofile.io.samplesheet",
    "gate_samples": "immunoprofile.batch",
    "BatchSettings": "immunoprofile.batch",
    "timepoint_anndata": "immunoprofile.assemble",
    "sample_anndata": "immunoprofile.assemble",
    "write_report": "immunoprofile.report",
    "load_template": "immunoprofile.template",
    "acquisition_qc": "immunoprofile.gating.qc",
}


def __getattr__(name: str):
    import importlib  # start-up time: resolved on first use of a lazy name

    if name in _LAZY_MODULES:
        return importlib.import_module(f"immunoprofile.{name}")
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(_LAZY_NAMES[name]), name)
    raise AttributeError(f"module 'immunoprofile' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_MODULES, *_LAZY_NAMES})
