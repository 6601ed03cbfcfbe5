"""Sanity tests of the independent second-cohort generator (``tests/alt_cohort.py``).

They check the generator, not the templates: files read back, channels resolve by marker,
the stored spillover compensates the raw data back to the true fluorescence, the truth table
matches the per-event labels, and an oracle that knows each sample's staining and scatter
shifts recovers the true percentages, so the truth is gateable in principle.
"""

from __future__ import annotations

import ast
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from alt_cohort import (
    LEAVES,
    PANELS,
    SATURATION,
    AltTube,
    design_cohort,
    iter_alt_tubes,
    make_alt_cohort,
    simulate_tube,
)

import immunoprofile as ip
from immunoprofile.panel import resolve_markers

N_SAMPLES, N_EVENTS, SEED = 8, 20_000, 0


@pytest.fixture(scope="session")
def alt_cohort(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    return make_alt_cohort(tmp_path_factory.mktemp("alt_cohort"), n_samples=N_SAMPLES,
                           n_events=N_EVENTS, seed=SEED)


@pytest.fixture(scope="session")
def alt_tubes() -> list[AltTube]:
    """The same cohort kept in memory (true fluorescence, labels, shifts)."""
    return list(iter_alt_tubes(N_SAMPLES, N_EVENTS, SEED))


@pytest.fixture(scope="session")
def alt_samples(alt_cohort: pd.DataFrame) -> list[ip.FCSSample]:
    return [ip.read_fcs(p) for p in alt_cohort["path"]]


def test_generator_does_not_use_the_project_simulator() -> None:
    tree = ast.parse((Path(__file__).parent / "alt_cohort.py").read_text())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m.startswith("immunoprofile.datasets")]


def test_table_and_files(alt_cohort: pd.DataFrame, alt_samples: list[ip.FCSSample],
                         alt_tubes: list[AltTube]) -> None:
    assert len(alt_cohort) == 2 * N_SAMPLES
    assert all(sorted(g) == ["bcell", "treg"] for _, g in alt_cohort.groupby("sample_id").panel)
    per_batch = alt_cohort[alt_cohort.panel == "treg"].groupby("batch").size()
    assert per_batch.between(4, 6).all()
    for row, sample, tube in zip(alt_cohort.itertuples(), alt_samples, alt_tubes):
        assert Path(row.path).exists() and row.panel == tube.panel
        assert sample.n_events == N_EVENTS
        assert sample.metadata["tube name"] in {"Treg tube", "B-cell tube"}
        # The in-memory tube is exactly what was written (Time is scaled by $TIMESTEP).
        np.testing.assert_array_equal(sample.events[:, :-1], tube.events[:, :-1])
        assert np.all(np.diff(sample.events[:, -1]) >= 0) and sample.events[-1, -1] < 60


def test_channel_naming_resolves_by_marker(alt_samples: list[ip.FCSSample]) -> None:
    for sample in alt_samples[:2]:
        pnn = list(sample.channels["pnn"])
        # Detector names only: no marker in $PnN.
        assert {"FSC-A", "FSC-H", "SSC-A", "SSC-B-A", "Time"} <= set(pnn)
        fluor = [n for n in pnn if n not in {"FSC-A", "FSC-H", "SSC-A", "SSC-B-A", "Time"}]
        assert all(n[0] in "UBYRV" and n.endswith("-A") for n in fluor)
        treg = "CD25" in set(sample.channels["marker"])
        asked = (["CD3", "CD4", "CD8", "CD25", "IL-7Ra", "FoxP3", "CD45RA", "Live/Dead"] if treg
                 else ["CD3", "CD19", "CD20", "CD27", "CD38", "IgD", "CD24", "CD138",
                       "viability"])
        got = resolve_markers(sample, [*asked, "FSC-A", "FSC-H", "SSC-A", "Time"])
        panel = PANELS["treg" if treg else "bcell"]
        expect = {c.marker: c.pnn for c in panel}
        assert got["SSC-A"] == "SSC-A"
        if treg:
            assert got["IL-7Ra"] == expect["CD127"] == "R670-A"
            assert got["FoxP3"] == expect["FOXP3"]
            assert got["Live/Dead"] == expect["viability"] == "R780-A"
        else:
            assert got["viability"] == "V510-A"
            assert got["CD138"] == expect["CD138"]


def _robust_sd(residual: np.ndarray) -> np.ndarray:
    return 1.4826 * np.median(np.abs(residual), axis=0)


def test_spillover_compensates_back_to_true_fluorescence(
        alt_samples: list[ip.FCSSample], alt_tubes: list[AltTube]) -> None:
    for sample, tube in zip(alt_samples[:4], alt_tubes[:4]):
        spill = sample.spillover
        assert spill is not None and list(spill.columns) == tube.fluor
        np.testing.assert_array_equal(spill.to_numpy(), tube.spillover.to_numpy())
        s = spill.to_numpy()
        off = s[~np.eye(len(s), dtype=bool)]
        assert np.allclose(np.diag(s), 1) and off.max() <= 0.36
        assert ((off == 0) | (off >= 0.01)).all() and (off > 0.15).any()
        raw = sample.events[:, [list(sample.channel_names).index(c) for c in tube.fluor]]
        ok = (raw < SATURATION - 1).all(axis=1)
        comp = raw.astype(float) @ np.linalg.inv(s)
        np.testing.assert_allclose(comp, tube.compensated(), rtol=1e-6, atol=1e-3)

        # What is left is detector noise and 0.5-2% residual compensation error.
        assert _robust_sd(comp[ok] - tube.signal[ok]).max() < 80
        # The row-vector convention matters: the transposed matrix (or none) is far off.
        transposed = raw.astype(float) @ np.linalg.inv(s.T)
        assert _robust_sd(transposed[ok] - tube.signal[ok]).max() > 150
        assert _robust_sd(raw[ok] - tube.signal[ok]).max() > 150


def _count(tube: AltTube, names: set[str]) -> int:
    labels = tube.labels
    codes = [LEAVES.index(n) for n in names]
    return int((labels["leaf"].isin(codes) & (labels["state"] == 0)).sum())


def test_truth_matches_labels(alt_cohort: pd.DataFrame, alt_tubes: list[AltTube]) -> None:
    lymph = set(LEAVES[:18])
    cd4 = {n for n in LEAVES if n.startswith(("Tconv", "Treg", "CD4 "))}
    treg = {n for n in LEAVES if n.startswith("Treg")}
    b = {n for n in LEAVES if n.startswith("B ")} | {"Plasmablast", "Plasma cell"}
    pb = {"Plasmablast", "Plasma cell"}
    for row, tube in zip(alt_cohort.itertuples(), alt_tubes):
        live = _count(tube, lymph)
        assert row.true_live_lymphocytes == live
        assert row.true_live_lymphocytes <= row.true_singlets <= row.true_lymphocytes
        if row.panel == "treg":
            assert row.true_treg_pct_of_cd4 == pytest.approx(
                100 * _count(tube, treg) / _count(tube, cd4))
            assert 1.5 < row.true_treg_pct_of_cd4 < 11
            assert row.true_foxp3_treg / row.true_treg > 0.6
            assert np.isnan(row.true_b_pct_of_live) and np.isnan(row.true_b_cells)
        else:
            assert row.true_b_pct_of_live == pytest.approx(100 * _count(tube, b) / live)
            assert row.true_pb_pct_of_b == pytest.approx(100 * _count(tube, pb) / _count(tube, b))
            assert 2.5 < row.true_b_pct_of_live < 21 and 0.2 < row.true_pb_pct_of_b < 17
            assert np.isnan(row.true_treg_pct_of_cd4) and np.isnan(row.true_cd4_t_cells)
            assert row.true_plasma_cells <= row.true_plasmablasts <= row.true_b_cells


def _oracle(sample: ip.FCSSample, tube: AltTube) -> dict[str, float]:
    """Gates drawn knowing this sample's staining and scatter shifts (rectangles, linear)."""
    ev = sample.events.astype(float)
    names = list(sample.channel_names)
    comp = ev[:, [names.index(c) for c in tube.fluor]] @ np.linalg.inv(sample.spillover)
    m = {c.marker: comp[:, j] for j, c in enumerate(PANELS[tube.panel])}
    s, d = tube.shifts, tube.design
    fsc = ev[:, names.index("FSC-A")] / d.fsc_shift
    ssc = ev[:, names.index("SSC-A")] / d.ssc_shift
    ratio = ev[:, names.index("FSC-H")] / np.maximum(ev[:, names.index("FSC-A")], 1)
    live = ((fsc > 55e3) & (fsc < 130e3) & (ssc > 7e3) & (ssc < 52e3) & (ratio > 0.76)
            & (m["viability"] < 1200))
    if tube.panel == "treg":
        cd4 = live & (m["CD3"] > 2000 * s["CD3"]) & (m["CD4"] > 2500 * s["CD4"])
        treg = cd4 & (m["CD25"] > 1500 * s["CD25"]) & (m["CD127"] < 1000 * s["CD127"])
        return {"true_treg_pct_of_cd4": 100 * treg.sum() / cd4.sum()}
    b = live & (m["CD3"] < 1500 * s["CD3"]) & (m["CD19"] > 700 * s["CD19"])
    pb = b & (m["CD27"] > 3000 * s["CD27"]) & (m["CD38"] > 15000 * s["CD38"])
    return {"true_b_pct_of_live": 100 * b.sum() / live.sum(),
            "true_pb_pct_of_b": 100 * pb.sum() / b.sum()}


def test_oracle_gates_recover_truth(alt_cohort: pd.DataFrame, alt_samples: list[ip.FCSSample],
                                    alt_tubes: list[AltTube]) -> None:
    errors: dict[str, list[float]] = {}
    for row, sample, tube in zip(alt_cohort.itertuples(), alt_samples, alt_tubes):
        for key, value in _oracle(sample, tube).items():
            errors.setdefault(key, []).append(abs(value / getattr(row, key) - 1))
    for key, errs in errors.items():
        assert len(errs) == N_SAMPLES
        assert np.median(errs) < 0.03, (key, errs)
        assert max(errs) < 0.15, (key, errs)


def test_batches_shift_scatter_and_staining(alt_tubes: list[AltTube]) -> None:
    # Lymphocyte FSC-A sits near 90k and moves with the batch scatter shift (up to ±10%).
    for tube in alt_tubes:
        lymph = (tube.labels["state"] == 0).to_numpy() & (tube.labels["leaf"] < 18).to_numpy()
        assert np.median(tube.events[lymph, 0]) / tube.design.fsc_shift == pytest.approx(
            90e3, rel=0.03)
    designs = design_cohort(24, SEED)
    fsc = {d.batch: d.fsc_shift for d in designs}
    assert len(fsc) >= 4 and 0.9 <= min(fsc.values()) < max(fsc.values()) <= 1.1
    assert max(fsc.values()) - min(fsc.values()) > 0.05
    # Dim markers (CD25, CD127, FOXP3) vary more between batches than bright ones (CD3, CD4).
    log_shift = pd.DataFrame([{m: np.log(d.marker_shift["treg"][m]) for m in
                               ("CD3", "CD4", "CD25", "CD127", "FOXP3")} for d in designs])
    sd = log_shift.std()
    assert sd[["CD25", "CD127", "FOXP3"]].min() > sd[["CD3", "CD4"]].max()


def test_deterministic_and_fast(tmp_path: Path) -> None:
    a = make_alt_cohort(tmp_path / "a", n_samples=1, n_events=3_000, seed=7)
    b = make_alt_cohort(tmp_path / "b", n_samples=1, n_events=3_000, seed=7)
    c = make_alt_cohort(tmp_path / "c", n_samples=1, n_events=3_000, seed=8)
    for pa, pb, pc in zip(a["path"], b["path"], c["path"]):
        assert Path(pa).read_bytes() == Path(pb).read_bytes() != Path(pc).read_bytes()
    design = design_cohort(1, 0)[0]
    start = time.perf_counter()
    simulate_tube(design, "treg", 30_000, np.random.default_rng(0))
    assert time.perf_counter() - start < 1.0
