"""Which templates acquisition QC runs for: the shipped ones and any with a `qc:` section by
default, not templates without one (FlowJo/GatingML imports), `--qc`/`--no-qc` overrule; the
subset table says how much QC removed per sample and template (`qc_removed_pct`)."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest

from immunoprofile.batch import BatchSettings, gate_samples
from immunoprofile.datasets import TubeParams, simulate_tube
from immunoprofile.io.fcs_write import write_fcs
from immunoprofile.template import load_template


@pytest.fixture(scope="module")
def clogged(tmp_path_factory):
    out = tmp_path_factory.mktemp("qcdefaults")
    tube = simulate_tube("treg", 20_000, seed=3, params=TubeParams(artefact="clog"))
    write_fcs(out / "clog.fcs", tube.events, tube.pnn, tube.pns,
              metadata={"$TIMESTEP": "0.01"}, spillover=tube.spillover)
    (out / "sheet.csv").write_text("sample_id,path,patient_id,arm,timepoint\n"
                                   "s1,clog.fcs,p1,A,W0\n")
    shipped = load_template("treg")
    imported = replace(shipped, name="treg_imported", qc=None)  # as `template import` makes
    return out, [shipped, imported]


def _run(clogged, name: str, qc: bool | None) -> pd.DataFrame:
    out, templates = clogged
    result = gate_samples(out / "sheet.csv", templates, out / name, workers=1,
                          settings=BatchSettings(qc=qc, plots=False, keep_events=500))
    rows = result.subsets[result.subsets["population"] == "Lymphocytes"]
    return rows.set_index("template")[["parent_count", "qc_removed_pct"]]


def test_default_runs_qc_only_for_templates_with_a_qc_section(clogged) -> None:
    table = _run(clogged, "auto", None)
    assert table.loc["treg", "qc_removed_pct"] > 1.0  # the clog's events
    assert table.loc["treg_imported", "qc_removed_pct"] == 0.0
    assert table.loc["treg_imported", "parent_count"] == 20_000
    removed = 20_000 * table.loc["treg", "qc_removed_pct"] / 100
    assert table.loc["treg", "parent_count"] == pytest.approx(20_000 - removed, abs=1)


@pytest.mark.parametrize("qc", [True, False])
def test_qc_flag_overrules_templates(clogged, qc: bool) -> None:
    table = _run(clogged, f"forced_{qc}", qc)
    assert ((table["qc_removed_pct"] > 1.0) == qc).all(), table
    assert table["parent_count"].nunique() == 1


def test_yaml_round_trip_keeps_the_absence_of_a_qc_section(tmp_path) -> None:
    from immunoprofile.template import write_template

    shipped = load_template("treg")
    assert shipped.wants_qc and shipped.qc == {"margin": True, "flow_rate": True,
                                               "signal": True}
    write_template(replace(shipped, qc=None), tmp_path / "t.yaml")
    assert "qc:" not in (tmp_path / "t.yaml").read_text()
    assert not load_template(tmp_path / "t.yaml").wants_qc
    (tmp_path / "e.yaml").write_text((tmp_path / "t.yaml").read_text() + "qc: {}\n")
    assert load_template(tmp_path / "e.yaml").wants_qc


def test_report_warns_about_samples_losing_more_than_ten_percent(clogged, tmp_path) -> None:
    import shutil

    from immunoprofile.report import write_report

    out, _ = clogged
    run = tmp_path / "run"
    shutil.copytree(out / "auto", run)
    qc = pd.read_csv(run / "qc.csv")
    assert '<p class="warn">' not in write_report(run).read_text()
    qc.loc[0, "pct_removed"] = 12.5  # as a sample with a long clog would have
    qc.to_csv(run / "qc.csv", index=False)
    text = write_report(run).read_text()
    assert "Acquisition QC removed more than 10% of the events of 1 sample(s): s1" in text


def test_events_kept_and_qc_follow_the_templates_that_gate(clogged) -> None:
    out, templates = clogged
    imported = templates[1]
    # Only the QC-less template: QC does not run, every event can be kept.
    result = gate_samples(out / "sheet.csv", [imported], out / "noqc", workers=1,
                          settings=BatchSettings(plots=False, keep_events=50_000))
    assert "n_removed" not in result.qc.columns
    events = pd.read_parquet(out / "noqc" / "events" / "s1.parquet")
    assert len(events) == 20_000
    # Both: the QC-less template's events are all there, and its own counts agree with them.
    result = gate_samples(out / "sheet.csv", templates, out / "both", workers=1,
                          settings=BatchSettings(plots=False, keep_events=50_000))
    events = pd.read_parquet(out / "both" / "events" / "s1.parquet")
    assert len(events) == 20_000
    counts = result.subsets.set_index(["template", "population"])["count"]
    assert events["treg_imported/Treg"].sum() == counts[("treg_imported", "Treg")]
    assert events["treg/Treg"].sum() == counts[("treg", "Treg")]
