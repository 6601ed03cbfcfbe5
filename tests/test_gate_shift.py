"""A treatment that moves a gate's marker without moving the population (#20): IL-2 raising
CD25 on every CD4 T cell, with Treg numbers unchanged, gated with adaptive gates and with each
patient's gates locked at baseline (``gate_mode``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import immunoprofile as ip
from immunoprofile.batch import BatchSettings, gate_baseline_locked, gate_samples, moves_with
from immunoprofile.template import load_template

SETTINGS = BatchSettings(plots=False, keep_events=500)


@pytest.fixture(scope="module")
def shifted(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    from immunoprofile.datasets import simulate_cohort

    root = tmp_path_factory.mktemp("cd25_shift")
    cohort = simulate_cohort(root / "cohort", patients_per_arm=5, n_events=12_000,
                             visits=(0, 2), arms=("IL2", "SOC"), seed=8, il2_cd25_shift=True)
    run = root / "run"
    gate_samples(cohort.out / "samplesheet.csv", ["treg"], run, workers=2, settings=SETTINGS)
    locked = gate_baseline_locked(cohort.out / "samplesheet.csv", ["treg"], run,
                                  baseline="W0", settings=SETTINGS)
    comparison = ip.compare.compare_run(run, control="SOC", baseline="W0", responder=None,
                                        plots=False)
    return run, locked, comparison.abundance, cohort


def test_the_scenario_moves_cd25_not_treg(shifted) -> None:
    *_, cohort = shifted
    effects = cohort.effects
    treg = effects[(effects["population"] == "Treg") & (effects["arm"] == "IL2")
                   & (effects["readout"] == "count")]
    assert (treg["full_response_fold_change"] == 1.0).all()
    cd25 = effects[(effects["readout"] == "CD25 MFI") & (effects["arm"] == "IL2")
                   & (effects["week"] == 2)]
    assert float(cd25["full_response_fold_change"].iloc[0]) > 1.5


def test_locked_rows_cover_the_populations_cd25_gates(shifted) -> None:
    run, locked, _, _ = shifted
    treg = load_template("treg")
    assert "Treg" in moves_with(treg) and "CD4+ T cells" not in moves_with(treg)
    assert set(locked["population"]) == set(moves_with(treg))
    assert (locked["gate_mode"] == "baseline_locked").all()
    # at baseline the locked gates are the run's own: same counts
    adaptive = ip.Run(run).subsets
    base = locked[locked["timepoint"].astype(str) == "W0"]
    merged = base.merge(adaptive, on=["sample_id", "template", "population"],
                        suffixes=("", "_run"))
    assert len(merged) == len(base) and (merged["count"] == merged["count_run"]).all()


def test_both_gate_modes_are_compared(shifted) -> None:
    _, _, abundance, _ = shifted
    assert set(abundance["gate_mode"]) == {"adaptive", "baseline_locked"}
    rows = abundance[(abundance["population"] == "Treg")
                     & (abundance["contrast_type"] == "change_vs_control")
                     & (abundance["reference"] == "parent")]
    by_mode = rows.set_index("gate_mode")
    assert set(by_mode.index) == {"adaptive", "baseline_locked"}
    # Treg numbers did not change. A gate frozen at baseline takes in the conventional CD4 T
    # cells whose CD25 rose: a false Treg increase. The shipped adaptive gate, aligned on the
    # conventional cells' CD25, moves with them and reports about half of it or less. The two
    # readouts side by side are what tells a marker shift from a population change.
    locked, adaptive = by_mode.loc["baseline_locked"], by_mode.loc["adaptive"]
    assert locked["estimate"] > 0.3 and locked["pvalue"] < 0.05
    assert adaptive["estimate"] < 0.6 * locked["estimate"]
