"""Our engine against FlowKit's GatingStrategy.gate_sample, gate type by gate type.

Each template is exported with ``template_to_flowkit`` (the GatingML binding) and gated by
FlowKit on the same file: membership must be identical event for event. Gate positions sit at
data quantiles so that many events lie close to every boundary.
"""

from __future__ import annotations

from pathlib import Path

import flowkit as fk
import numpy as np
import pytest

import immunoprofile as ip
from immunoprofile.template import template_from_dict
from immunoprofile.template.gatingml import (
    gatingml_id,
    read_gatingml,
    template_to_flowkit,
    write_gatingml,
)

DATA = Path(__file__).parent / "data"

TRANSFORMS = {
    "logicle": {"type": "logicle", "T": 262144, "W": 0.5, "M": 4.5, "A": 0},
    "arcsinh": {"type": "arcsinh", "cofactor": 150},
    "asinh": {"type": "asinh", "T": 262144, "M": 4.5, "A": 0},
    "hyperlog": {"type": "hyperlog", "T": 262144, "W": 0.5, "M": 4.5, "A": 0},
}


def _q(sample: ip.FCSSample, template_transform: dict, marker: str, q: float) -> float:
    """Quantile of a marker's compensated, transformed values (where gates should cut)."""
    from immunoprofile.template.transforms import transform_from_dict

    pnn = ip.panel.resolve_markers(sample, [marker])[marker]
    col = sample.channel_names.index(pnn)
    raw = sample.events.astype(np.float64)
    if sample.spillover is not None and pnn in sample.spillover.columns:
        idx = [sample.channel_names.index(c) for c in sample.spillover.columns]
        comp = np.linalg.solve(sample.spillover.values.T, raw[:, idx].T).T
        values = comp[:, list(sample.spillover.columns).index(pnn)]
    else:
        values = raw[:, col]
    if marker in ("FSC-A", "SSC-A", "FSC-H"):
        return float(np.quantile(values, q))
    return float(np.quantile(transform_from_dict(template_transform).apply(values), q))


def _template(sample: ip.FCSSample, xform: str, markers: dict[str, str]) -> ip.template.Template:
    """Every gate type, positioned at quantiles of this file's data."""
    t = TRANSFORMS[xform]
    q = {name: (lambda m, qq: _q(sample, t, m, qq)) for name in ["q"]}["q"]
    a, b, c, d = (markers[k] for k in "abcd")
    fsc_lo, fsc_hi = q("FSC-A", 0.05), q("FSC-A", 0.9)
    ssc_lo, ssc_hi = q("SSC-A", 0.02), q("SSC-A", 0.8)
    spec = {
        "name": f"all_gate_types_{xform}",
        "version": "1",
        "compensation": "file",
        "transforms": {"default": t, "FSC-A": "linear", "SSC-A": "linear"},
        "populations": [
            {"name": "Cells", "gate": {"polygon": {"dims": ["FSC-A", "SSC-A"], "vertices": [
                [fsc_lo, ssc_lo], [fsc_hi, ssc_lo], [fsc_hi, (ssc_lo + ssc_hi) / 2],
                [(fsc_lo + fsc_hi) / 2, ssc_hi], [fsc_lo, ssc_hi]]}}},
            {"name": "A+", "parent": "Cells", "gate": {"range": {a: [q(a, 0.4), None]}}},
            {"name": "A box", "parent": "Cells",
             "gate": {"rectangle": {a: [q(a, 0.2), q(a, 0.8)], b: [q(b, 0.3), q(b, 0.9)]}}},
            {"name": "B ellipse", "parent": "A+", "gate": {"ellipse": {
                "dims": [b, c], "center": [q(b, 0.5), q(c, 0.5)],
                "half_axes": [abs(q(b, 0.8) - q(b, 0.2)) + 1e-3,
                              abs(q(c, 0.7) - q(c, 0.3)) + 1e-3], "angle": 30}}},
            {"name": "CD quadrants", "parent": "A+", "gate": {"quadrant": {
                "dims": [c, d], "dividers": [q(c, 0.5), q(d, 0.5)],
                "quadrants": {"Q++": ["+", "+"], "Q+-": ["+", "-"], "Q-+": ["-", "+"],
                              "Q--": ["-", "-"]}}}},
            {"name": "Not A box", "parent": "Cells", "gate": {"not": ["A box"]}},
            {"name": "Ellipse or Q++", "parent": "A+", "gate": {"or": ["B ellipse", "Q++"]}},
            {"name": "Q++ not ellipse", "parent": "A+", "gate": {"and": ["Q++", "!B ellipse"]}},
            {"name": "Outside poly", "parent": "A+", "gate": {"complement": True, "polygon": {
                "dims": [a, b], "vertices": [[q(a, 0.5), q(b, 0.1)], [q(a, 0.95), q(b, 0.5)],
                                             [q(a, 0.6), q(b, 0.95)]]}}},
        ],
    }
    return template_from_dict(spec, source=f"test:{xform}")


def _compare(path: Path, template: ip.template.Template) -> dict[str, int]:
    sample = ip.read_fcs(path)
    ours = ip.gate_sample(sample, template)
    gs = template_to_flowkit(template, sample)
    theirs = gs.gate_sample(fk.Sample(str(path), ignore_offset_error=True))
    counts = {}
    for pop in template.populations:
        gate_path = ("root", *map(gatingml_id, reversed(template.ancestors(pop.name))))
        fk_mask = theirs.get_gate_membership(gatingml_id(pop.name), gate_path=gate_path)
        mine = ours.membership[pop.name]
        assert np.array_equal(mine, fk_mask), (
            f"{path.name} {template.name} {pop.name}: {(mine != fk_mask).sum()} events differ"
        )
        counts[pop.name] = int(mine.sum())
    return counts


CASES = [
    ("test_comp_example.fcs", {"a": "CD3", "b": "CD4", "c": "CD20", "d": "CD33"}),
]


@pytest.mark.parametrize("xform", sorted(TRANSFORMS))
@pytest.mark.parametrize(("fname", "markers"), CASES)
def test_equal_to_flowkit_on_real_file_with_spillover(fname: str, markers: dict, xform: str):
    path = DATA / fname
    template = _template(ip.read_fcs(path), xform, markers)
    counts = _compare(path, template)
    # Gates cut through the data: no population empty or complete.
    assert 0 < counts["A+"] < counts["Cells"]
    assert 0 < counts["B ellipse"] < counts["A+"]
    assert sum(counts[q] for q in ("Q++", "Q+-", "Q-+", "Q--")) == counts["A+"]
    assert counts["Not A box"] + counts["A box"] == counts["Cells"]


@pytest.mark.corpus
@pytest.mark.parametrize("xform", ["logicle", "arcsinh"])
@pytest.mark.parametrize(("fname", "markers"), [
    ("flowkit/100715.fcs", {"a": "CD3", "b": "CD4", "c": "CD8", "d": "CD27"}),
    ("vendors/FACS_Diva/facs_diva_test.fcs", {"a": "CD45", "b": "CD19", "c": "CD20", "d": "CD38"}),
])
def test_equal_to_flowkit_on_corpus_files(fname: str, markers: dict, xform: str):
    from conftest import corpus_path

    path = corpus_path(*fname.split("/"))
    template = _template(ip.read_fcs(path), xform, markers)
    _compare(path, template)


def test_gatingml_export_round_trip(tmp_path: Path) -> None:
    """ours → GatingML file → FlowKit (and → our reader) gives the same counts."""
    path = DATA / "test_comp_example.fcs"
    sample = ip.read_fcs(path)
    template = _template(sample, "arcsinh", CASES[0][1])
    ours = ip.gate_sample(sample, template)
    xml = write_gatingml(template, tmp_path / "exported.xml", sample=sample)
    fk_sample = fk.Sample(str(path), ignore_offset_error=True)
    fk_result = fk.parse_gating_xml(str(xml)).gate_sample(fk_sample)
    reread = ip.gate_sample(sample, read_gatingml(xml))
    for pop in template.populations:
        gid = gatingml_id(pop.name)
        gate_path = ("root", *map(gatingml_id, reversed(template.ancestors(pop.name))))
        expected = int(ours.membership[pop.name].sum())
        assert fk_result.get_gate_membership(gid, gate_path=gate_path).sum() == expected
        assert int(reread.membership[gid].sum()) == expected


@pytest.fixture(scope="module")
def simulated_fcs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from immunoprofile.datasets import simulate_tube
    from immunoprofile.io.fcs_write import write_fcs

    tube = simulate_tube("treg", 20_000, seed=3)
    out = tmp_path_factory.mktemp("sim") / "treg.fcs"
    return write_fcs(out, tube.events, tube.pnn, tube.pns, spillover=tube.spillover)


@pytest.mark.parametrize("xform", sorted(TRANSFORMS))
def test_equal_to_flowkit_on_simulated_file(simulated_fcs: Path, xform: str) -> None:
    markers = {"a": "CD3", "b": "CD4", "c": "CD25", "d": "CD127"}
    template = _template(ip.read_fcs(simulated_fcs), xform, markers)
    counts = _compare(simulated_fcs, template)
    assert 0 < counts["Q++"] < counts["A+"]
