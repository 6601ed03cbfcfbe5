"""Template YAML: parsing, validation messages that point at the entry, round trips, CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import immunoprofile as ip
from immunoprofile.template import (
    Arcsinh,
    Logicle,
    RectangleGate,
    load_template,
    template_from_dict,
    write_template,
)

DATA = Path(__file__).parent / "data"

BASE = {
    "name": "mini",
    "version": "2.1",
    "compensation": "file",
    "markers": {"required": ["FSC-A", "SSC-A", "CD3", "CD4"], "optional": ["CD20"]},
    "transforms": {"default": {"type": "arcsinh", "cofactor": 150},
                   "FSC-A": "linear", "SSC-A": "linear",
                   "CD4": {"type": "logicle", "T": 262144, "W": 0.5, "M": 4.5, "A": 0}},
    "populations": [
        {"name": "Cells", "gate": {"rectangle": {"FSC-A": [20000, None], "SSC-A": [None, 2e5]}}},
        {"name": "T cells", "parent": "Cells", "gate": {"range": {"CD3": [2.5, None]}},
         "pct_of": ["Cells"], "mfi": ["CD3"]},
        {"name": "CD4 split", "parent": "T cells", "gate": {"quadrant": {
            "dims": ["CD4", "CD20"], "dividers": [0.5, 2.0],
            "quadrants": {"CD4+ CD20-": ["+", "-"], "CD4- CD20-": ["-", "-"]}}},
         "pct_of": ["Cells"]},
        {"name": "Not T", "parent": "Cells", "gate": {"not": "T cells"}},
    ],
}


def _with(**changes) -> dict:
    spec = yaml.safe_load(yaml.safe_dump(BASE))
    spec.update(changes)
    return spec


def test_parses_model() -> None:
    t = template_from_dict(BASE)
    assert t.name == "mini" and t.version == "2.1"
    assert t.population_names == ["Cells", "T cells", "CD4+ CD20-", "CD4- CD20-", "Not T"]
    q = t["CD4+ CD20-"]
    assert isinstance(q.gate, RectangleGate) and q.group == "CD4 split"
    assert q.gate.mins == (0.5, None) and q.gate.maxs == (None, 2.0)
    assert isinstance(t.transforms["default"], Arcsinh)
    assert isinstance(t.transforms["CD4"], Logicle)
    assert t.ancestors("CD4+ CD20-") == ["T cells", "Cells"]


def _problems(spec: dict) -> str:
    with pytest.raises(ip.TemplateError) as err:
        template_from_dict(spec, source="bad.yaml")
    return str(err.value)


def test_unknown_parent_points_at_entry() -> None:
    spec = _with()
    spec["populations"][1]["parent"] = "Lymphs"
    msg = _problems(spec)
    assert "population 'T cells'" in msg and "unknown parent 'Lymphs'" in msg


def test_unknown_marker_points_at_entry() -> None:
    spec = _with()
    spec["populations"][1]["gate"] = {"range": {"CD8": [2.0, None]}}
    assert "marker 'CD8' that is not declared" in _problems(spec)


def test_unknown_transform() -> None:
    spec = _with()
    spec["transforms"]["CD3"] = {"type": "biexponential"}
    msg = _problems(spec)
    assert "transforms.CD3" in msg and "unknown transform type 'biexponential'" in msg


def test_bad_transform_parameters() -> None:
    spec = _with()
    spec["transforms"]["CD3"] = {"type": "logicle", "T": 262144, "W": 3, "M": 4.5, "A": 0}
    assert "W must lie in [0, M/2]" in _problems(spec)


def test_cycle_is_reported() -> None:
    spec = _with()
    spec["populations"][0]["parent"] = "Not T"
    assert "cycle:" in _problems(spec)


def test_malformed_gates() -> None:
    spec = _with()
    spec["populations"][1]["gate"] = {"range": {"CD3": [5, 2]}}
    spec["populations"][0]["gate"] = {"polygon": {"dims": ["FSC-A", "SSC-A"],
                                                  "vertices": [[0, 0], [1, 1]]}}
    msg = _problems(spec)
    assert "populations[1] 'T cells'.gate.range.CD3: min 5.0 is not below max 2.0" in msg
    assert "populations[0] 'Cells'.gate.polygon: a polygon needs at least 3 vertices" in msg
    assert "2 problem(s)" in msg


def test_duplicate_id() -> None:
    spec = _with()
    spec["populations"].append({"name": "T cells", "parent": "Cells",
                                "gate": {"range": {"CD3": [3, None]}}})
    assert "population 'T cells': duplicate name" in _problems(spec)


def test_pct_of_names_any_population_of_the_template() -> None:
    """As FlowJo's frequency of any gate: a sibling works (the plasma template quotes its
    plasmablasts, gated from lymphocytes and blasts, against the lymphocyte gate's B cells);
    an unknown name is an error that says which."""
    spec = _with()
    spec["populations"][3]["pct_of"] = ["T cells"]
    t = template_from_dict(spec)
    assert t["Not T"].pct_of == ("T cells",)
    spec["populations"][3]["pct_of"] = ["B cells"]
    assert "population 'Not T'.pct_of: unknown population 'B cells'" in _problems(spec)


def test_adaptive_references_must_name_populations() -> None:
    """An unknown `reference` or `among` is reported (it used to hang the ordering)."""
    for key in ("reference", "among"):
        spec = _with()
        spec["populations"][1]["adaptive"] = {"method": "tail", key: "Nope",
                                              "window": [1, 3], "side": "low"}
        assert f"population 'T cells'.adaptive.{key}: unknown population 'Nope'" \
            in _problems(spec)
    spec = _with()
    spec["populations"][1]["adaptive"] = {"method": "reference", "marker": "CD3",
                                          "reference": "Cells", "among": "Cells"}
    assert "only valley and tail cuts are found among another population, not 'reference'" \
        in _problems(spec)


def test_yaml_round_trip_gives_same_membership(tmp_path: Path) -> None:
    t = template_from_dict(BASE)
    out = write_template(t, tmp_path / "mini.yaml")
    again = load_template(out)
    sample = ip.read_fcs(DATA / "test_comp_example.fcs", )
    mapping = {"CD20": "PerCP-Cy55-A"}
    a = ip.gate_sample(sample, t, mapping=mapping)
    b = ip.gate_sample(sample, again, mapping=mapping)
    for name in t.population_names:
        assert np.array_equal(a.membership[name], b.membership[name])
    assert 0 < a.counts.set_index("population").loc["T cells", "count"] < sample.n_events


def test_counts_table_columns_and_values() -> None:
    sample = ip.read_fcs(DATA / "test_comp_example.fcs")
    res = ip.gate_sample(sample, template_from_dict(BASE))
    table = res.counts.set_index("population")
    t_cells = table.loc["T cells"]
    assert t_cells["parent"] == "Cells"
    assert t_cells["pct_parent"] == pytest.approx(100 * t_cells["count"] / t_cells["parent_count"])
    assert t_cells["pct_of_cells"] == pytest.approx(t_cells["pct_parent"])
    cd3 = res.channels["CD3"]
    comp = ip.gating.engine.EventSpace(sample, res.template, res.channels).linear_channel(cd3)
    assert t_cells["mfi_median_CD3"] == pytest.approx(np.median(comp[res.membership["T cells"]]))
    assert table.loc["Not T", "count"] + t_cells["count"] == table.loc["Cells", "count"]


def test_optional_marker_absent_is_not_measured() -> None:
    """CD20 is optional: the quadrant needing it is reported as not measured, the rest gates."""
    sample = ip.read_fcs(DATA / "test_comp_example.fcs")
    res = ip.gate_sample(sample, template_from_dict(BASE))  # $PnS says CD20 is on PerCP-Cy55
    assert res.counts["measured"].all()
    no_cd20 = sample.channels.copy()
    no_cd20.loc[no_cd20["marker"] == "CD20", ["pns", "marker"]] = ""
    bare = ip.FCSSample(path=sample.path, events=sample.events, channels=no_cd20,
                        metadata=sample.metadata, spillover=sample.spillover)
    res = ip.gate_sample(bare, template_from_dict(BASE))
    table = res.counts.set_index("population")
    assert not table.loc["CD4+ CD20-", "measured"]
    assert "needs CD20" in table.loc["CD4+ CD20-", "note"]
    assert table.loc["T cells", "measured"] and table.loc["T cells", "count"] > 0
    assert "CD4+ CD20-" not in res.membership


def test_missing_required_marker_is_a_clear_error() -> None:
    spec = _with()
    spec["markers"]["required"].append("CD25")
    spec["populations"][1]["gate"] = {"range": {"CD25": [2.5, None]}}
    with pytest.raises(ip.PanelError, match=r"template mini needs CD25; file .* has: "):
        ip.gate_sample(DATA / "test_comp_example.fcs", template_from_dict(spec))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "immunoprofile.cli", *args],
                          capture_output=True, text=True, check=False)


def test_cli_validate(tmp_path: Path) -> None:
    good = write_template(template_from_dict(BASE), tmp_path / "good.yaml")
    spec = _with()
    spec["populations"][1]["parent"] = "Lymphs"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(spec))
    ok = _cli("template", "validate", str(good))
    assert ok.returncode == 0 and "5 populations" in ok.stdout
    ko = _cli("template", "validate", str(bad))
    assert ko.returncode == 1 and "unknown parent 'Lymphs'" in ko.stderr


def test_cli_import_export(tmp_path: Path) -> None:
    good = write_template(template_from_dict(BASE), tmp_path / "good.yaml")
    xml = tmp_path / "good.xml"
    res = _cli("template", "export", str(good), "--sample", str(DATA / "test_comp_example.fcs"),
               "--out", str(xml))
    assert res.returncode == 0, res.stderr
    res = _cli("template", "import", str(xml), "--out", str(tmp_path / "back.yaml"))
    assert res.returncode == 0, res.stderr
    back = load_template(tmp_path / "back.yaml")
    sample = ip.read_fcs(DATA / "test_comp_example.fcs")
    a = ip.gate_sample(sample, template_from_dict(BASE)).counts.set_index("population")
    b = ip.gate_sample(sample, back).counts.set_index("population")
    assert b.loc["T_cells", "count"] == a.loc["T cells", "count"]
    assert b.loc["CD4pos_CD20-", "count"] == a.loc["CD4+ CD20-", "count"]


def test_template_hash_follows_the_content_not_the_object() -> None:
    """--resume compares template hashes: an equal template loaded again hashes the same, a
    changed one (even the same object, changed in place) differently, cached or not."""
    import copy
    import dataclasses

    from immunoprofile.template.yaml_io import template_hash

    treg = load_template("treg")
    first = template_hash(treg)
    assert template_hash(load_template("treg")) == first
    assert template_hash(copy.deepcopy(treg)) == first
    changed = dataclasses.replace(treg, version=treg.version + ".1")
    assert template_hash(changed) != first
    treg.version = treg.version + ".2"
    assert template_hash(treg) not in (first, template_hash(changed))


def test_recent_results_keep_the_last_keys_and_compute_each_once() -> None:
    """The memo behind template hashes and mixture fits: a key's result is computed once,
    the oldest key is dropped first, and eight threads asking at once get the same values."""
    from concurrent.futures import ThreadPoolExecutor

    from immunoprofile._memo import RecentResults

    calls: list[int] = []

    def square(k: int):
        return lambda: calls.append(k) or k * k

    memo: RecentResults[int] = RecentResults(2)
    assert [memo.get(k, square(k)) for k in (1, 2, 1, 3, 2, 1)] == [1, 4, 1, 9, 4, 1]
    assert calls == [1, 2, 3, 1] and len(memo) == 2  # 1 dropped when 3 came, 2 kept
    memo.clear()
    assert len(memo) == 0
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda k: memo.get(k % 2, square(k % 2)), range(64))) == \
            [k % 2 for k in range(64)]
    assert len(memo) == 2
