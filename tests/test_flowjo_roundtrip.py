"""FlowJo round trip (#13): a run exported as a FlowJo 10 workspace gives FlowKit the run's
counts for every sample and population; a gate edited in the workspace comes back as a
per-sample override with an audit row, regating only that sample; overrides survive reruns and
refuse a file that changed."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pandas as pd
import pytest
import yaml
from lxml import etree

import immunoprofile as ip
from immunoprofile.batch import BatchSettings, apply_overrides, gate_samples
from immunoprofile.flowjo import apply_workspace, export_workspace
from immunoprofile.overrides import AUDIT_COLUMNS, OverrideError, read_overrides

SETTINGS = BatchSettings(plots=False, keep_events=200)
NS = {"gating": "http://www.isac-net.org/std/Gating-ML/v2.0/gating",
      "data-type": "http://www.isac-net.org/std/Gating-ML/v2.0/datatypes"}

# Every gate type a template can hold, on the Treg tube's markers: rectangles, a complement,
# ranges, AND / OR / NOT, an ellipse (the shipped templates add polygons, quadrants and the
# adaptive scatter ellipse).
GATE_TYPES = {
    "name": "gatetypes", "version": "1", "compensation": "file",
    "markers": {"required": ["FSC-A", "SSC-A", "CD3", "CD4", "CD25", "CD127"]},
    "transforms": {"default": {"type": "arcsinh", "cofactor": 150, "reference_range": 262144},
                   "FSC-A": "linear", "SSC-A": "linear"},
    "populations": [
        {"name": "Cells", "gate": {"rectangle": {"FSC-A": [20000, 200000],
                                                 "SSC-A": [1000, 150000]}}},
        {"name": "Not small", "parent": "Cells",
         "gate": {"range": {"FSC-A": [None, 40000]}, "complement": True}},
        {"name": "CD3+", "parent": "Not small", "gate": {"range": {"CD3": [2.5, None]}}},
        {"name": "CD4+", "parent": "Not small", "gate": {"range": {"CD4": [2.8, None]}}},
        {"name": "CD3+CD4+", "parent": "Not small", "gate": {"and": ["CD3+", "CD4+"]}},
        {"name": "CD3+ or CD4+", "parent": "Not small", "gate": {"or": ["CD3+", "CD4+"]}},
        {"name": "Not CD3", "parent": "Not small", "gate": {"not": ["CD3+"]}},
        {"name": "Blob", "parent": "CD3+", "gate": {"ellipse": {
            "dims": ["CD127", "CD25"], "center": [3.0, 1.5],
            "covariance": [[0.6, -0.2], [-0.2, 1.0]], "distance_square": 4.0}}},
    ],
}


def _fk_counts(wsp: Path, group: str, files: list[str]) -> pd.DataFrame:
    import flowkit as fk

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ws = fk.Workspace(str(wsp), fcs_samples=files)
        ws.analyze_samples(group_name=group, use_mp=False)
        report = ws.get_analysis_report()
    report["file"] = report["sample_id"]
    return report[["file", "gate_name", "count"]]


def _compare(run: ip.Run, wsp: Path, template: str) -> pd.DataFrame:
    subsets = pd.read_parquet(run.subsets_path)
    subsets = subsets[(subsets["template"] == template) & subsets["measured"]]
    sheet = pd.read_csv(run.manifest["sample_sheet"])
    sheet["file"] = [Path(p).name for p in sheet["path"]]
    fk = _fk_counts(wsp, template, list(sheet["path"]))
    mine = subsets.merge(sheet[["sample_id", "file"]], on="sample_id")
    return mine.merge(fk, left_on=["file", "population"], right_on=["file", "gate_name"],
                      how="left", suffixes=("", "_flowkit"))


@pytest.fixture(scope="module")
def gated(sim_cohort, tmp_path_factory) -> ip.Run:
    root = tmp_path_factory.mktemp("flowjo")
    sheet = pd.read_csv(sim_cohort.out / "samplesheet.csv")
    sheet["path"] = [str((sim_cohort.out / p).resolve()) for p in sheet["path"]]
    sheet = sheet.head(12)
    sheet.to_csv(root / "samplesheet.csv", index=False)
    (root / "gatetypes.yaml").write_text(yaml.safe_dump(GATE_TYPES, sort_keys=False))
    gate_samples(root / "samplesheet.csv", ["treg", "bcell", "plasma", root / "gatetypes.yaml"],
                 root / "run", workers=2, settings=SETTINGS)
    return ip.Run(root / "run")


@pytest.mark.parametrize("template", ["treg", "bcell", "plasma", "gatetypes"])
def test_flowkit_reads_the_runs_counts_from_the_export(gated, tmp_path, template) -> None:
    wsp = tmp_path / f"{template}.wsp"
    notes = export_workspace(gated, template, wsp)
    exported = notes[notes["exported"]]
    assert len(exported) == 6 and (exported["note"] == "").all(), exported["note"].tolist()
    both = _compare(gated, wsp, template)
    assert both["count_flowkit"].notna().all(), both[both["count_flowkit"].isna()]
    assert len(both) == len(exported) * both["population"].nunique()
    differ = both[both["count"] != both["count_flowkit"]]
    assert differ.empty, differ[["sample_id", "population", "count", "count_flowkit"]]
    assert (tmp_path / f"{template}.wsp.notes.csv").is_file()


def test_export_draws_qc_and_names_samples_by_file(gated, tmp_path) -> None:
    wsp = tmp_path / "treg.wsp"
    export_workspace(gated, "treg", wsp)
    root = etree.parse(str(wsp)).getroot()
    names = [n.get("name") for n in root.iter("SampleNode")]
    sheet = pd.read_csv(gated.manifest["sample_sheet"])
    treg_files = [Path(p).name for p, panel in zip(sheet["path"], sheet["panel"])
                  if panel == "treg"]
    assert names == treg_files
    uris = [d.get("uri") for d in root.iter("DataSet")]
    assert all(u.startswith("file:") and u.endswith(".fcs") for u in uris)
    # QC gates above the template's tree (the simulated files have time artefacts)
    tops = [p.get("name") for n in root.iter("SampleNode")
            for p in n.find("Subpopulations").findall("Population")]
    assert set(tops) == {"QC margins"}
    assert any(p.get("name") == "QC time" for p in root.iter("Population"))
    with pytest.raises(ip.errors.ImmunoprofileError, match="--force"):
        export_workspace(gated, "treg", wsp)


def _move_treg_gate(src: Path, dst: Path, file_name: str) -> None:
    """What a scientist does in FlowJo: drag the Treg gate's lower CD25 edge down."""
    tree = etree.parse(str(src))
    value = f"{{{NS['data-type']}}}value"
    for sample in tree.getroot().iter("Sample"):
        if sample.find("SampleNode").get("name") != file_name:
            continue
        for pop in sample.iter("Population"):
            if pop.get("name") != "Treg":
                continue
            poly = pop.find("Gate").find("gating:PolygonGate", NS)
            for vertex in poly.findall("gating:vertex", NS):
                coord = vertex.findall("gating:coordinate", NS)[1]
                if float(coord.get(value)) < 3000:
                    coord.set(value, repr(float(coord.get(value)) * 0.6))
    tree.write(str(dst))


@pytest.fixture(scope="module")
def edited(gated, tmp_path_factory):
    root = tmp_path_factory.mktemp("edited")
    run = ip.Run(shutil.copytree(gated.path, root / "run"))
    exported = root / "treg.wsp"
    export_workspace(run, "treg", exported)
    before = (run.path / "subsets.csv").read_text().splitlines()
    sid = "P001_W0_treg" if "P001_W0_treg" in set(run.subsets["sample_id"]) else \
        sorted(s for s in run.subsets["sample_id"] if s.endswith("treg"))[0]
    file_name = Path(pd.read_csv(run.manifest["sample_sheet"]).set_index("sample_id")
                     .loc[sid, "path"]).name
    edited_wsp = root / "treg_edited.wsp"
    _move_treg_gate(exported, edited_wsp, file_name)
    added, notes = apply_workspace(run, edited_wsp, by="jdoe", reason="CD25 tail cut",
                                   workers=2)
    return run, sid, before, edited_wsp, added, notes


def test_an_edited_gate_becomes_an_override_with_one_audit_row(edited, gated) -> None:
    run, sid, before, edited_wsp, added, notes = edited
    assert notes == []
    assert list(added.columns) == list(AUDIT_COLUMNS)
    assert len(added) == 1
    row = added.iloc[0]
    assert (row["sample_id"], row["template"], row["population"]) == (sid, "treg", "Treg")
    assert row["user"] == "jdoe" and row["reason"] == "CD25 tail cut"
    assert int(row["new_count"]) > int(row["old_count"])  # the lower edge went down
    # the old gate is the one the run placed (the template's default would be another)
    placed = gated.placed_templates(sid)["treg"]["Treg"].gate
    assert row["old_gate"].startswith("{polygon:") and row["old_gate"] != row["new_gate"]
    assert f"{placed.vertices[0][1]}" in row["old_gate"]
    audit = pd.read_csv(run.audit_path)
    assert len(audit) == 1 and list(audit.columns) == list(AUDIT_COLUMNS)
    overrides = read_overrides(run.overrides_path)
    assert [(o.sample_id, o.population) for o in overrides] == [(sid, "Treg")]
    assert overrides[0].file_sha256 == row["file_sha256"]

    subsets = pd.read_parquet(run.subsets_path)
    flagged = subsets[subsets["override"]]
    assert list(zip(flagged["sample_id"], flagged["population"])) == [(sid, "Treg")]
    treg = subsets[(subsets["sample_id"] == sid) & (subsets["population"] == "Treg")]
    assert int(treg["count"].iloc[0]) == int(row["new_count"])

    # FlowKit on the edited workspace counts what the run now says, every sample
    both = _compare(run, edited_wsp, "treg")
    assert (both["count"] == both["count_flowkit"]).all()

    # the other samples' rows are untouched, byte for byte
    after = (run.path / "subsets.csv").read_text().splitlines()
    others_before = [line for line in before[1:] if not line.startswith(sid + ",")]
    others_after = [line for line in after[1:] if not line.startswith(sid + ",")]
    assert others_after == others_before and len(after) == len(before)


def test_overrides_survive_resume_and_a_fresh_gate(edited) -> None:
    run, sid, *_ = edited
    sheet = run.manifest["sample_sheet"]
    templates = list(run.templates().values())
    count = int(pd.read_parquet(run.subsets_path).query(
        "sample_id == @sid and population == 'Treg'")["count"].iloc[0])
    for resume in (True, False):
        gate_samples(sheet, templates, run.path, workers=2, resume=resume, settings=SETTINGS)
        now = pd.read_parquet(run.subsets_path)
        treg = now[(now["sample_id"] == sid) & (now["population"] == "Treg")]
        assert bool(treg["override"].iloc[0]) and int(treg["count"].iloc[0]) == count


def test_an_override_made_on_another_file_is_refused(edited, tmp_path) -> None:
    run, sid, *_ = edited
    copy = ip.Run(shutil.copytree(run.path, tmp_path / "run"))
    text = copy.overrides_path.read_text()
    real = read_overrides(copy.overrides_path)[0].file_sha256
    copy.overrides_path.write_text(text.replace(real, "0" * 64))
    result = gate_samples(copy.manifest["sample_sheet"], list(copy.templates().values()),
                          copy.path, workers=1, resume=True, settings=SETTINGS)
    errors = result.errors[result.errors["sample_id"] == sid]
    assert len(errors) == 1 and errors["stage"].iloc[0] == "override"
    assert "changed since" in errors["error"].iloc[0]
    assert sid not in set(result.subsets["sample_id"])  # never gated without or with it


def test_overrides_from_python_and_bad_ones(edited, tmp_path) -> None:
    run, sid, *_ = edited
    copy = ip.Run(shutil.copytree(run.path, tmp_path / "run"))
    other = sorted(s for s in copy.subsets["sample_id"] if s.endswith("treg") and s != sid)[0]
    added = apply_overrides(copy, [{"sample_id": other, "template": "treg",
                                    "population": "T cells",
                                    "gate": {"range": {"CD3": [3.2, None]}}}],
                            by="asmith", reason="CD3 dim tail is debris", workers=1)
    assert len(added) == 1 and int(added["new_count"].iloc[0]) < int(added["old_count"].iloc[0])
    assert len(pd.read_csv(copy.audit_path)) == 2
    assert {o.sample_id for o in read_overrides(copy.overrides_path)} == {sid, other}
    with pytest.raises(OverrideError, match="does not have"):
        apply_overrides(copy, [{"sample_id": other, "template": "treg", "population": "NK",
                                "gate": {"range": {"CD3": [1, None]}}}], by="a", reason="b")
    with pytest.raises(OverrideError, match="--by"):
        apply_overrides(copy, [], by="", reason="b")
    copy.overrides_path.write_text("version: 1\noverrides:\n  - sample_id: x\n")
    with pytest.raises(OverrideError, match=r"overrides\.yaml, override 1: missing"):
        read_overrides(copy.overrides_path)


def test_the_cli_round_trip_rebuilds_anndata_and_report(gated, tmp_path) -> None:
    import anndata as ad
    from click.testing import CliRunner

    from immunoprofile.assemble import assemble_run
    from immunoprofile.cli import main
    from immunoprofile.report import write_report

    run = ip.Run(shutil.copytree(gated.path, tmp_path / "run"))
    assemble_run(run.path)
    write_report(run)
    runner = CliRunner()
    wsp, edited_wsp = tmp_path / "treg.wsp", tmp_path / "treg_edited.wsp"
    res = runner.invoke(main, ["flowjo", "export", str(run.path), "-t", "treg",
                               "--out", str(wsp)])
    assert res.exit_code == 0, res.output
    assert "6 samples gated with treg" in res.output
    res = runner.invoke(main, ["flowjo", "apply", str(run.path), str(wsp), "--by", "x",
                               "--reason", "none"])
    assert res.exit_code == 0 and "no gate moved" in res.output, res.output
    res = runner.invoke(main, ["flowjo", "apply", str(run.path), str(wsp)])
    assert res.exit_code == 2 and "--by" in res.output  # who and why are required

    sheet = pd.read_csv(run.manifest["sample_sheet"])
    row = sheet[sheet["panel"] == "treg"].iloc[0]
    _move_treg_gate(wsp, edited_wsp, Path(row["path"]).name)
    res = runner.invoke(main, ["flowjo", "apply", str(run.path), str(edited_wsp),
                               "--by", "J. Doe", "--reason", "CD25 tail cut"])
    assert res.exit_code == 0, res.output
    assert "1 override(s) applied" in res.output
    new = int(pd.read_csv(run.audit_path)["new_count"].iloc[0])
    # AnnData and the report follow the tables
    samples = ad.read_h5ad(run.samples_h5ad)
    visit = f"{row['patient_id']}_{row['timepoint']}"
    assert samples[visit, "treg/Treg"].X[0, 0] == new
    page = run.report_path.read_text()
    assert "Gates corrected by hand (1 change(s)" in page and 'href="audit.csv"' in page
    assert str(row["sample_id"]) in page and "J. Doe" in page


_APPLY_ONE = """
import sys
from immunoprofile.batch import apply_overrides
run, sid = sys.argv[1:3]
apply_overrides(run, [{"sample_id": sid, "template": "treg", "population": "T cells",
                       "gate": {"range": {"CD3": [3.0, None]}}}],
                by=f"user-{sid}", reason="concurrent", workers=1, plotter=None)
"""


def test_two_processes_applying_at_once_keep_both_changes(gated, tmp_path) -> None:
    """Two reviewers (two processes) save at the same moment: neither change is lost and
    neither save fails on the other's regating."""
    import subprocess
    import sys

    run = ip.Run(shutil.copytree(gated.path, tmp_path / "run"))
    sids = sorted(s for s in run.subsets["sample_id"].unique() if s.endswith("treg"))[:2]
    procs = [subprocess.Popen([sys.executable, "-c", _APPLY_ONE, str(run.path), sid],
                              stderr=subprocess.PIPE, text=True) for sid in sids]
    errors = [proc.communicate(timeout=300)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], errors
    assert {o.sample_id for o in read_overrides(run.overrides_path)} == set(sids)
    audit = pd.read_csv(run.audit_path)
    assert sorted(audit["sample_id"]) == sids
    flagged = ip.Run(run.path).subsets.query("override")
    assert set(flagged["sample_id"]) == set(sids)


def test_an_edited_gate_keeps_each_axis_own_scale_whatever_the_axis_order() -> None:
    """Edited coordinates come back through their own axis's factor (arcsinh axes are scaled
    by 1/(4.5·ln10) in GatingML), on the placed gate's own dimensions."""
    import flowkit as fk

    from immunoprofile.flowjo.apply import to_template_gate
    from immunoprofile.template.model import Dimension

    cd25, cd127 = Dimension(marker="CD25"), Dimension(marker="CD127")
    axes = {"PE-A": (cd25, 0.1), "BV421-A": (cd127, 1.0)}
    swapped = fk.gates.PolygonGate("Treg", [fk.Dimension("BV421-A"), fk.Dimension("PE-A")],
                                   [[1.0, 0.3], [2.0, 0.5], [1.5, 0.9]])
    gate = to_template_gate(swapped, axes)
    assert gate.dims == (cd127, cd25)
    assert gate.vertices[0] == pytest.approx((1.0, 3.0))
    with pytest.raises(ip.errors.ImmunoprofileError, match="exported axes"):
        to_template_gate(fk.gates.PolygonGate(
            "Treg", [fk.Dimension("FITC-A"), fk.Dimension("PE-A")], [[0, 0], [1, 1], [1, 0]]),
            axes)


def _small_run(sim_cohort, root: Path, template: dict | str, *, same_name: bool) -> ip.Run:
    """Two Treg tubes gated with one template; with ``same_name`` their files share a name
    (two folders), as two sites' exports often do."""
    sheet = pd.read_csv(sim_cohort.out / "samplesheet.csv").query("panel == 'treg'").head(2)
    paths = []
    for k, p in enumerate(sheet["path"]):
        folder = root / f"site{k}"
        folder.mkdir(parents=True, exist_ok=True)
        name = "tube.fcs" if same_name else Path(p).name
        shutil.copy(sim_cohort.out / p, folder / name)
        paths.append(str(folder / name))
    sheet["path"] = paths
    sheet.to_csv(root / "samplesheet.csv", index=False)
    if isinstance(template, dict):
        (root / "t.yaml").write_text(yaml.safe_dump(template, sort_keys=False))
        template = root / "t.yaml"
    gate_samples(root / "samplesheet.csv", [template], root / "run", workers=1,
                 settings=SETTINGS)
    return ip.Run(root / "run")


def test_export_refuses_two_samples_with_one_file_name(sim_cohort, tmp_path) -> None:
    run = _small_run(sim_cohort, tmp_path, "treg", same_name=True)
    with pytest.raises(ip.ImmunoprofileError, match=r"share the file name 'tube\.fcs'"):
        export_workspace(run, "treg", tmp_path / "out.wsp")
    assert not (tmp_path / "out.wsp").exists()  # nothing half-written


def test_export_refuses_a_slash_in_a_population_name(sim_cohort, tmp_path) -> None:
    spec = {**GATE_TYPES, "populations": [*GATE_TYPES["populations"][:3],
                                          {"name": "CD3+/CD4+", "parent": "CD3+",
                                           "gate": {"range": {"CD4": [2.8, None]}}}]}
    run = _small_run(sim_cohort, tmp_path, spec, same_name=False)
    with pytest.raises(ip.ImmunoprofileError, match=r"'CD3\+/CD4\+'.*may not hold one"):
        export_workspace(run, "gatetypes", tmp_path / "out.wsp")


def test_export_writes_its_notes_beside_the_workspace(gated, tmp_path) -> None:
    from immunoprofile.flowjo.export import notes_path

    out = tmp_path / "gt.wsp"
    notes = export_workspace(gated, "gatetypes", out)
    written = pd.read_csv(notes_path(out), keep_default_na=False)
    assert notes_path(out).parent == out.parent and out.is_file()
    assert list(written.columns) == ["sample_id", "file", "exported", "n_populations", "note"]
    assert written["sample_id"].astype(str).tolist() == notes["sample_id"].astype(str).tolist()
    # The B-cell tubes lack the template's markers: listed, not exported, with the reason.
    skipped = written[~written["exported"]]
    assert len(skipped) and skipped["note"].str.startswith("not gated with").all()
    with pytest.raises(ip.ImmunoprofileError, match="exists; pass --force"):
        export_workspace(gated, "gatetypes", out)
