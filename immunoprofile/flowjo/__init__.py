"""FlowJo round trip: a run as a FlowJo 10 workspace, and gates edited there back as
per-sample overrides (``immunoprofile flowjo export|apply``)."""

from immunoprofile.flowjo.apply import apply_workspace, edited_overrides
from immunoprofile.flowjo.export import SAMPLE_ID_KEYWORD, export_workspace

__all__ = ["SAMPLE_ID_KEYWORD", "apply_workspace", "edited_overrides", "export_workspace"]
