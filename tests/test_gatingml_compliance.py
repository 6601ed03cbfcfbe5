"""The GatingML 2.0 compliance suite through read_gatingml + gate_sample, gate by gate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import CORPUS, corpus_path

import immunoprofile as ip
from immunoprofile.template.gatingml import read_gatingml

GATE_REF = CORPUS / "flowkit" / "gate_ref"
# Every gate of gml_all_gates.xml has a truth file named after its id (quadrants: one per
# quadrant id); two more gates live in their own files.
SEPARATE = {
    "Ellipsoid3D": ("gml_ellipsoid3d_gate.xml", "Results_Ellipsoid3D.txt"),
    "ParRectangle1": ("gml_parent_quadrant_rect_gate.xml", "Results_ParQuadRect.txt"),
}
ALL_GATES_IDS = sorted(
    p.stem.removeprefix("Results_") for p in (GATE_REF / "truth").glob("Results_*.txt")
    if p.stem.removeprefix("Results_") not in {"Ellipsoid3D", "ParQuadRect"}
) if GATE_REF.is_dir() else ["(corpus absent)"]


@pytest.fixture(scope="module")
def data1() -> ip.FCSSample:
    return ip.read_fcs(corpus_path("flowkit", "gate_ref", "data1.fcs"))


@pytest.fixture(scope="module")
def all_gates(data1: ip.FCSSample) -> ip.gating.GatingResult:
    template = read_gatingml(corpus_path("flowkit", "gate_ref", "gml", "gml_all_gates.xml"))
    return ip.gate_sample(data1, template)


def _truth(name: str) -> np.ndarray:
    return np.loadtxt(GATE_REF / "truth" / name).astype(bool)


@pytest.mark.corpus
@pytest.mark.parametrize("gate_id", ALL_GATES_IDS)
def test_all_gates_file(all_gates: ip.gating.GatingResult, gate_id: str) -> None:
    truth = _truth(f"Results_{gate_id}.txt")
    got = all_gates.membership[gate_id]
    assert got.shape == truth.shape
    assert np.array_equal(got, truth), f"{gate_id}: {(got != truth).sum()} events differ"


@pytest.mark.corpus
@pytest.mark.parametrize("gate_id", sorted(SEPARATE))
def test_separate_gate_files(data1: ip.FCSSample, gate_id: str) -> None:
    xml, truth_file = SEPARATE[gate_id]
    template = read_gatingml(corpus_path("flowkit", "gate_ref", "gml", xml))
    got = ip.gate_sample(data1, template).membership[gate_id]
    assert np.array_equal(got, _truth(truth_file))


@pytest.mark.corpus
def test_suite_covers_51_gates(all_gates: ip.gating.GatingResult) -> None:
    assert len(ALL_GATES_IDS) + len(SEPARATE) == 51
    assert set(ALL_GATES_IDS) <= set(all_gates.membership)


def test_external_entities_are_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.xml"
    evil.write_text(
        '<?xml version="1.0"?>\n<!DOCTYPE g [<!ENTITY e SYSTEM "file:///etc/passwd">]>\n'
        '<gating:Gating-ML xmlns:gating="http://www.isac-net.org/std/Gating-ML/v2.0/gating">'
        "&e;</gating:Gating-ML>\n"
    )
    with pytest.raises(ip.TemplateError, match="refused"):
        read_gatingml(evil)


def test_billion_laughs_is_refused(tmp_path: Path) -> None:
    lol = tmp_path / "lol.xml"
    lol.write_text(
        '<?xml version="1.0"?>\n<!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]>\n'
        "<l>&b;</l>\n"
    )
    with pytest.raises(ip.TemplateError, match="refused"):
        read_gatingml(lol)
