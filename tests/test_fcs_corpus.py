"""read_fcs over every file of ../shared/fcs-corpus, checked against MANIFEST.tsv and FlowKit.

Rows come from MANIFEST.tsv itself so that a file added to the corpus is tested at once;
without the corpus the tests skip with the reason given by ``corpus_path()``.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import flowio
import flowkit
import numpy as np
import pytest
from conftest import CORPUS, corpus_path

from immunoprofile.errors import FCSError
from immunoprofile.io.fcs import FCSSample, FCSWarning, read_fcs

pytestmark = pytest.mark.corpus


def _manifest() -> list[dict[str, str]]:
    manifest = CORPUS / "MANIFEST.tsv"
    if not manifest.is_file():
        return [{"path": "", "expect": "", "events": "", "params": ""}]  # skips below
    with manifest.open(newline="") as fh:
        return [
            {k: (v or "").strip() for k, v in row.items()}
            for row in csv.DictReader(fh, delimiter="\t")
        ]


ROWS = _manifest()


def _row_id(row: dict[str, str]) -> str:
    return row["path"] or "no-corpus"


OPTIONS = [
    {},
    {"ignore_offset_error": True},
    {"ignore_offset_discrepancy": True},
    {"ignore_offset_error": True, "ignore_offset_discrepancy": True},
]


def _flowkit_raw(path: Path) -> np.ndarray | None:
    """FlowKit's raw events, trying its offset-tolerance options in turn (None if unreadable).

    FlowKit refuses a $TIMESTEP that is not a number; read_fcs leaves the time channel
    unscaled then (with a warning), which is FlowIO's preprocessing without $TIMESTEP.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kwargs in OPTIONS:
            try:
                return flowkit.Sample(str(path), **kwargs).get_events(source="raw")
            except Exception:
                continue
        for kwargs in OPTIONS:
            try:
                flow_data = flowio.FlowData(str(path), **kwargs)
            except Exception:
                continue
            try:
                float(flow_data.text.get("timestep", "1") or "1")
            except ValueError:
                del flow_data.text["timestep"]
            return flow_data.as_array(preprocess=True)
    return None


def _read(path: Path) -> tuple[FCSSample, list[str]]:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        sample = read_fcs(path)
    return sample, [str(w.message) for w in record if issubclass(w.category, FCSWarning)]


@pytest.mark.parametrize("row", ROWS, ids=_row_id)
def test_manifest_expectation(row: dict[str, str]) -> None:
    path = corpus_path(row["path"])
    expect = row["expect"]
    if expect == "read":
        sample, messages = _read(path)
        assert sample.events.shape == (int(row["events"]), int(row["params"]))
        assert sample.events.dtype == np.float32
        assert len(sample.channels) == int(row["params"])
        assert sample.warnings == list(dict.fromkeys(messages))
        assert all(str(path) in m for m in messages)
    elif expect == "error":
        with pytest.raises(FCSError, match=path.name):
            read_fcs(path)
    elif expect == "read-or-error":
        try:
            sample, messages = _read(path)
        except FCSError as exc:
            assert path.name in str(exc)
        else:
            assert any("HEADER" in m and "TEXT" in m and "disagree" in m for m in messages)
            assert sample.events.shape[1] == len(sample.channels)
    else:
        pytest.fail(f"unknown expectation {expect!r} in MANIFEST.tsv for {row['path']}")


@pytest.mark.parametrize("row", ROWS, ids=_row_id)
def test_events_equal_flowkit_raw(row: dict[str, str]) -> None:
    path = corpus_path(row["path"])
    if row["expect"] == "error":
        pytest.skip("corrupt file: nothing to compare")
    expected = _flowkit_raw(path)
    if expected is None:
        pytest.skip("FlowKit/FlowIO cannot read this file, even with their offset options")
    sample, _ = _read(path)
    assert sample.events.shape == expected.shape
    np.testing.assert_allclose(sample.events, expected, rtol=1e-6)


@pytest.mark.parametrize("row", [r for r in ROWS if r["expect"] == "read"], ids=_row_id)
def test_channels_and_spillover_are_consistent(row: dict[str, str]) -> None:
    sample, _ = _read(corpus_path(row["path"]))
    channels = sample.channels
    assert list(channels.columns) == ["pnn", "pns", "pnr", "pne", "png", "pnb", "marker"]
    assert list(channels.index) == list(range(len(channels)))
    assert all(isinstance(m, str) for m in channels["marker"])
    assert all(k == k.lower() and not k.startswith("$") for k in sample.metadata)
    if sample.spillover is not None:
        spill = sample.spillover
        assert spill.shape[0] == spill.shape[1]
        assert list(spill.index) == list(spill.columns)
        assert set(spill.index) <= set(sample.channel_names)


def test_blank_header_offsets_read_like_the_original() -> None:
    # fake_large_fcs.fcs is the Fortessa file with blank HEADER DATA offsets (FlowKit refuses it).
    blank = corpus_path("vendors", "fake_large_fcs", "fake_large_fcs.fcs")
    original = corpus_path("vendors", "Fortessa", "FCS_3.0_Fortessa_PBS_Specimen_001_A1_A01.fcs")
    with pytest.warns(FCSWarning, match="HEADER.s DATA offsets are both blank"):
        sample = read_fcs(blank)
    np.testing.assert_array_equal(sample.events, read_fcs(original).events)
    np.testing.assert_allclose(sample.events, _flowkit_raw(original), rtol=1e-6)
