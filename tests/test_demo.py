"""The whole journey (`immunoprofile demo`): every stage's output, the report in a browser,
and headline findings computed from the comparison tables."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest
from browser import check_page

from immunoprofile.demo import TRIAL_ENDPOINTS, headline_findings


@pytest.mark.slow
def test_every_stage_wrote_its_outputs(demo_run) -> None:
    run = demo_run.run
    for name in ("subsets.parquet", "qc.csv", "errors.csv", "run.json", "clusters.parquet",
                 "report.html"):
        assert (run / name).is_file(), name
    assert list((run / "anndata").glob("W0_*.h5ad"))
    assert (run / "anndata" / "samples.h5ad").is_file()
    assert (run / "cytokines" / "cytokines.parquet").is_file()
    compare = run / "compare"
    for name in ("differential_abundance.parquet", "differential_state.parquet",
                 "response.parquet", "clinical.parquet", "cytokines.parquet",
                 "correlations.parquet"):
        assert (compare / name).is_file(), name
    assert pd.read_csv(run / "errors.csv").empty


@pytest.mark.slow
def test_headlines_come_from_the_tables(demo_run) -> None:
    da = pd.read_parquet(demo_run.run / "compare" / "differential_abundance.parquet")
    assert demo_run.headlines == headline_findings(da, endpoints=TRIAL_ENDPOINTS)
    assert set(demo_run.headlines) == {"COMBO", "IL2", "TEL", "SOC"}
    for arm, lines in demo_run.headlines.items():
        assert lines, arm
        for line in lines:
            assert "FDR" in line


_HEADLINE = re.compile(r"^(?P<pop>.+?) (?P<dir>up|down) from (?P<base>\S+) to (?P<tp>\S+) "
                       r"(?P<where>in cells/µL|among lymphocytes|within its parent) ")
PARENT = {"Treg": "CD4+ T cells", "B cells": "Live lymphocytes",
          "Plasmablasts": "B lineage", "Plasma cells": "Plasmablasts"}


@pytest.mark.slow
def test_the_demo_tells_the_trials_story(demo_run) -> None:
    """#16: IL-2 (alone or combined) raises Treg, telitacicept (alone or combined) lowers B
    cells and plasmablasts, beyond standard of care at FDR < 0.05; standard of care shows no
    endpoint change; every headline is a change the simulation planted, in its direction."""
    found = {}
    for arm, lines in demo_run.headlines.items():
        for line in lines:
            m = _HEADLINE.match(line)
            if m:
                found[(arm, m["pop"])] = m
    assert found[("IL2", "Treg")]["dir"] == "up" and found[("COMBO", "Treg")]["dir"] == "up"
    for arm in ("TEL", "COMBO"):
        for pop in ("B cells", "Plasmablasts"):
            assert found[(arm, pop)]["dir"] == "down", (arm, pop)
    assert not [k for k in found if k[0] == "SOC"]
    assert demo_run.headlines["SOC"][0].startswith("no endpoint change")
    # each headline against the planted fold changes (effects.csv: cells/µL per population)
    effects = pd.read_csv(demo_run.out / "cohort" / "effects.csv")
    planted = effects[effects["readout"] == "count"].drop_duplicates(
        ["population", "arm", "week"]).set_index(["population", "arm", "week"])
    planted = planted["expected_fold_change"]
    for (arm, pop), m in found.items():
        week = float(m["tp"].lstrip("W"))
        against = {"in cells/µL": None, "among lymphocytes": "Live lymphocytes",
                   "within its parent": PARENT[pop]}[m["where"]]
        folds = [planted[(pop, a, week)] / (planted[(against, a, week)] if against else 1.0)
                 for a in (arm, "SOC")]
        truth = math.log(folds[0] / folds[1])
        assert abs(truth) > math.log(1.1), (arm, pop, m.group(0), truth)
        assert (truth > 0) == (m["dir"] == "up"), (arm, pop, m.group(0), truth)
    # no mirror duplicates: a complement row never headlines
    da = pd.read_parquet(demo_run.run / "compare" / "differential_abundance.parquet")
    mirrored = set(da.loc[da["complement_of"] != "", "population"])
    assert "Conventional CD4" in mirrored  # Treg's complement within CD4+ T cells
    assert not mirrored & {pop for _, pop in found}
    assert (da["contrast_type"].astype(str) != "").all()  # every row names its contrast
    # the report lists complements once, saying so
    assert "Conventional CD4 (of Treg)" in demo_run.report.read_text()


@pytest.mark.slow
def test_demo_report_in_headless_chromium(demo_run, tmp_path: Path) -> None:
    result = check_page(demo_run.report, tmp_path / "demo_report.png")
    assert result.console_errors == [] and result.page_errors == []
    assert result.failed_requests == [] and result.broken_images == []
    assert result.n_images > 20 and result.lightbox_opened
    text = demo_run.report.read_text()
    for section in ('id="summary"', 'id="gating"', 'id="compare"', 'id="clusters"',
                    'id="cytokines"', 'id="clinical"'):
        assert section in text, section


def test_headline_findings_say_when_nothing_is_found() -> None:
    table = pd.DataFrame({"template": ["treg"], "population": ["Treg"],
                          "contrast_type": ["change_vs_control"], "arm": ["IL2"],
                          "reference_arm": ["SOC"], "timepoint": ["W2"], "baseline": ["W0"],
                          "estimate": [0.1], "fdr": [0.4], "reference": ["parent"]})
    assert headline_findings(table) == {"IL2": ["no population change at FDR < 0.05"],
                                        "SOC": ["no population change at FDR < 0.05"]}


def test_headlines_leave_out_quality_gates() -> None:
    rows = [("treg", "Singlets", 1e-6, 0.9), ("treg", "Treg", 1e-3, 0.5)]
    table = pd.DataFrame([{"template": t, "population": p, "contrast_type": "change_vs_control",
                           "arm": "IL2", "reference_arm": "SOC", "timepoint": "W2",
                           "baseline": "W0", "estimate": e, "fdr": q, "reference": "parent"}
                          for t, p, q, e in rows])
    lines = headline_findings(table)["IL2"]
    assert len(lines) == 1 and lines[0].startswith("Treg up from W0 to W2")


def test_demo_gives_a_pvalue_for_every_cytokine(demo_run) -> None:
    """#20: at serum levels (mostly under the kit's 20 pg/mL LLOQ) every analyte is still
    compared, and the censoring is reported per analyte."""
    import immunoprofile as ip
    from immunoprofile.demo import censoring_summary

    run = ip.Run(demo_run.run)
    table = run.comparison("cytokines")
    assert table["pvalue"].notna().all()
    cytokines = pd.read_parquet(run.cytokines_dir / "cytokines.parquet")
    assert set(table["population"]) == set(cytokines["analyte"])
    lines = censoring_summary(cytokines)
    assert len(lines) == cytokines["analyte"].nunique()
    assert all("below LoD" in line and "below LLOQ" in line for line in lines)
    # most values sit under the kit's 20 pg/mL LLOQ; a good share of them above the LoD,
    # reported (flagged) rather than censored
    between = cytokines["below_lloq"] & ~cytokines["below_lod"]
    assert cytokines["below_lloq"].mean() > 0.7 and between.mean() > 0.2


@pytest.mark.slow
def test_plasmablasts_are_compared_among_b_cells(demo_run) -> None:
    """The B-cell tube acquires three times the Treg tube's events (plasmablasts are rare), and
    plasmablasts, gated from lymphocytes and blasts, are still compared as % of B cells (the
    template quotes them so; B cells is not their ancestor)."""
    import flowkit as fk

    sheet = pd.read_csv(demo_run.out / "cohort" / "samplesheet.csv")
    first = {p: sheet[sheet["panel"] == p].iloc[0]["path"] for p in ("treg", "bcell")}
    sizes = {p: fk.Sample(demo_run.out / "cohort" / f).event_count
             for p, f in first.items()}
    assert sizes == {"treg": 20_000, "bcell": 60_000}
    da = pd.read_parquet(demo_run.run / "compare" / "differential_abundance.parquet")
    among_b = da[(da["template"] == "plasma") & (da["reference"] == "B cells")]
    assert set(among_b["population"]) == {"Plasmablasts", "Plasma cells"}
    assert among_b["pvalue"].notna().any()
