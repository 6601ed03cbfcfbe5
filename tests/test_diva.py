"""BD FACSDiva experiment XML import (``immunoprofile.template.diva``).

The real experiment is flowWorkspaceData's ``PE_2.xml`` (FACSDiva 6.1.3) with the FCS file
of its tube PE/_001, ``124500.fcs``. The oracle is FACSDiva's own count per gate, which the
XML records (``num_events``); CytoML's test of this tube (``test-diva2gs.R``) compares its
counts with the same numbers. Synthetic experiments cover what PE_2 lacks (booleans, global
worksheet gates, unsafe XML).
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED

import immunoprofile as ip
from immunoprofile.errors import TemplateError
from immunoprofile.template import load_template, write_template
from immunoprofile.template.diva import diva_counts, diva_logicle, is_diva, read_diva
from immunoprofile.template.model import BooleanGate, PolygonGate, RectangleGate
from immunoprofile.template.transforms import FlowJoLog, Identity, Logicle

REAL = SHARED / "real-data" / "flowworkspacedata"

# FACSDiva's counts for tube PE/_001 (124500.fcs), as PE_2.xml records them.
DIVA_COUNTS = {"All Events": 19090, "P1": 17902, "P2": 17543, "P3": 12334, "P4": 1160,
               "P5": 1100}


def _real(name: str) -> Path:
    path = REAL / name
    if not path.is_file():
        pytest.skip(f"{path} is absent: ../shared/real-data sits beside the clone in CI (set "
                    "IMMUNOPROFILE_SHARED to its parent folder to run these tests)")
    return path


@pytest.fixture(scope="module")
def pe2() -> Path:
    return _real("PE_2.xml")


@pytest.fixture(scope="module")
def tube001(pe2):
    return read_diva(pe2, tube="124500.fcs")


@pytest.fixture(scope="module")
def counts001(tube001) -> dict[str, int]:
    res = ip.gate_sample(ip.read_fcs(_real("124500.fcs")), tube001)
    return dict(zip(res.counts["population"], res.counts["count"].astype(int)))


# --- the real experiment ----------------------------------------------------------------------


def test_is_diva(pe2) -> None:
    assert is_diva(pe2)
    assert not is_diva(_real("A2004Analysis.xml"))
    assert not is_diva(_real("124500.fcs"))
    assert not is_diva(REAL / "no-such-file.xml")


def test_hierarchy_and_axes_as_in_the_xml(tube001, pe2) -> None:
    assert [(p.name, p.parent) for p in tube001] == [
        ("P1", None), ("P2", "P1"), ("P3", "P2"), ("P4", "P3"), ("P5", "P4")]
    kinds = {p.name: type(p.gate) for p in tube001}
    assert kinds == {"P1": RectangleGate, "P2": RectangleGate, "P3": PolygonGate,
                     "P4": PolygonGate, "P5": RectangleGate}
    dims = {p.name: [d.marker for d in p.gate.dims] for p in tube001}
    assert dims == {"P1": ["FSC-W", "FSC-H"], "P2": ["SSC-W", "SSC-H"],
                    "P3": ["FSC-A", "APC-Cy7-A"],
                    "P4": ["Pacific Orange-A", "Bd Horizon V450-A"], "P5": ["PE-A"]}
    p3 = tube001["P3"].gate
    # FSC-A drawn linear, APC-Cy7-A biexponential with scale value 440: the polygon keeps
    # both display transforms and its vertices are in them (stored coordinate / 4096).
    assert p3.dims[0].transform == Identity() and p3.dims[0].compensation == "none"
    assert p3.dims[1].transform == diva_logicle(440) and p3.dims[1].compensation == "diva"
    assert isinstance(p3.dims[1].transform, Logicle)
    assert p3.dims[1].transform.W == pytest.approx((4.5 - np.log10(262144 / 440)) / 2)
    assert p3.vertices[0] == pytest.approx((150885.74630455917, 3260.3503184713377 / 4096))
    # P5 is an interval on an unscaled log axis (log10 coordinates).
    p5 = tube001["P5"].gate
    assert isinstance(p5.dims[0].transform, FlowJoLog)
    lo = p5.dims[0].transform.inverse(np.array([p5.mins[0]]))[0]
    assert lo == pytest.approx(10 ** 2.9899667518479482)
    # P1's rectangle reaches below the linear display: open there.
    assert tube001["P1"].gate.mins[1] is None
    assert "17902 events in DIVA" in tube001["P1"].description


def test_spillover_is_the_inverse_of_divas_compensation(tube001) -> None:
    # DIVA stores the compensation (inverse) matrix; inverted, it must be the spillover the
    # FCS file carries.
    sample = ip.read_fcs(_real("124500.fcs"))
    ours = tube001.comp_matrices["diva"]
    fcs = sample.spillover.loc[list(ours.index), list(ours.columns)]
    assert np.abs(ours.values - fcs.values).max() < 1e-4


def test_counts_match_facsdiva(pe2, counts001) -> None:
    assert diva_counts(pe2, tube="124500.fcs") == DIVA_COUNTS
    for pop, expected in DIVA_COUNTS.items():
        if pop == "All Events":
            continue
        assert counts001[pop] == pytest.approx(expected, rel=0.005), pop
    chain = ["P1", "P2", "P3", "P4", "P5"]
    assert all(counts001[a] >= counts001[b] > 0 for a, b in itertools.pairwise(chain))


def test_tube_selection(pe2) -> None:
    first = read_diva(pe2)  # the first tube with gates: the unstained control
    assert "Unstained Control" in first.description
    assert [p.name for p in first] == ["P1", "Rest of All Events"]
    assert first["Rest of All Events"].gate == BooleanGate(op="not", refs=(("P1", False),))
    for key in ("_001", "PE/_001", "/elsewhere/124500.fcs"):
        assert "PE/_001 (124500.fcs)" in read_diva(pe2, tube=key).description
    with pytest.raises(TemplateError, match=r"tube 'nope' matches no tube .*PE/_001 "
                                            r"\(124500\.fcs\)") as err:
        read_diva(pe2, tube="nope")
    assert str(pe2) in str(err.value)


def test_quadrants_become_open_rectangles(pe2) -> None:
    t = read_diva(pe2, tube="124506.fcs")
    quads = [p for p in t if p.group]
    assert [p.name for p in quads] == ["Q1", "Q2", "Q3", "Q4"]
    assert {p.parent for p in quads} == {"P2"} and "$1413533361836" not in t
    assert {p.group for p in quads} == {"Q1-Q4 PE-A vs Pacific Orange-A"}
    q1, q3 = t["Q1"].gate, t["Q3"].gate
    # Q1 is upper left: open to the left and to the top, where DIVA piles off-scale events.
    assert q1.mins[0] is None and q1.maxs[1] is None
    assert q1.maxs[0] == pytest.approx(1642.7616279069769 / 4096)
    assert q3.mins == (None, None) and q3.maxs == (q1.maxs[0], q1.mins[1])


def test_not_a_diva_file(pe2) -> None:
    with pytest.raises(TemplateError, match=r"A2004Analysis\.xml: not a BD FACSDiva"):
        read_diva(_real("A2004Analysis.xml"))
    with pytest.raises(TemplateError, match="not readable XML"):
        read_diva(_real("124500.fcs"))


def test_yaml_round_trip(tube001, pe2, tmp_path, counts001) -> None:
    for t in (tube001, read_diva(pe2, tube="124506.fcs")):
        path = write_template(t, tmp_path / "t.yaml")
        back = load_template(path)
        # YAML writes quadrant groups as their rectangles: the group label is not kept.
        assert [replace(p, group=None) for p in back] == [replace(p, group=None) for p in t]
        assert back.compensation == t.compensation
        assert np.array_equal(back.comp_matrices["diva"].values, t.comp_matrices["diva"].values)
    back = load_template(write_template(tube001, tmp_path / "t1.yaml"))
    res = ip.gate_sample(ip.read_fcs(_real("124500.fcs")), back)
    assert dict(zip(res.counts["population"], res.counts["count"].astype(int))) == counts001


# --- synthetic experiments --------------------------------------------------------------------

_GATE = ('<gate fullname="All Events\\{name}" type="{type}"><name>{name}</name>'
         "<num_events>{n}</num_events><parent>All Events{parent}</parent>{body}</gate>")
_RECT = ('<region name="" xparm="FSC-A" yparm="SSC-A" type="{kind}"><points>'
         '<point x="10" y="10" /><point x="100" y="10" /><point x="100" y="100" />'
         '<point x="10" y="100" /></points></region>'
         "<is_x_parameter_scaled>false</is_x_parameter_scaled>"
         "<is_y_parameter_scaled>false</is_y_parameter_scaled>"
         "<is_x_parameter_log>false</is_x_parameter_log>"
         "<is_y_parameter_log>false</is_y_parameter_log><input>All Events</input>")


def _experiment(tmp_path: Path, tube_gates: str, global_gates: str = "") -> Path:
    root = ('<gate fullname="All Events" type="EventSource_Classifier"><name>All Events</name>'
            "<num_events>100</num_events></gate>")
    text = (
        '<?xml version="1.0" encoding="UTF-8"?><bdfacs version="Version 6.1.3">'
        '<experiment name="E"><log_decades>5</log_decades><acquisition_worksheets>'
        f'<worksheet_template name="Global Sheet1"><gates>{root}{global_gates}</gates>'
        '</worksheet_template></acquisition_worksheets><specimen name="S">'
        '<tube name="T1"><data_filename>a.fcs</data_filename><instrument_settings>'
        "<compensation_enabled>false</compensation_enabled></instrument_settings>"
        f"<gates>{root}{tube_gates}</gates></tube></specimen></experiment></bdfacs>")
    path = tmp_path / "exp.xml"
    path.write_text(text)
    return path


def test_boolean_gates(tmp_path) -> None:
    gates = "".join([
        _GATE.format(name="A", type="Region_Classifier", n=50, parent="",
                     body=_RECT.format(kind="RECTANGLE_REGION")),
        _GATE.format(name="B", type="Region_Classifier", n=40, parent="",
                     body=_RECT.format(kind="POLYGON_REGION")),
        _GATE.format(name="A and B", type="AND_Classifier", n=30, parent="",
                     body="<input>All Events\\A</input><input>All Events\\B</input>"),
        _GATE.format(name="not A", type="NOT_Classifier", n=50, parent="",
                     body="<input>All Events\\A</input>"),
    ])
    t = read_diva(_experiment(tmp_path, gates), tube="a.fcs")
    assert t["A and B"].gate == BooleanGate(op="and", refs=(("A", False), ("B", False)))
    assert t["not A"].gate == BooleanGate(op="not", refs=(("A", False),))
    assert t.comp_matrices == {}  # compensation was off in DIVA
    assert t["A"].gate.dims[0].compensation == "none"
    assert diva_counts(tmp_path / "exp.xml") == {"All Events": 100, "A": 50, "B": 40,
                                                 "A and B": 30, "not A": 50}


def test_global_worksheet_gates(tmp_path) -> None:
    gates = _GATE.format(name="G", type="Region_Classifier", n=0, parent="",
                         body=_RECT.format(kind="RECTANGLE_REGION"))
    path = _experiment(tmp_path, "", global_gates=gates)
    t = read_diva(path, tube="S/T1")
    assert [p.name for p in t] == ["G"]
    assert diva_counts(path, tube="T1") == {}  # DIVA counts no events for global gates


def test_unsupported_region_names_the_gate(tmp_path) -> None:
    gates = _GATE.format(name="E1", type="Region_Classifier", n=5, parent="",
                         body=_RECT.format(kind="ELLIPSE_REGION"))
    with pytest.raises(TemplateError, match=r"tube S/T1 \(a\.fcs\): gate 'All Events\\\\E1'"
                                            r": region type 'ELLIPSE_REGION'"):
        read_diva(_experiment(tmp_path, gates))


def test_entities_refused(tmp_path) -> None:
    path = tmp_path / "bomb.xml"
    path.write_text('<?xml version="1.0"?><!DOCTYPE bdfacs [<!ENTITY a "aaaaaaaaaa">'
                    '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]><bdfacs>&b;</bdfacs>')
    with pytest.raises(TemplateError, match="refused: the XML declares entities"):
        read_diva(path)
    assert not is_diva(path)
