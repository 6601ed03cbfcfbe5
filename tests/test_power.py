"""Power and sample size (`ip.tl.power`, `immunoprofile power`) by simulation with the
comparison's own models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import immunoprofile as ip
from immunoprofile.datasets import simulate_counts
from immunoprofile.errors import ImmunoprofileError


def test_power_grows_with_patients_and_is_alpha_under_the_null() -> None:
    table = ip.tl.power({"IL2:Treg": 1.6, "TEL:B cells": 1.0}, patients_per_arm=(4, 16),
                        n_trials=40, seed=1)
    assert list(table.columns[:5]) == ["arm", "population", "fold_change",
                                       "patients_per_arm", "power"]
    treg = table[table["population"] == "Treg"].set_index("patients_per_arm")
    assert treg.loc[16, "power"] > treg.loc[4, "power"] and treg.loc[16, "power"] > 0.8
    null = table[table["population"] == "B cells"]
    # fold 1: "power" is the false-positive rate in one direction (≈ α/2 = 2.5%)
    assert (null["power"] <= 0.15).all()
    assert (table["coverage"] >= 0.8).all()
    assert np.allclose(treg["true_log_odds_ratio"], np.log(1.6))
    assert (treg["power_ci_low"] <= treg["power"]).all()
    assert (treg["power"] <= treg["power_ci_high"]).all()


def test_results_do_not_depend_on_processes() -> None:
    one = ip.tl.power(["IL2:Treg=1.5"], patients_per_arm=6, n_trials=12, n_jobs=1)
    two = ip.tl.power(["IL2:Treg=1.5"], patients_per_arm=6, n_trials=12, n_jobs=2)
    pd.testing.assert_frame_equal(one, two)


def test_variability_is_estimated_from_a_run_table() -> None:
    sim = simulate_counts(patients_per_arm=12, sd_patient=0.5, sd_visit=0.2,
                          populations={"Treg": 5.0}, parent_count=(4000, 6000), seed=3)
    var = ip.tl.estimate_variability(sim.subsets, baseline="W0")
    row = var.loc["Treg"]
    assert 0.35 < row["sd_patient"] < 0.65 and 0.12 < row["sd_visit"] < 0.28
    assert 4.0 < row["baseline_pct"] < 6.2 and 4000 <= row["parent_count"] <= 6000
    table = ip.tl.power({"IL2:Treg": 1.5}, patients_per_arm=8, n_trials=10, variability=var)
    assert table["n_trials"].iloc[0] == 10


def test_bad_effects_say_what_to_write() -> None:
    with pytest.raises(ImmunoprofileError, match=r"IL2:Treg=1\.5"):
        ip.tl.power(["IL2:Treg"])
    with pytest.raises(ImmunoprofileError, match="ARM:POPULATION=FOLD"):
        ip.tl.power({"Treg": 1.5})
    with pytest.raises(ImmunoprofileError, match="no variability for Monocytes"):
        ip.tl.power({"IL2:Monocytes": 1.5})
    with pytest.raises(ImmunoprofileError, match="positive"):
        ip.tl.power({"IL2:Treg": 0})


def test_power_cli(tmp_path: Path) -> None:
    out = tmp_path / "power.csv"
    res = subprocess.run([sys.executable, "-m", "immunoprofile.cli", "power", "--effect",
                          "TEL:Plasmablasts=0.6", "--patients", "8", "--trials", "10",
                          "--jobs", "1", "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "Plasmablasts" in res.stdout and out.is_file()
    assert pd.read_csv(out)["n_trials"].tolist() == [10]
    bad = subprocess.run([sys.executable, "-m", "immunoprofile.cli", "power", "--effect", "x"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "ARM:POPULATION=FOLD" in bad.stderr


def test_rare_population_variability_is_not_zeroed() -> None:
    """Tens of events per sample: the visit SD beyond binomial sampling is still seen."""
    sim = simulate_counts(patients_per_arm=10, sd_patient=0.6, sd_visit=0.3,
                          populations={"Plasmablasts": 4.0}, parent_count=(300, 600), seed=4)
    row = ip.tl.estimate_variability(sim.subsets, baseline="W0").loc["Plasmablasts"]
    assert 0.12 < row["sd_visit"] < 0.5 and 0.35 < row["sd_patient"] < 0.9


def test_no_effect_gives_the_false_positive_rate() -> None:
    table = ip.tl.power({"TEL:B cells": 1.0}, patients_per_arm=6, n_trials=60, seed=3)
    assert 0.0 < table["power"].iloc[0] <= 0.15
