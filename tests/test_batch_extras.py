"""Small batch behaviours: numeric sheet columns, the resume key, atomic plot files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd

import immunoprofile
from immunoprofile.batch import BatchSettings, gate_samples, resume_key
from immunoprofile.datasets import simulate_tube
from immunoprofile.io.fcs_write import write_fcs


def test_all_empty_numeric_column_stays_numeric(tmp_path: Path) -> None:
    """A sheet column with no values (e.g. no IL-2 arm, so no dosing days) is float NaN in
    the subset table, not object None (which AnnData cannot write)."""
    rows = []
    for i, (patient, arm) in enumerate([("P1", "A"), ("P2", "B")]):
        tube = simulate_tube("treg", 4000, seed=i)
        write_fcs(tmp_path / f"s{i}.fcs", tube.events, tube.pnn, tube.pns,
                  spillover=tube.spillover)
        rows.append({"sample_id": f"s{i}", "path": f"s{i}.fcs", "patient_id": patient,
                     "arm": arm, "timepoint": "W0", "days_since_last_il2_dose": ""})
    pd.DataFrame(rows).to_csv(tmp_path / "sheet.csv", index=False)
    run = gate_samples(tmp_path / "sheet.csv", ["treg"], tmp_path / "run", workers=1,
                       settings=BatchSettings(plots=False, keep_events=500))
    col = run.subsets["days_since_last_il2_dose"]
    assert col.dtype == np.float64 and col.isna().all()
    assert pd.read_parquet(tmp_path / "run" / "subsets.parquet")[
        "days_since_last_il2_dose"].dtype == np.float64


def test_resume_key_changes_with_the_code_version(monkeypatch) -> None:
    row = {"sample_id": "s", "path": "s.fcs", "patient_id": "p"}
    before = resume_key(row, "abc", [], BatchSettings())
    monkeypatch.setattr("immunoprofile.batch._parts.__version__", "999.0")
    assert resume_key(row, "abc", [], BatchSettings()) != before
    assert before["immunoprofile"] == immunoprofile.__version__


def test_plots_are_written_atomically_with_normal_permissions(tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    from immunoprofile.pl._figures import save_png

    fig = Figure()
    fig.add_subplot().plot([0, 1], [0, 1])
    path = tmp_path / "sub" / "plot.png"
    save_png(fig, path, 50)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(path.parent.glob("*.tmp"))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
