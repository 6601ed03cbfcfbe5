"""The sample sheet: validation reported all at once, timepoint order, paths, TSV, extra columns,
and the `gate` CLI's --strict, --dry-run and usage errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from immunoprofile.batch import BatchSettings, gate_samples
from immunoprofile.errors import SampleSheetError
from immunoprofile.io.samplesheet import natural_key, read_samplesheet

HEADER = "sample_id,path,patient_id,arm,timepoint,week,lymphocytes_per_ul"


def write(path: Path, *lines: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "immunoprofile.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def cohort_rows(cohort, n: int, **extra) -> pd.DataFrame:
    """The first ``n`` rows of the simulated cohort's sheet with absolute paths."""
    rows = cohort.samplesheet.iloc[:n].copy()
    rows["path"] = [str(cohort.out / p) for p in rows["path"]]
    return rows.assign(**extra)


# -- validation --------------------------------------------------------------------------------

def test_structural_problems_reported_at_once_with_rows(tmp_path: Path) -> None:
    sheet = write(
        tmp_path / "sheet.csv", HEADER,
        "S1,a.fcs,P1,SOC,W0,0,1200",
        "S2,b.fcs,P1,TEL,W2,2,1100",    # P1 in two arms
        ",c.fcs,P2,SOC,W0,0,900",       # no sample id
        "S4,d.fcs,P2,SOC,W2,3,abc",     # W2 is week 2 and week 3; count not a number
        "S4,e.fcs,P3,IL2,W12,12,800",   # duplicate id
    )
    with pytest.raises(SampleSheetError) as err:
        read_samplesheet(sheet)
    msg = str(err.value)
    assert "sheet.csv has 5 problem(s)" in msg
    expected = [
        "row 3 (line 4): empty sample_id",
        "duplicate sample_id 'S4' in row 4 (line 5), row 5 (line 6)",
        "patient 'P1' is in several arms (SOC, TEL): row 1 (line 2), row 2 (line 3)",
        "row 4 (line 5): lymphocytes_per_ul 'abc' is not a number",
        "timepoint 'W2' has several weeks (2, 3): row 2 (line 3), row 4 (line 5)",
    ]
    for line in expected:
        assert line in msg, (line, msg)


def test_missing_columns_are_named_together(tmp_path: Path) -> None:
    sheet = write(tmp_path / "sheet.csv", "sample_id,path,patient_id,week", "S1,a.fcs,P1,0")
    with pytest.raises(SampleSheetError, match=r"missing column\(s\) arm, timepoint \(required: "
                                               r"sample_id, path, patient_id, arm, timepoint"):
        read_samplesheet(sheet)


def test_empty_required_values_and_negative_counts(tmp_path: Path) -> None:
    sheet = write(tmp_path / "sheet.csv", HEADER, "S1,,P1,SOC,,0,-5", "S2,b.fcs,,SOC,W0,0,7")
    with pytest.raises(SampleSheetError) as err:
        read_samplesheet(sheet)
    msg = str(err.value)
    for line in ("row 1 (line 2): empty path", "row 1 (line 2): empty timepoint",
                 "row 2 (line 3): empty patient_id",
                 "row 1 (line 2): lymphocytes_per_ul must not be negative"):
        assert line in msg, line


def test_timepoints_ordered_by_week(tmp_path: Path) -> None:
    sheet = write(tmp_path / "sheet.csv", HEADER,
                  "S1,a.fcs,P1,SOC,W12,12,1", "S2,b.fcs,P1,SOC,Baseline,0,1",
                  "S3,c.fcs,P1,SOC,Follow-up,52,1", "S4,d.fcs,P1,SOC,W2,2,1")
    table = read_samplesheet(sheet).table
    assert table["timepoint"].cat.ordered
    assert list(table["timepoint"].cat.categories) == ["Baseline", "W2", "W12", "Follow-up"]
    assert table["timepoint"].min() == "Baseline"  # comparisons follow study order


def test_timepoints_ordered_naturally_without_week(tmp_path: Path) -> None:
    sheet = write(tmp_path / "sheet.csv", "sample_id,path,patient_id,arm,timepoint",
                  "S1,a.fcs,P1,SOC,W12", "S2,b.fcs,P1,SOC,W2", "S3,c.fcs,P1,SOC,W0",
                  "S4,d.fcs,P2,SOC,W4", "S5,e.fcs,P2,SOC,W24")
    sheet_ = read_samplesheet(sheet)
    assert sheet_.timepoints == ["W0", "W2", "W4", "W12", "W24"]
    assert sorted(["W12", "w2", "W2b", "W1"], key=natural_key) == ["W1", "w2", "W2b", "W12"]


def test_paths_are_relative_to_the_sheet_folder(tmp_path: Path, monkeypatch) -> None:
    study = tmp_path / "study"
    for f in ("sheets/fcs/a.fcs", "raw/b.fcs"):
        (study / f).parent.mkdir(parents=True, exist_ok=True)
        (study / f).write_bytes(b"")
    absolute = study / "raw" / "b.fcs"
    sheet = write(study / "sheets" / "sheet.csv", HEADER, "S1,fcs/a.fcs,P1,SOC,W0,0,1",
                  "S2,../raw/b.fcs,P1,SOC,W2,2,1", f"S3,{absolute},P1,SOC,W4,4,1",
                  "S4,fcs/none.fcs,P1,SOC,W8,8,1")
    monkeypatch.chdir(tmp_path)  # not the sheet's folder
    parsed = read_samplesheet(Path("study/sheets/sheet.csv"))
    paths = [Path(p) for p in parsed.table["path"]]
    assert all(p.is_absolute() for p in paths)
    assert [p.resolve() for p in paths[:3]] == [(study / "sheets/fcs/a.fcs").resolve(),
                                                absolute.resolve(), absolute.resolve()]
    assert list(parsed.missing_files) == ["S4"]
    assert list(parsed.table["row"]) == [1, 2, 3, 4]
    with pytest.raises(SampleSheetError, match=r"row 4 \(line 5\): FCS file .*none.fcs does "
                                               r"not exist"):
        read_samplesheet(sheet, strict=True)


def test_tsv_reads_like_csv(tmp_path: Path) -> None:
    """Tabs are detected from the content, also when a value holds commas."""
    csv = write(tmp_path / "sheet.csv", HEADER + ",comment",
                'S1,a.fcs,P1,SOC,W0,0,1200,"redrawn, late"', "S2,b.fcs,P2,TEL,W2,2,900,")
    tsv = write(tmp_path / "sheet.tsv", HEADER.replace(",", "\t") + "\tcomment",
                "S1\ta.fcs\tP1\tSOC\tW0\t0\t1200\tredrawn, late",
                "S2\tb.fcs\tP2\tTEL\tW2\t2\t900\t")
    a, b = read_samplesheet(csv).table, read_samplesheet(tsv).table
    pd.testing.assert_frame_equal(a, b)
    assert list(b["comment"]) == ["redrawn, late", ""]
    assert b["lymphocytes_per_ul"].tolist() == [1200, 900]


# -- the sheet in a run ------------------------------------------------------------------------

def test_extra_columns_are_carried_into_the_tables(sim_cohort, tmp_path: Path) -> None:
    rows = cohort_rows(sim_cohort, 1, site="Leipzig", visit_note="fasting")
    sheet = tmp_path / "sheet.tsv"
    rows.to_csv(sheet, sep="\t", index=False)
    result = gate_samples(sheet, ["treg"], tmp_path / "run", workers=1,
                          settings=BatchSettings(plots=False, keep_events=100))
    assert result.exit_code == 0
    subsets = pd.read_parquet(tmp_path / "run" / "subsets.parquet")
    assert (subsets["site"] == "Leipzig").all() and (subsets["visit_note"] == "fasting").all()
    assert (subsets["days_since_last_il2_dose"].isna()).all()  # an empty numeric sheet column
    wide = pd.read_csv(tmp_path / "run" / "subsets_wide.csv")
    assert wide.loc[0, "site"] == "Leipzig"
    assert "treg/Treg/pct_of_cd4pos_t_cells" in wide.columns
    assert "path" not in subsets.columns and "row" not in subsets.columns


def test_strict_turns_missing_files_into_sheet_errors(sim_cohort, tmp_path: Path) -> None:
    rows = cohort_rows(sim_cohort, 2)
    rows.loc[1, "path"] = str(tmp_path / "gone.fcs")
    sheet = tmp_path / "sheet.csv"
    rows.to_csv(sheet, index=False)
    out = tmp_path / "run"
    result = cli("gate", sheet, "--template", "treg", "--out", out, "--strict")
    assert result.returncode == 1
    assert "row 2 (line 3): FCS file" in result.stderr
    assert "gone.fcs does not exist" in result.stderr
    assert not out.exists()  # nothing written


def test_dry_run_prints_the_plan_and_gates_nothing(sim_cohort, tmp_path: Path) -> None:
    rows = cohort_rows(sim_cohort, 3)
    rows.loc[2, "path"] = str(tmp_path / "gone.fcs")
    rows.loc[1, "panel"] = ""
    sheet = tmp_path / "sheet.csv"
    rows.to_csv(sheet, index=False)
    out = tmp_path / "run"
    result = cli("gate", sheet, "-t", "treg", "-t", "bcell", "--out", out, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "sheet ok: 3 samples, timepoints W0" in result.stdout
    assert "template treg v2.0.0" in result.stdout and "template bcell v2.0.0" in result.stdout
    plan = {line.split()[0]: line for line in result.stdout.splitlines()
            if line.strip().startswith("P00")}
    assert set(plan) == set(rows["sample_id"])
    first, second, third = rows["sample_id"]
    assert plan[first].rstrip().endswith("treg") and "True" in plan[first]
    assert "(by markers)" in plan[second]
    assert "False" in plan[third]
    assert "1 file(s) missing" in result.stderr
    assert not out.exists()


def test_usage_errors_exit_2(sim_cohort, tmp_path: Path) -> None:
    sheet = sim_cohort.out / "samplesheet.csv"
    no_template = cli("gate", sheet, "--out", tmp_path / "run")
    assert no_template.returncode == 2
    assert "Missing option '--template'" in no_template.stderr
    assert cli("gate", tmp_path / "nope.csv", "-t", "treg", "--out", tmp_path / "run"
               ).returncode == 2
    assert not (tmp_path / "run").exists()


def test_invalid_sheet_exits_1_with_every_problem(tmp_path: Path) -> None:
    sheet = write(tmp_path / "sheet.csv", HEADER, "S1,a.fcs,P1,SOC,W0,0,x",
                  "S1,b.fcs,P1,TEL,W2,2,1")
    result = cli("gate", sheet, "-t", "treg", "--out", tmp_path / "run")
    assert result.returncode == 1
    assert result.stderr.startswith("error: sample sheet")
    assert "has 3 problem(s)" in result.stderr
    assert not (tmp_path / "run").exists()
