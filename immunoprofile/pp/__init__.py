"""Preprocessing of FCS data before gating, scanpy-style: ``ip.pp.qc(sample)``.

``qc`` is :func:`immunoprofile.gating.qc.acquisition_qc` (margin events, abnormal flow rate,
shifted signal), returning a :class:`~immunoprofile.gating.qc.QCResult` whose ``mask`` a
notebook passes to ``ip.gate_sample(..., event_mask=result.mask)``.
"""

from immunoprofile.gating.qc import REASONS, QCResult, acquisition_qc

qc = acquisition_qc

__all__ = ["REASONS", "QCResult", "acquisition_qc", "qc"]
