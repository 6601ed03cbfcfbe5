"""Acquisition QC: planted time artefacts of the simulator are found, clean events kept, margin
events found from $PnR, files without Time or with odd clocks handled, inputs untouched, and
real corpus files run and lose little to the time-based checks."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import corpus_path

from immunoprofile.datasets import TubeParams, simulate_tube
from immunoprofile.errors import PanelError
from immunoprofile.gating.qc import QCResult, acquisition_qc
from immunoprofile.io.fcs import FCSSample, read_fcs
from immunoprofile.io.fcs_write import write_fcs

DATA1 = Path(__file__).resolve().parent / "data" / "data1.fcs"
N_EVENTS = 30_000
CASES = [(kind, art, seed) for kind in ("treg", "bcell") for art in (None, "clog", "drift")
         for seed in (0, 1, 2)]
SUMMARY_KEYS = ["n_events", "n_removed", "pct_removed", "removed_margin", "removed_flow_rate",
                "removed_signal_shift", "n_windows", "n_windows_flagged", "flags"]


def _write(path: Path, events: np.ndarray, pnn: list[str], pns: list[str], **kw) -> FCSSample:
    write_fcs(path, events, pnn, pns, metadata={"$TIMESTEP": "0.01", "$DATE": "01-JAN-2024",
                                                "$BTIM": "09:00:00"}, **kw)
    return read_fcs(path)


@pytest.fixture(scope="session")
def simulated(tmp_path_factory):
    """Simulated tubes written to FCS and read back: {(kind, artefact, seed): (tube, sample)}."""
    out = tmp_path_factory.mktemp("qc")
    files = {}
    for kind, art, seed in CASES:
        tube = simulate_tube(kind, N_EVENTS, seed=seed, params=TubeParams(artefact=art))
        sample = _write(out / f"{kind}_{art}_{seed}.fcs", tube.events, tube.pnn, tube.pns,
                        spillover=tube.spillover)
        files[(kind, art, seed)] = (tube, sample)
    return files


@pytest.mark.parametrize(("kind", "art", "seed"), CASES)
def test_planted_artefacts_found_and_clean_events_kept(simulated, kind, art, seed):
    tube, sample = simulated[(kind, art, seed)]
    result = acquisition_qc(sample)
    margin = ~acquisition_qc(sample, flow_rate=False, signal=False).mask
    failed = ~result.mask
    clean = ~tube.artefact & ~margin
    false_pos = failed[clean].mean()
    line = f"{kind} {art} seed {seed}: clean events flagged {false_pos:.4f}"
    if art is not None:
        sensitivity = failed[tube.artefact].mean()
        line += f", artefact events flagged {sensitivity:.3f} of {tube.artefact.sum()}"
        assert sensitivity >= 0.90, line
        assert result.removed["flow_rate" if art == "clog" else "signal_shift"] > 0
    else:
        # Conservative on clean files: nothing time-based at all on these.
        assert result.removed["flow_rate"] + result.removed["signal_shift"] == 0, result.windows
    print(line, result.removed, result.flags)
    assert false_pos < 0.02, line
    assert result.n_events == N_EVENTS == result.mask.size
    assert result.n_removed == int(failed.sum())
    assert len(result.windows) == result.params["n_windows"] == 200


def test_planted_signal_step_and_burst(tmp_path):
    # Beyond the simulator's clog and drift: one laser's two detectors dim by 30% for a tenth
    # of the run (flow unchanged), and a burst doubles the rate for 3% of it.
    tube = simulate_tube("bcell", N_EVENTS, seed=5)
    t = tube.events[:, -1]
    step = (t >= 0.4 * t.max()) & (t < 0.5 * t.max())
    events = tube.events.copy()
    events[step, 3:5] *= 0.7  # FITC-A, PerCP-Cy5.5-A
    result = acquisition_qc(_write(tmp_path / "step.fcs", events, tube.pnn, tube.pns))
    failed = ~result.mask
    assert failed[step].mean() >= 0.9 and failed[~step].mean() < 0.01, result.removed
    assert result.removed["flow_rate"] == 0
    burst = (t >= 0.6 * t.max()) & (t < 0.63 * t.max())
    events = np.concatenate([tube.events, tube.events[burst]])
    order = np.argsort(events[:, -1], kind="stable")
    in_burst = np.concatenate([burst, np.ones(burst.sum(), bool)])[order]
    result = acquisition_qc(_write(tmp_path / "burst.fcs", events[order], tube.pnn, tube.pns))
    failed = ~result.mask
    assert failed[in_burst].mean() >= 0.9 and failed[~in_burst].mean() < 0.01, result.removed
    assert result.windows.loc[result.windows["flagged_rate"], "rate_z"].max() > 6


def test_windows_table(simulated):
    tube, sample = simulated[("treg", "clog", 1)]
    result = acquisition_qc(sample)
    w = result.windows
    assert {"start", "end", "n_events", "rate", "flagged_rate", "flagged_signal"} <= set(w)
    assert [c for c in w if c.startswith("median_")] == [
        f"median_{c}" for c in tube.fluorescence_channels]
    assert w["n_events"].sum() == N_EVENTS
    assert np.allclose(w["start"].to_numpy()[1:], w["end"].to_numpy()[:-1])
    # The clog's windows are slow; the flagged rate windows cover the clog's time span.
    t = sample.events[:, sample.channel_names.index("Time")]
    clog = (t[tube.artefact].min(), t[tube.artefact].max())
    flagged = w[w["flagged_rate"]]
    width = float(w["end"].iloc[0] - w["start"].iloc[0])
    # ... up to a window at each edge: one holding a sliver of the clog may stay.
    assert flagged["start"].min() <= clog[0] + width and flagged["end"].max() >= clog[1] - width
    inside = (w["start"] >= clog[0]) & (w["end"] <= clog[1])
    assert w.loc[inside, "rate"].median() < 0.3 * w.loc[~w["flagged_rate"], "rate"].median()


def test_summary_keys_and_values(simulated):
    result = acquisition_qc(simulated[("bcell", "clog", 0)][1])
    row = result.summary()
    assert list(row) == SUMMARY_KEYS
    assert row["removed_flow_rate"] == result.removed["flow_rate"] > 0
    assert row["pct_removed"] == pytest.approx(100 * result.n_removed / result.n_events, abs=1e-3)
    assert row["n_windows_flagged"] == int(result.windows["flagged_rate"].sum()) > 0
    assert "removed by flow-rate QC" in row["flags"]


def test_input_not_modified(simulated):
    sample = simulated[("treg", "drift", 0)][1]
    before = sample.events.copy()
    channels = sample.channels.copy()
    result = acquisition_qc(sample, margin_fluorescence=True)
    assert isinstance(result, QCResult) and result.n_removed > 0
    assert np.array_equal(sample.events, before)
    assert sample.channels.equals(channels)


def test_margin_events_from_pnr(tmp_path):
    tube = simulate_tube("treg", 5000, seed=4)
    events = tube.events.copy()
    fsc, ssc, fitc = (tube.pnn.index(c) for c in ("FSC-A", "SSC-A", "FITC-A"))
    events[:20, fsc] = 262143.0  # saturated: $PnR - 1 of an 18-bit channel
    events[20:30, ssc] = 262143.0
    events[30:35, fsc] = -5000.0  # far below zero: an electronic artefact
    events[35:45, fitc] = 262143.0  # fluorescence margins only when asked for
    events[45:50, fsc] = 262000.0  # bright but not at the top
    sample = _write(tmp_path / "margins.fcs", events, tube.pnn, tube.pns)
    ev = sample.events
    expected = (ev[:, fsc] >= 262143) | (ev[:, ssc] >= 262143) | (ev[:, fsc] <= -1310.7)
    result = acquisition_qc(sample, flow_rate=False, signal=False)
    assert np.array_equal(~result.mask, expected) and not result.mask[:35].any()
    assert result.mask[35:50].all()
    assert result.removed == {"margin": int(expected.sum()), "flow_rate": 0, "signal_shift": 0}
    assert result.params["margin_channels"] == ["FSC-A", "SSC-A"]
    fluor = acquisition_qc(sample, flow_rate=False, signal=False, margin_fluorescence=True)
    assert not fluor.mask[35:45].any() and fluor.removed["margin"] >= expected.sum() + 10
    # DOMAIN's gating margin (2.5e5 on the 18-bit scale) takes the bright events too.
    domain = acquisition_qc(sample, flow_rate=False, signal=False, margin_range=(-0.005, 0.954))
    assert not domain.mask[45:50].any()
    # A smaller $PnR moves the top: 100000 - 1 on FSC-A catches everything above it.
    pnr = [100_000.0 if c == "FSC-A" else 262144.0 for c in tube.pnn]
    events[:, fsc] = np.minimum(events[:, fsc], 99_999.0)
    small = _write(tmp_path / "pnr.fcs", events, tube.pnn, tube.pns, pnr=pnr)
    # (within float32 rounding of $PnR - 1, as the margin check allows)
    at_top = (small.events[:, fsc] >= 99_999.0 * (1 - 1e-6)) | (small.events[:, fsc] <= -500.0)
    at_top |= small.events[:, ssc] >= 262143.0
    result = acquisition_qc(small, flow_rate=False, signal=False)
    assert np.array_equal(~result.mask, at_top) and at_top.sum() > 35


def test_margins_of_gain_and_log_channels():
    # FACSCalibur: 10-bit integers; SSC-H has $PnG 8 (top 1023 / 8), no FSC-A/SSC-A.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sample = read_fcs(DATA1)
    ssc = sample.events[:, sample.channel_names.index("SSC-H")]
    fsc = sample.events[:, sample.channel_names.index("FSC-H")]
    result = acquisition_qc(sample, flow_rate=False, signal=False)
    assert result.params["margin_channels"] == ["FSC-H", "SSC-H"]
    expected = (ssc >= 1023 / 8 * (1 - 1e-6)) | (fsc >= 1023 / 3.67 * (1 - 1e-6))
    assert np.array_equal(~result.mask, expected) and expected.sum() >= 23


def test_no_time_channel_gives_flag_and_margin_qc_only(simulated, tmp_path):
    tube = simulated[("treg", "clog", 0)][0]
    keep = [i for i, c in enumerate(tube.pnn) if c != "Time"]
    sample = _write(tmp_path / "notime.fcs", tube.events[:, keep], [tube.pnn[i] for i in keep],
                    [tube.pns[i] for i in keep])
    result = acquisition_qc(sample)
    assert result.flags == ["no Time channel: time-based QC skipped"]
    assert result.windows.empty and result.params["time_channel"] is None
    assert result.removed["flow_rate"] == result.removed["signal_shift"] == 0
    assert result.n_removed == result.removed["margin"] == (~acquisition_qc(
        sample, flow_rate=False, signal=False).mask).sum()
    assert result.summary()["n_windows"] == 0
    with pytest.raises(PanelError, match="Time"):
        acquisition_qc(sample, time_channel="Time")


def test_time_resets_and_coarse_ticks(simulated, tmp_path):
    tube, sample = simulated[("bcell", "clog", 2)]
    reference = acquisition_qc(sample)
    t = tube.pnn.index("Time")
    # The clock restarts every 2.5 s (e.g. a counter that wraps): the runs are joined.
    wrapped = tube.events.copy()
    wrapped[:, t] = np.mod(wrapped[:, t], 250.0)
    result = acquisition_qc(_write(tmp_path / "wrap.fcs", wrapped, tube.pnn, tube.pns))
    assert any("resets 3 time(s)" in f for f in result.flags), result.flags
    # The joined clock differs from the true one by a few inter-event gaps: same verdicts but
    # for the odd event at a window edge.
    assert (result.mask != reference.mask).mean() < 0.002
    assert (~result.mask)[tube.artefact].mean() >= 0.9
    # Time in whole 0.1 s ticks: windows hold whole ticks, so their counts do not alias.
    coarse = tube.events.copy()
    coarse[:, t] = np.floor(coarse[:, t] / 10.0) * 10.0
    sample = _write(tmp_path / "coarse.fcs", coarse, tube.pnn, tube.pns)
    result = acquisition_qc(sample)
    assert result.params["time_tick"] == pytest.approx(0.1, rel=1e-5)
    widths = result.windows["end"] - result.windows["start"]
    assert np.allclose(widths.iloc[:-1] / 0.1, np.round(widths.iloc[:-1] / 0.1))
    failed = ~result.mask
    assert failed[tube.artefact].mean() >= 0.9
    assert failed[~tube.artefact].mean() < 0.02
    # A clean file on the coarse clock loses nothing to rate QC.
    clean, _ = simulated[("bcell", None, 2)]
    coarse = clean.events.copy()
    coarse[:, t] = np.floor(coarse[:, t] / 10.0) * 10.0
    result = acquisition_qc(_write(tmp_path / "coarse_clean.fcs", coarse, clean.pnn, clean.pns))
    assert result.removed["flow_rate"] == result.removed["signal_shift"] == 0


def test_options(simulated):
    sample = simulated[("treg", "drift", 1)][1]
    few = acquisition_qc(sample, channels=["CD3", "CD4"])
    assert few.params["signal_channels"] == ["APC-H7-A", "PerCP-Cy5.5-A"]
    assert [c for c in few.windows if c.startswith("median_")] == [
        "median_APC-H7-A", "median_PerCP-Cy5.5-A"]
    assert acquisition_qc(sample, signal=False).removed["signal_shift"] == 0
    wide = acquisition_qc(sample, window_seconds=0.1)
    assert len(wide.windows) == int(np.ceil(np.ptp(sample.events[:, -1]) / 0.1))
    assert acquisition_qc(sample, n_windows=50).params["n_windows"] == 50
    off = acquisition_qc(sample, margin=False, flow_rate=False, signal=False)
    assert off.mask.all() and off.n_removed == 0
    with pytest.raises(PanelError):
        acquisition_qc(sample, channels=["CD19"])


@pytest.mark.corpus
@pytest.mark.parametrize("parts", [("vendors", "FACS_Diva", "facs_diva_test.fcs"),
                                   ("flowkit", "100715.fcs"),
                                   ("flowkit", "test_comp_example.fcs")])
def test_corpus_files(parts):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sample = read_fcs(corpus_path(*parts))
    result = acquisition_qc(sample)
    print("/".join(parts), result.summary())
    # Time-based QC flags little on these acquisitions.
    assert result.removed["flow_rate"] + result.removed["signal_shift"] <= 0.02 * result.n_events
    # Margin events are exactly the saturated scatter events (the Diva file saturates SSC-A
    # in 22% of its events: a real property of that acquisition, reported as a flag).
    scatter = [sample.channel_names.index(c) for c in result.params["margin_channels"]]
    top = sample.channels["pnr"].to_numpy()[scatter] - 1
    assert result.removed["margin"] == int((sample.events[:, scatter] >= top).any(axis=1).sum())
    if "Time" not in sample.channel_names:
        assert "no Time channel: time-based QC skipped" in result.flags
    else:
        assert len(result.windows) > 100


def _dimmed(tube, pieces: list[tuple[float, float, float]]) -> np.ndarray:
    """Fluorescence scaled by ``factor`` between fractions ``a`` and ``b`` of the run."""
    t = tube.events[:, -1]
    events = tube.events.copy()
    for a, b, factor in pieces:
        part = (t >= a * t.max()) & (t < b * t.max())
        events[part, 3:-1] *= factor
    return events


def test_reference_is_the_majority_level_not_the_first_segment(tmp_path):
    # The fault is at the start: the first fifth of the run is dim.
    tube = simulate_tube("treg", N_EVENTS, seed=7)
    t = tube.events[:, -1]
    early = t < 0.2 * t.max()
    sample = _write(tmp_path / "early.fcs", _dimmed(tube, [(0.0, 0.2, 0.65)]), tube.pnn,
                    tube.pns)
    failed = ~acquisition_qc(sample).mask
    assert failed[early].mean() >= 0.9 and failed[~early].mean() < 0.02


def test_qc_never_removes_the_majority_of_a_file(tmp_path):
    # Three levels: no stretch holds most events, so "the norm" is the largest stretch (40%)
    # and the rest (60%) would go. QC keeps the events and says so instead.
    tube = simulate_tube("treg", N_EVENTS, seed=8)
    events = _dimmed(tube, [(0.0, 0.3, 0.55), (0.3, 0.6, 0.75)])
    sample = _write(tmp_path / "levels.fcs", events, tube.pnn, tube.pns)
    result = acquisition_qc(sample)
    assert result.removed["signal_shift"] == 0 and result.params["time_qc_overruled"]
    assert any("events kept, review this file" in f for f in result.flags), result.flags
    assert result.windows["flagged_signal"].mean() > 0.5  # the windows still show the finding
    # With a higher cap the same file loses the 60%.
    strict = acquisition_qc(sample, max_removed_pct=90)
    assert 0.5 < strict.removed["signal_shift"] / N_EVENTS < 0.7


def test_negative_peak_moving_alone_is_not_a_fault(tmp_path):
    # As in the real flowsom 68983 file: the negatives of two channels drift up by ~0.6 of
    # their width over the second half of the run while their positive cells stay put (a
    # change in background or in the mix of cells, not in the acquisition).
    tube = simulate_tube("treg", N_EVENTS, seed=9)
    t = tube.events[:, -1]
    events = tube.events.copy()
    late = t >= 0.5 * t.max()
    for j in (5, 6):  # PE-A (CD25) and PE-Cy7-A (CD127)
        neg = late & (events[:, j] < 600)
        events[neg, j] += 120.0 * (t[neg] - 0.5 * t.max()) / (0.5 * t.max())
    result = acquisition_qc(_write(tmp_path / "bg.fcs", events, tube.pnn, tube.pns))
    assert result.removed["signal_shift"] == 0, result.flags


@pytest.mark.parametrize("export", [None, "lymphocytes"])
def test_acquisition_pauses_remove_no_events(tmp_path, export):
    # The realistic simulator's pauses (Time jumps 3-20 s with no events), in a whole file and
    # in a FlowJo-style lymphocyte export: the clock is joined over them, nothing is removed
    # for them (before, the windows they fell in looked slow and lost 3-9% of the events).
    tube = simulate_tube("bcell", N_EVENTS, seed=2, params=TubeParams(pauses=2, export=export))
    sample = _write(tmp_path / "pause.fcs", tube.events, tube.pnn, tube.pns)
    result = acquisition_qc(sample)
    assert result.removed["flow_rate"] + result.removed["signal_shift"] == 0, result.flags
    assert result.params["time_pauses"] == 2
    assert any("Time pauses 2 time(s)" in f for f in result.flags)
