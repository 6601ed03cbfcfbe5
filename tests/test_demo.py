"""The whole journey (`immunoprofile demo`): every stage's output, the report in a browser,
and headline findings computed from the comparison tables."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from browser import check_page

from immunoprofile.demo import headline_findings


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
    assert demo_run.headlines == headline_findings(da)
    assert set(demo_run.headlines) == {"COMBO", "IL2", "TEL"}
    for arm, lines in demo_run.headlines.items():
        assert lines, arm
        for line in lines:
            assert "FDR" in line


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
    assert headline_findings(table) == {"IL2": ["no population change at FDR < 0.05"]}


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
