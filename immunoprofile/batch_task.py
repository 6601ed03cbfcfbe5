"""Old home of the per-sample batch task; kept so existing imports keep working.

The task now lives in :mod:`immunoprofile.batch` (``_task``: pure, row in, rows out;
``_parts``: the files).
"""

from immunoprofile.batch import (
    SampleWork,
    events_for_sample,
    gate_row,
    kept_events,
    process_sample,
    qc_applies,
)
from immunoprofile.gating.rows import BEADS
from immunoprofile.template.model import LYMPHOCYTE_REFERENCE

__all__ = ["BEADS", "LYMPHOCYTE_REFERENCE", "SampleWork", "events_for_sample", "gate_row",
           "kept_events", "process_sample", "qc_applies"]
