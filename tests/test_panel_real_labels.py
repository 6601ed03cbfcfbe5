"""Viability labels and swapped $PnN/$PnS as real files write them, through FCS files.

The labels come from real exports (``Live/ Dead`` in the flowAI B-cell files, ``Viab`` in
flowWorkspaceData's 124500.fcs, ``l/d`` in FlowSOM's 68983.fcs) and from panels labs publish;
each is written into a small FCS file, read back with :func:`immunoprofile.read_fcs` and
resolved with :func:`immunoprofile.panel.resolve_markers`, so the whole path a template takes
is exercised, not only the alias table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED

import immunoprofile as ip
from immunoprofile.errors import PanelError
from immunoprofile.io.fcs_write import write_fcs
from immunoprofile.panel import read_panel_mapping, resolve_markers

REAL = SHARED / "real-data"

VIABILITY_LABELS = [
    "Viab", "L/D", "Live/ Dead", "Live/Dead", "LD", "Live Dead", "Aqua", "Amcyan viability",
    "Zombie Aqua", "Zombie NIR", "FVS510", "7-AAD", "7AAD", "DAPI", "PI",
    "LIVE/DEAD Fixable Aqua", "Lv/Dd", "Lv/Dd Aqua", "Amine Aqua", "Viability Dye eF780",
    # The same labels as other labs type them: matching ignores case, spaces and punctuation.
    "live/dead", "LIVE-DEAD", "l/d", "zombie-aqua", "live/dead fixable aqua", "7 AAD",
]


def _real(*parts: str) -> Path:
    path = REAL.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"{path} is absent: ../shared/real-data sits beside the clone in CI (set "
                    "IMMUNOPROFILE_SHARED to its parent folder to run these tests)")
    return path


def _fcs(tmp_path: Path, channels: list[tuple[str, str]], name: str = "t.fcs"):
    """Write a 50-event file with these ($PnN, $PnS) channels and read it back."""
    events = np.random.default_rng(0).uniform(0, 1000, (50, len(channels)))
    path = write_fcs(tmp_path / name, events, [n for n, _ in channels], [s for _, s in channels],
                     metadata={"$DATE": "01-JAN-2026", "$BTIM": "00:00:00"})
    return ip.read_fcs(path)


@pytest.mark.parametrize("i", [1, 2, 3])
def test_flowai_bcells_live_dead_label(i: int) -> None:
    sample = ip.read_fcs(_real("flowai_bcells", f"Bcells{i}.fcs"))
    ch = sample.channels.set_index("pnn")
    assert ch.loc["APC-Cy7-A", "pns"] == "Live/ Dead"
    got = resolve_markers(sample, ["viability", "IgM", "CD27", "HLA-DR", "CD19", "CD24", "CD23",
                                   "CD21", "FSC-A", "FSC-H", "SSC-A", "Time"])
    assert got == {
        "viability": "APC-Cy7-A", "IgM": "Pacific Blue-A", "CD27": "AmCyan-A",
        "HLA-DR": "Qdot 605-A", "CD19": "Qdot 655-A", "CD24": "PE-A", "CD23": "PE-Texas Red-A",
        "CD21": "PE-Cy7-A", "FSC-A": "FSC-A", "FSC-H": "FSC-H", "SSC-A": "SSC-A", "Time": "Time",
    }


def test_real_viab_and_l_d_labels() -> None:
    """flowWorkspaceData labels its APC-Cy7 viability stain ``Viab``; FlowSOM's file ``l/d``."""
    viab = ip.read_fcs(_real("flowworkspacedata", "124500.fcs"))
    assert resolve_markers(viab, ["viability", "CD8"]) == {
        "viability": "APC-Cy7-A", "CD8": "Pacific Orange-A"}
    ld = ip.read_fcs(_real("flowsom_68983", "68983.fcs"))
    # Its AmCyan detector carries the viability dye here: the label says so, not the detector.
    assert resolve_markers(ld, ["viability", "CD8"]) == {
        "viability": "AmCyan-A", "CD8": "Pacific Blue-A"}


@pytest.mark.parametrize("label", VIABILITY_LABELS)
def test_viability_labels_resolve(tmp_path: Path, label: str) -> None:
    # AmCyan-A carries CD8 beside the dye so a dye word in a detector's name must not compete.
    sample = _fcs(tmp_path, [("FSC-A", ""), ("AmCyan-A", "CD8"), ("APC-Cy7-A", label),
                             ("PE-A", "CD19"), ("Time", "")])
    assert resolve_markers(sample, ["viability", "CD8", "CD19"]) == {
        "viability": "APC-Cy7-A", "CD8": "AmCyan-A", "CD19": "PE-A"}


@pytest.mark.parametrize("asked", ["viability", "Live/Dead", "live dead", "L/D", "7-AAD", "Viab"])
def test_template_spellings_of_viability(tmp_path: Path, asked: str) -> None:
    sample = _fcs(tmp_path, [("FSC-A", ""), ("BV510-A", "LIVE/DEAD Fixable Aqua")])
    assert resolve_markers(sample, [asked]) == {asked: "BV510-A"}


def test_dye_named_detectors_do_not_make_viability_ambiguous(tmp_path: Path) -> None:
    """Unlabelled detectors named after a dye (``DAPI-A``, ``PI-A``...) carry no marker."""
    sample = _fcs(tmp_path, [
        ("FSC-A", ""), ("AmCyan-A", ""), ("DAPI-A", ""), ("PI-A", ""), ("7-AAD-A", ""),
        ("Aqua-A", ""), ("AmCyan-H", "CD8"), ("APC-Cy7-A", "Live/Dead"),
    ])
    assert list(sample.channels["marker"]) == ["FSC-A", "", "", "", "", "", "CD8", "viability"]
    assert resolve_markers(sample, ["viability", "CD8"]) == {
        "viability": "APC-Cy7-A", "CD8": "AmCyan-H"}
    # A template naming the detector still gets it, by $PnN.
    assert resolve_markers(sample, ["DAPI-A"]) == {"DAPI-A": "DAPI-A"}


def test_two_viability_labels_are_ambiguous(tmp_path: Path) -> None:
    sample = _fcs(tmp_path, [("FSC-A", ""), ("BV510-A", "Zombie Aqua"), ("PerCP-A", "7-AAD")])
    with pytest.raises(PanelError) as err:
        resolve_markers(sample, ["viability"])
    msg = str(err.value)
    assert "viability is carried by several channels" in msg
    assert "BV510-A (Zombie Aqua)" in msg and "PerCP-A (7-AAD)" in msg


SWAPPED = [
    ("FSC-A", ""), ("SSC-A", ""), ("CD19", "PE-Cy7-A"), ("CD27", "AmCyan-A"),
    ("HLA-DR", "Qdot 605-A"), ("Live/Dead", "APC-Cy7-A"), ("7-AAD", "PerCP-Cy5-5-A"),
    ("CCR6", "BV605-A"), ("Time", ""),
]


def test_swapped_pnn_pns_resolve_by_marker(tmp_path: Path) -> None:
    """Some sites export the marker in $PnN and the detector in $PnS."""
    sample = _fcs(tmp_path, [c for c in SWAPPED if c[0] != "7-AAD"])
    got = resolve_markers(sample, ["CD19", "CD27", "HLA-DR", "viability", "CCR6", "FSC-A", "Time"])
    assert got == {"CD19": "CD19", "CD27": "CD27", "HLA-DR": "HLA-DR", "viability": "Live/Dead",
                   "CCR6": "CCR6", "FSC-A": "FSC-A", "Time": "Time"}


def test_swapped_pnn_pns_resolve_by_detector(tmp_path: Path) -> None:
    """A template naming detectors (imported from a usual export) finds them in $PnS."""
    sample = _fcs(tmp_path, [c for c in SWAPPED if c[0] != "7-AAD"])
    got = resolve_markers(sample, ["PE-Cy7-A", "AmCyan-A", "Qdot 605-A", "APC-Cy7-A"])
    assert got == {"PE-Cy7-A": "CD19", "AmCyan-A": "CD27", "Qdot 605-A": "HLA-DR",
                   "APC-Cy7-A": "Live/Dead"}


def test_swapped_viability_still_ambiguous(tmp_path: Path) -> None:
    sample = _fcs(tmp_path, SWAPPED)
    with pytest.raises(PanelError, match=r"several channels: Live/Dead \(APC-Cy7-A\), 7-AAD"):
        resolve_markers(sample, ["viability"])


def test_malformed_mapping_file_is_a_panel_error(tmp_path: Path) -> None:
    bad = tmp_path / "panel.yaml"
    bad.write_text("CD4: [unclosed\nCD8: B530-A\n")
    with pytest.raises(ip.PanelError, match=r"panel\.yaml: cannot be read"):
        read_panel_mapping(bad)
