"""Marker ↔ channel resolution across naming styles of different cytometers."""

from __future__ import annotations

import pandas as pd
import pytest

from immunoprofile.errors import PanelError
from immunoprofile.panel import (
    canonical_marker,
    canonical_name,
    read_panel_mapping,
    resolve_markers,
)


@pytest.mark.parametrize(
    ("pnn", "pns", "expected"),
    [
        ("FSC-A", "", "FSC-A"),
        ("FSC-H", "", "FSC-H"),
        ("SSC-A", "SSC-A", "SSC-A"),
        ("Time", "", "Time"),
        ("HDR-T", "", "Time"),
        ("FITC-A", "CD4", "CD4"),
        ("B530-A", "CD4 FITC-A", "CD4"),
        ("PE-A", "FoxP3", "FOXP3"),
        ("PE-Cy7-A", "IL-7Ra", "CD127"),
        ("BV510-A", "Live-Dead", "viability"),
        ("APC-H7-A", "Zombie NIR", "viability"),
        ("PerCP-Cy5.5-A", "7-AAD", "viability"),
        ("BV421-A", "CD45RA-BV421", "CD45RA"),
        ("BV605-A", "CCR6 BV605", "CCR6"),
        ("BV605-A", "", ""),
        ("FL1-H", "", ""),
        ("CD19", "", "CD19"),
        ("APC-A", "cd138", "CD138"),
        ("V450-A", "IgD", "IgD"),
    ],
)
def test_canonical_marker(pnn: str, pns: str, expected: str) -> None:
    assert canonical_marker(pnn, pns) == expected


def test_canonical_name_keeps_unknown_names() -> None:
    assert canonical_name("FoxP3") == "FOXP3"
    assert canonical_name("Live/Dead") == "viability"
    assert canonical_name("CCR6") == "CCR6"


def _channels(pairs: list[tuple[str, str]]) -> pd.DataFrame:
    return pd.DataFrame({"pnn": [a for a, _ in pairs], "pns": [b for _, b in pairs]})


def test_resolve_by_label_alias_and_channel_name() -> None:
    ch = _channels([("FSC-A", ""), ("B530-A", "CD4"), ("Y586-A", "FoxP3"), ("R660-A", "")])
    got = resolve_markers(ch, ["CD4", "FOXP3", "FSC-A", "R660-A"])
    assert got == {"CD4": "B530-A", "FOXP3": "Y586-A", "FSC-A": "FSC-A", "R660-A": "R660-A"}


def test_missing_marker_lists_candidates() -> None:
    ch = _channels([("FSC-A", ""), ("B530-A", "CD4"), ("Y586-A", "FoxP3")])
    with pytest.raises(PanelError) as err:
        resolve_markers(ch, ["CD4", "CD25", "CD127"], what="template treg")
    msg = str(err.value)
    assert "template treg needs CD25, CD127" in msg
    assert "B530-A=CD4" in msg and "Y586-A=FOXP3" in msg


def test_ambiguous_marker_is_an_error_and_mapping_fixes_it() -> None:
    ch = _channels([("B530-A", "CD4"), ("V450-A", "CD4 V450")])
    with pytest.raises(PanelError, match="several channels: B530-A"):
        resolve_markers(ch, ["CD4"])
    assert resolve_markers(ch, ["CD4"], mapping={"CD4": "V450-A"}) == {"CD4": "V450-A"}


def test_optional_markers_may_be_absent() -> None:
    ch = _channels([("B530-A", "CD4")])
    assert resolve_markers(ch, ["CD4", "CD45RA"], optional=["CD45RA"]) == {"CD4": "B530-A"}


def test_mapping_files(tmp_path) -> None:
    y = tmp_path / "panel.yaml"
    y.write_text("CD4: B530-A\nFOXP3: Y586-A\n")
    assert read_panel_mapping(y) == {"CD4": "B530-A", "FOXP3": "Y586-A"}
    c = tmp_path / "panel.csv"
    c.write_text("marker,channel\nCD4,B530-A\n")
    assert read_panel_mapping(c) == {"CD4": "B530-A"}
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(PanelError, match="missing column"):
        read_panel_mapping(bad)


def test_flowjo_slash_underscore_channel_names() -> None:
    ch = _channels([("FL1/H", ""), ("FL2-H", "")])
    assert resolve_markers(ch, ["FL1_H"]) == {"FL1_H": "FL1/H"}


def test_extra_scatter_detectors_are_not_scatter_by_prefix() -> None:
    assert canonical_marker("SSC-B-A", "") == "SSC-B-A"
    ch = _channels([("SSC-A", ""), ("SSC-B-A", "")])
    assert resolve_markers(ch, ["SSC-A"]) == {"SSC-A": "SSC-A"}
