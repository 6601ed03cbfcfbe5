"""Null calibration with a generator that is not the fitted model (#20): a small version of
``benchmarks/bench_calibration.py`` (beta-binomial counts, log-normal MFIs), and the boundary
rule of the mixed-model fit."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from immunoprofile.tl._models import Design, fit_contrasts

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_calibration.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_calibration", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def calibration() -> pd.DataFrame:
    bench = _bench()
    wanted = ("abundance, no patient variance", "abundance, large patient variance",
              "abundance, rare (~15 events)", "state, no patient variance",
              "cytokine, 30% below LLOQ", "cytokine, 85% below LLOQ")
    scenarios = [s for s in bench.SCENARIOS if s.name in wanted]
    return bench.calibrate(scenarios, sims=6, seed=11).set_index("scenario")


def test_null_pvalues_are_uniform_on_data_the_model_did_not_generate(calibration) -> None:
    # ~1,400 correlated p-values per scenario: bounds wide enough for that size; the
    # benchmark's 40 simulations hold the 3-7% / 0.45-0.55 bounds (benchmarks/README.md).
    for name, row in calibration.iterrows():
        assert row["share_not_estimable"] == 0, name  # every contrast answered
        if "85%" in name:  # ~1 value in range per cell: a discrete, conservative test
            assert row["share_p<0.05"] <= 0.05, (name, row["share_p<0.05"])
            continue
        assert 0.02 <= row["share_p<0.05"] <= 0.09, (name, row["share_p<0.05"])
        assert 0.44 <= row["mean_p"] <= 0.56, (name, row["mean_p"])


def test_boundary_fits_fall_back_to_least_squares_and_say_so() -> None:
    """No patient variance at all: statsmodels' boundary 'fit' (log-likelihood +inf) is not
    used; the model is refitted without the random effect and the warning says so."""
    rng = np.random.default_rng(4)
    rows = [{"patient_id": f"P{a}{p}", "arm": arm, "timepoint": tp,
             "value": rng.normal(0, 1)}
            for a, arm in enumerate(("A", "B")) for p in range(8) for tp in ("W0", "W4")]
    data = pd.DataFrame(rows)
    res = fit_contrasts(data, Design(control="B", baseline="W0"), model_name="m")
    assert res["pvalue"].notna().all()
    assert res["warning"].str.contains("without the random effect").all()
    # and with real patient variance the mixed model is kept
    shift = {p: rng.normal(0, 3) for p in data["patient_id"].unique()}
    data["value"] += data["patient_id"].map(shift)
    res = fit_contrasts(data, Design(control="B", baseline="W0"), model_name="m")
    assert not res["warning"].str.contains("without the random effect").any()


def _brute_mid_p(stat_of, draws, observed, centre) -> float:
    values = np.array([abs(stat_of(d) - centre) for d in draws])
    obs = abs(observed - centre)
    return float(np.mean(values > obs + 1e-9) + 0.5 * np.mean(np.abs(values - obs) <= 1e-9))


def test_rank_tests_are_exact_mid_p() -> None:
    """Censored readouts' rank tests: exact permutation mid-p (checked against enumerating
    every permutation), so heavy ties neither make them conservative in the bulk (mean p ½
    under the null) nor answer 'p = 1' to all-tied data."""
    from itertools import combinations, product

    from scipy import stats

    from immunoprofile.tl._detectable import _mannwhitney, _signed_rank

    rng = np.random.default_rng(3)
    x = np.array([-9, -9, -9, 1.2, -9, 0.3, -9])  # ties at the bottom, as censored values
    y = np.array([-9, 2.0, -9, -9, 0.7, 1.9, -9, 3.1, -9])
    ranks = stats.rankdata(np.concatenate([x, y]))
    expected = _brute_mid_p(lambda idx: ranks[list(idx)].sum(),
                            combinations(range(16), 7), ranks[:7].sum(), 7 * 17 / 2)
    assert _mannwhitney(x, y) == pytest.approx(expected)
    d = np.array([0.0, 0.0, 1.5, -0.4, 2.2, 0.9, 0.9, -1.1, 3.0, 0.0])
    r = stats.rankdata(np.abs(d))  # Pratt: zeros ranked, then dropped
    nz = d != 0
    expected = _brute_mid_p(lambda signs: r[nz][np.array(signs) > 0].sum(),
                            product([1, -1], repeat=int(nz.sum())),
                            r[d > 0].sum(), r[nz].sum() / 2)
    assert _signed_rank(d) == pytest.approx(expected)
    assert _mannwhitney(np.zeros(8), np.zeros(8)) == 0.5
    assert _signed_rank(np.zeros(8)) == 0.5
    # null, 85% tied at the bottom, 8 vs 8: mean p ½ and never liberal
    ps = np.array([_mannwhitney(np.where(rng.random(8) < 0.15, rng.normal(size=8), -9),
                                np.where(rng.random(8) < 0.15, rng.normal(size=8), -9))
                   for _ in range(800)])
    assert 0.47 < ps.mean() < 0.53 and (ps < 0.05).mean() < 0.05


def test_models_fitted_in_parallel_give_the_same_tables() -> None:
    """compare fits its models on every core; the tables must not depend on it."""
    import immunoprofile as ip

    bench = _bench()
    rng = np.random.default_rng(5)
    counts = bench.simulate(bench.SCENARIOS[1], rng, n_per_arm=4, n_readouts=14)
    one = ip.tl.differential_abundance(counts, control="SOC", baseline="W0", n_jobs=1)
    two = ip.tl.differential_abundance(counts, control="SOC", baseline="W0", n_jobs=2)
    pd.testing.assert_frame_equal(one, two)
    mfi = bench.simulate(bench.SCENARIOS[5], rng, n_per_arm=4, n_readouts=14)
    one = ip.tl.differential_state(mfi, control="SOC", baseline="W0", n_jobs=1)
    two = ip.tl.differential_state(mfi, control="SOC", baseline="W0", n_jobs=-1)
    pd.testing.assert_frame_equal(one, two)
    assert len(one) > 14
