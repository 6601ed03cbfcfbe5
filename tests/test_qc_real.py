"""Acquisition QC on every real file in ../shared that has a Time channel.

Clean acquisitions lose under 2% of their events to the time-based checks (flow rate, signal).
flowAI's example B-cell files carry real acquisition faults (they were published as examples of
anomalies): QC finds the burst and the clog at the end of Bcells1, and where a check would take
most of a file (Bcells2's signal rises with its flow rate over half the run) the events are
kept with a flag instead. Margin events (values at the top of a channel's range) are reported
beside: they are saturated measurements, not a judgement, and some vendor test files are mostly
saturated (the FACSDiva file's SSC-A in 22% of its events).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from conftest import SHARED

from immunoprofile.gating.qc import acquisition_qc
from immunoprofile.io.fcs import read_fcs

ANOMALOUS = {"Bcells1.fcs", "Bcells2.fcs"}  # flowAI's examples of acquisition anomalies


def _real_files() -> list[Path]:
    found = sorted((SHARED / "real-data").glob("*/*.fcs"))
    found += sorted(p for p in (SHARED / "fcs-corpus").rglob("*.fcs")
                    if "corrupted" not in p.parts and "cytek-nl-2000" not in p.parts)
    return found


FILES = _real_files()


def _read(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_fcs(path)


def _need_shared() -> None:
    if not FILES:
        pytest.skip(f"no real FCS files under {SHARED} (../shared sits beside the clone in CI; "
                    "set IMMUNOPROFILE_SHARED to its parent folder)")


@pytest.mark.parametrize("path", FILES or [None],
                         ids=[p.name for p in FILES] or ["shared-absent"])
def test_clean_real_files_lose_under_two_percent(path: Path | None) -> None:
    _need_shared()
    if path.name in ANOMALOUS:
        pytest.skip(f"{path.name} has real acquisition anomalies (tested below)")
    sample = _read(path)
    result = acquisition_qc(sample)
    timed = result.removed["flow_rate"] + result.removed["signal_shift"]
    print(path.name, result.summary())
    assert timed < 0.02 * max(sample.n_events, 1), result.flags
    assert not result.params.get("time_qc_overruled")


def test_real_anomalies_of_flowai_examples() -> None:
    _need_shared()
    folder = SHARED / "real-data" / "flowai_bcells"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    one = acquisition_qc(_read(folder / "Bcells1.fcs"))
    w = one.windows
    # The rate bursts to 3x and then falls to a seventh for the last ~45% of the run's time:
    # those windows and no others are flagged for flow rate.
    low = (w["n_events"] < 0.3 * w["n_events"].median()).to_numpy()
    rate = w["flagged_rate"].to_numpy()
    assert rate[low].mean() > 0.95 and rate[: int(0.5 * len(w))].sum() == 0
    assert 0.10 < one.removed["flow_rate"] / one.n_events < 0.20
    two = acquisition_qc(_read(folder / "Bcells2.fcs"))
    assert two.removed["signal_shift"] == 0 and two.params["time_qc_overruled"]
    assert any("signal-shift QC would remove" in f for f in two.flags), two.flags
    # ... while its burst and final clog (the last tenth of the run) still go.
    rate = two.windows["flagged_rate"].to_numpy()
    assert rate[-10:].all() and rate[: int(0.8 * rate.size)].sum() == 0
    assert two.n_removed <= two.removed["margin"] + two.removed["flow_rate"]


def test_a_higher_cap_never_removes_less() -> None:
    _need_shared()
    path = SHARED / "real-data" / "flowai_bcells" / "Bcells2.fcs"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    sample = _read(path)
    removed = [acquisition_qc(sample, max_removed_pct=cap).n_removed
               for cap in (30, 50, 55, 57, 60, 70, 100)]
    assert removed == sorted(removed), removed
