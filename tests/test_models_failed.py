"""What a readout's model gives when it cannot fit: every contrast it could ask for, named,
without estimates, and a warning that says why (model_failed recognises them)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from immunoprofile.tl._models import FAILED, TOO_FEW, Design, fit_contrasts, model_failed

DESIGN = Design(control="SOC", baseline="W0")


def _data(rng: np.random.Generator, arms=("SOC", "IL2"), tps=("W0", "W12"),
          per_arm: int = 4) -> pd.DataFrame:
    rows = []
    for a, arm in enumerate(arms):
        for p in range(per_arm):
            for tp in tps:
                rows.append({"patient_id": f"{arm}{p}", "arm": arm, "timepoint": tp,
                             "value": 10 + a * (tp == "W12") + rng.normal(0, 1)})
    return pd.DataFrame(rows)


def test_a_readout_that_fits_is_not_failed() -> None:
    res = fit_contrasts(_data(np.random.default_rng(0)), DESIGN, model_name="lmm")
    assert set(res["contrast_type"]) == {"arm_vs_control", "change_from_baseline",
                                         "change_vs_control"}
    assert res["pvalue"].notna().all() and not model_failed(res)


def test_no_value_at_all_names_every_contrast_and_fails() -> None:
    data = _data(np.random.default_rng(1)).assign(value=np.nan)
    res = fit_contrasts(data, DESIGN, model_name="lmm")
    # SOC and IL2 at W0 and W12: IL2 vs SOC twice, change from baseline per arm, and the
    # difference in differences
    assert len(res) == 5 and res["pvalue"].isna().all()
    assert (res["warning"] == f"{FAILED}: no value to fit").all()
    assert model_failed(res)
    # the rows of the contrast's cells: two cells of 4, four for the difference in differences
    assert res["n_samples"].tolist() == [8, 8, 8, 8, 16]


def test_too_few_patients_keeps_only_contrasts_whose_cells_have_values() -> None:
    data = _data(np.random.default_rng(2), per_arm=1)
    data.loc[(data["arm"] == "IL2") & (data["timepoint"] == "W12"), "value"] = np.nan
    res = fit_contrasts(data, DESIGN, model_name="lmm")
    assert model_failed(res) and res["warning"].str.contains(TOO_FEW).all()
    # IL2 has no value at W12: the contrasts that need that cell are not listed
    kept = set(zip(res["contrast_type"], res["arm"], res["timepoint"]))
    assert kept == {("arm_vs_control", "IL2", "W0"), ("change_from_baseline", "SOC", "W12")}


def test_a_failed_fit_is_reported_per_contrast() -> None:
    def failing(y, X, groups):
        return None, None, f"{FAILED}: singular information matrix"

    res = fit_contrasts(_data(np.random.default_rng(3)), DESIGN, model_name="x", fit=failing)
    assert len(res) and res["pvalue"].isna().all() and model_failed(res)
    assert res["warning"].str.contains("singular information matrix").all()


def test_model_failed_needs_every_row_to_say_so() -> None:
    res = fit_contrasts(_data(np.random.default_rng(4)), DESIGN, model_name="lmm")
    assert not model_failed(res.iloc[:0])  # no rows: nothing failed
    mixed = res.copy()
    mixed["pvalue"] = np.nan
    mixed.loc[mixed.index[0], "warning"] = "some other note"
    assert not model_failed(mixed)
