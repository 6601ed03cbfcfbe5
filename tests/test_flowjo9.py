"""FlowJo 9 (Mac, workspace 2.0) import against the workspace's own stored counts.

``A2004Analysis.xml`` (flowWorkspaceData) holds two samples; only sample 2's FCS file is
shared. Its gates, imported and applied by immunoprofile, must reproduce the ``count`` FlowJo
9.2 stored on each population. Known gap (see ``test_monocytes_branch``): the Monocytes gate
counts 34 events (1.8%) fewer than FlowJo's stored count. No reading of the stored gate
reproduces it: the 34 missing events would hold +3 IL-6+, +6 IL-12+, +4 TNFa+ (10x the
cytokine+ rate inside the gate), and no translation of the polygon ("magnetic" re-centring),
display-grid binning (64-4096 bins), edge widening, a change of one spillover value or adding
SSC-saturated events outside Live gives 1846 with children 72/39/17. CytoML, the reference
reader, misses this file's stored counts by as much on sample 1 (B Cell 2311 vs 2271, mDC 512
vs 502, pDC 433 vs 446; flowWorkspace vignette), where Monocytes matches: the stored counts are
not all reproducible from the stored gates.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SHARED
from defusedxml import ElementTree as SafeET

import immunoprofile as ip
from immunoprofile.errors import TemplateError
from immunoprofile.template import EllipseGate, PolygonGate, load_template, write_template
from immunoprofile.template.flowjo9 import is_flowjo9, read_flowjo9
from immunoprofile.template.transforms import FlowJoBiex, Identity

REAL = SHARED / "real-data"
FCS_NAME = "a2004_O1T2pb05i_A2_A02.fcs"


def _real(*parts: str) -> Path:
    path = REAL.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"{path} is absent: ../shared/real-data sits beside the clone in CI (set "
                    "IMMUNOPROFILE_SHARED to its parent folder to run these tests)")
    return path


def _flowjo_tree(xml: Path, sample_id: str) -> list[tuple[tuple[str, ...], int | None]]:
    """(path of gate names, FlowJo's stored count or None) per population, in file order."""
    root = SafeET.parse(str(xml), forbid_dtd=False).getroot()
    sample = next(s for s in root.iter("Sample") if s.get("sampleID") == sample_id)
    out: list[tuple[tuple[str, ...], int | None]] = []

    def walk(el, above):
        for pop in el.findall("Population"):
            here = (*above, pop.get("name"))
            count = pop.get("count")
            out.append((here, None if count is None else int(count)))
            walk(pop, here)

    walk(sample.find("SampleNode"), ())
    return out


def _name(path: tuple[str, ...], dupes: set[str]) -> str:
    # FlowJo repeats IFNa+ & co under mDC, pDC and Monocytes: qualified by their parent.
    return "/".join(path[-2:]) if path[-1] in dupes else path[-1]


@pytest.fixture(scope="module")
def workspace() -> Path:
    return _real("flowworkspacedata", "A2004Analysis.xml")


@pytest.fixture(scope="module")
def template(workspace):
    return read_flowjo9(workspace, sample=FCS_NAME)


@pytest.fixture(scope="module")
def table(workspace, template) -> list[tuple[str, int, int]]:
    """(population, FlowJo 9 count, immunoprofile count) for every population FlowJo counted."""
    fcs = _real("flowworkspacedata", FCS_NAME)
    counts = ip.gate_sample(ip.read_fcs(fcs), template).counts
    ours = dict(zip(counts["population"], counts["count"]))
    tree = _flowjo_tree(workspace, "2")
    names = [p[-1] for p, _ in tree]
    dupes = {n for n in names if names.count(n) > 1}
    return [(_name(p, dupes), fj, int(ours[_name(p, dupes)])) for p, fj in tree
            if fj is not None]


def _report(rows) -> str:
    lines = [f"{'population':22s} {'FlowJo9':>8s} {'ours':>8s} {'diff':>8s}"]
    for name, fj, us in rows:
        pct = (us - fj) / fj * 100 if fj else float("nan")
        lines.append(f"{name:22s} {fj:8d} {us:8d} {pct:+7.2f}%")
    return "\n".join(lines)


def _off(fj: int, us: int) -> bool:
    # 0.5% of the stored count; below 200 events that is under one event, so one event of
    # slack (a single event on a gate edge) is allowed there.
    return abs(us - fj) > max(0.005 * fj, 1)


def test_counts_match_flowjo9(table) -> None:
    checked = [r for r in table if not r[0].startswith("Monocytes")]
    bad = [r for r in checked if _off(r[1], r[2])]
    assert len(checked) >= 13
    assert not bad, "counts off by more than 0.5%:\n" + _report(table)


@pytest.mark.xfail(strict=True, reason="Monocytes 1812 vs FlowJo 9's stored 1846 (-1.8%), "
                   "children IL-6+ 69/72, IL-12+ 33/39, TNFa+ 13/17: not reproducible from the "
                   "stored gate (same vertices in group, sample 1 and sample 2; no translation, "
                   "binning, edge or compensation variant fits count and children together); "
                   "CytoML misses sample 1's stored B Cell/mDC/pDC counts by 2-3% the same way")
def test_monocytes_branch(table) -> None:
    rows = [r for r in table if r[0].startswith("Monocytes")]
    assert rows
    assert not [r for r in rows if _off(r[1], r[2])], _report(table)


def test_hierarchy_and_gates(template, workspace) -> None:
    tree = _flowjo_tree(workspace, "2")
    names = [p[-1] for p, _ in tree]
    dupes = {n for n in names if names.count(n) > 1}
    expected = {_name(p, dupes): (_name(p[:-1], dupes) if len(p) > 1 else None)
                for p, _ in tree}
    assert {p.name: p.parent for p in template.populations} == expected
    assert template["Live"].gate.dims[0].marker == "FSC-A"
    assert isinstance(template["Live"].gate.dims[0].transform, Identity)
    apc = template["APC"].gate
    assert isinstance(apc, PolygonGate)
    assert [d.marker for d in apc.dims] == ["PerCP-CY5-5-A", "PE-CY7-A"]
    assert all(isinstance(d.transform, FlowJoBiex) for d in apc.dims)
    assert {d.compensation for d in apc.dims} == {"A2004-A2005_06i"}
    assert isinstance(template["CD14-MHC2-"].gate, EllipseGate)
    assert template.compensation == "A2004-A2005_06i"
    assert template.comp_matrices["A2004-A2005_06i"].shape == (8, 8)


def test_sample_selection(workspace) -> None:
    # Both samples are named a2004_O1T2pb05i in FlowJo: the name is ambiguous, files are not.
    with pytest.raises(TemplateError, match="give the FCS file name"):
        read_flowjo9(workspace, sample="a2004_O1T2pb05i")
    with pytest.raises(TemplateError, match=r"no sample 'nope\.fcs'"):
        read_flowjo9(workspace, sample="nope.fcs")
    first = read_flowjo9(workspace)  # the first sample with gates: sample 1
    assert "a2004_O1T2pb05i_A1_A01.fcs" in first.description


def test_refuses_other_files(tmp_path) -> None:
    wsp = _real("flowsom_68983", "gating.wsp")
    with pytest.raises(TemplateError, match=r"not a FlowJo 9 workspace.*read_flowjo"):
        read_flowjo9(wsp)
    junk = tmp_path / "junk.xml"
    junk.write_text("<Gating-ML/>")
    with pytest.raises(TemplateError, match="not a FlowJo 9 workspace"):
        read_flowjo9(junk)
    text = tmp_path / "text.xml"
    text.write_text("not xml at all")
    with pytest.raises(TemplateError, match="not readable XML"):
        read_flowjo9(text)
    bomb = tmp_path / "bomb.xml"
    bomb.write_text('<?xml version="1.0"?><!DOCTYPE W [<!ENTITY a "aaaa">]>'
                    '<Workspace version="2.0">&a;</Workspace>')
    with pytest.raises(TemplateError, match="refused"):
        read_flowjo9(bomb)


def test_is_flowjo9(workspace, tmp_path) -> None:
    assert is_flowjo9(workspace)
    assert not is_flowjo9(_real("flowsom_68983", "gating.wsp"))
    assert not is_flowjo9(_real("flowkit_8color", "8_color_ICS.wsp"))
    assert not is_flowjo9(_real("flowworkspacedata", FCS_NAME))
    assert not is_flowjo9(tmp_path / "missing.xml")


def test_yaml_round_trip(template, table, tmp_path) -> None:
    path = write_template(template, tmp_path / "t.yaml")
    back = load_template(path)
    assert back.population_names == template.population_names
    assert back.compensation == template.compensation
    for a, b in zip(template.populations, back.populations):
        assert a.parent == b.parent
        assert a.gate == b.gate, a.name
    fcs = _real("flowworkspacedata", FCS_NAME)
    counts = ip.gate_sample(ip.read_fcs(fcs), back).counts
    again = dict(zip(counts["population"], counts["count"]))
    assert all(again[name] == us for name, _, us in table)
