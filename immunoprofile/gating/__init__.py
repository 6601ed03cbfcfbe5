"""Gating: compensation, transforms, gate evaluation (and, later, adaptive gates and QC)."""

from immunoprofile.gating.engine import GatingResult, gate_sample, required_markers, slug

__all__ = ["GatingResult", "gate_sample", "required_markers", "slug"]
