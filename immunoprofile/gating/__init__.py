"""Gating: compensation, transforms, gate evaluation (and, later, adaptive gates and QC)."""

from immunoprofile.gating.engine import (
    GatingResult,
    gate_sample,
    pct_of_column,
    required_markers,
    slug,
)
from immunoprofile.gating.prepared import PreparedSample, prepare_sample
from immunoprofile.gating.rows import subset_rows

__all__ = [
    "GatingResult",
    "PreparedSample",
    "gate_sample",
    "pct_of_column",
    "prepare_sample",
    "required_markers",
    "slug",
    "subset_rows",
]
