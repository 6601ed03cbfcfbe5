"""No stale, misplaced or silently wrong data (#18): reruns, resume, unsafe names, the run lock.

Each test reproduces a report against the previous main and checks the fixed behaviour on a
tiny simulated cohort (2 patients × 1 visit × 2 tubes, 5k events), gated in this process.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import immunoprofile as ip
from immunoprofile.batch import BatchSettings, gate_samples, process_sample, resolve_templates
from immunoprofile.errors import ImmunoprofileError, SampleSheetError

SETTINGS = BatchSettings(plots=False, keep_events=500)
TEMPLATES = ["treg", "bcell", "plasma"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    from immunoprofile.datasets import simulate_cohort

    out = tmp_path_factory.mktemp("integrity")
    simulate_cohort(out / "cohort", patients_per_arm=1, n_events=5_000, visits=(0,),
                    arms=("IL2", "SOC"), seed=3)
    return out / "cohort"


def _copy(cohort: Path, tmp_path: Path) -> Path:
    """A private copy of the cohort (tests damage files)."""
    dest = tmp_path / "cohort"
    shutil.copytree(cohort, dest)
    return dest


def _gate(cohort: Path, out: Path, **kwargs):
    return gate_samples(cohort / "samplesheet.csv", TEMPLATES, out, workers=1,
                        settings=SETTINGS, **kwargs)


def test_a_rerun_drops_the_rows_of_a_sample_that_now_fails(cohort, tmp_path) -> None:
    data = _copy(cohort, tmp_path)
    first = _gate(data, tmp_path / "run")
    assert first.exit_code == 0
    victim = str(first.subsets["sample_id"].iloc[0])
    fcs = data / "fcs" / f"{victim}.fcs"
    fcs.write_bytes(b"not an FCS file" * 10)

    again = _gate(data, tmp_path / "run")  # no --resume
    assert victim not in set(again.subsets["sample_id"].astype(str))
    assert victim in set(again.errors["sample_id"].astype(str))
    run = ip.Run(tmp_path / "run")
    assert victim not in set(run.subsets["sample_id"].astype(str))
    assert run.manifest["failed"] == 1 and again.exit_code == 3
    assert not run.events_path(victim).exists() and not run.part_subsets(victim).exists()
    assert "Traceback" not in again.errors.to_csv()


def test_resume_retries_a_sample_that_failed(cohort, tmp_path) -> None:
    data = _copy(cohort, tmp_path)
    sheet = pd.read_csv(data / "samplesheet.csv")
    victim = str(sheet["sample_id"].iloc[1])
    fcs = data / "fcs" / f"{victim}.fcs"
    original = fcs.read_bytes()
    fcs.write_bytes(original[: len(original) // 3])  # truncated: a transient copy failure
    first = _gate(data, tmp_path / "run")
    assert [o.status for o in first.outcomes if o.sample_id == victim] == ["failed"]

    fcs.write_bytes(original)  # the copy is fixed; "rerun with --resume" as the hint says
    again = _gate(data, tmp_path / "run", resume=True)
    status = {o.sample_id: o.status for o in again.outcomes}
    assert status[victim] == "ok"
    assert all(s == "resumed" for sid, s in status.items() if sid != victim)
    assert victim in set(again.subsets["sample_id"].astype(str))
    assert again.exit_code == 0 and ip.Run(tmp_path / "run").manifest["failed"] == 0


def test_sample_ids_that_are_not_file_names_are_refused_with_the_row(cohort, tmp_path) -> None:
    data = _copy(cohort, tmp_path)
    sheet = pd.read_csv(data / "samplesheet.csv")
    sheet.loc[0, "sample_id"] = "../../ESCAPED_SID"
    sheet.loc[1, "sample_id"] = "x" * 250
    sheet.to_csv(data / "samplesheet.csv", index=False)
    with pytest.raises(SampleSheetError) as err:
        ip.read_samplesheet(data / "samplesheet.csv")
    text = str(err.value)
    assert "row 2" in text and "path separator" in text and "longer than" in text

    # a sheet built in code skips the reader: the task refuses the id, nothing is written
    row = {"sample_id": "../../ESCAPED_SID", "path": str(next((data / "fcs").glob("*.fcs"))),
           "patient_id": "P", "arm": "SOC", "timepoint": "W0"}
    outcome = process_sample(row, resolve_templates(TEMPLATES), tmp_path / "run" / "deep",
                             SETTINGS)
    assert outcome.status == "failed" and "path separator" in outcome.errors[0]["error"]
    assert not list(tmp_path.rglob("ESCAPED_SID*"))


def test_template_names_must_be_file_names(tmp_path) -> None:
    text = ip.template.shipped_templates()["treg"].read_text().replace(
        "name: treg", "name: ../treg", 1)
    path = tmp_path / "t.yaml"
    path.write_text(text)
    with pytest.raises(ip.TemplateError, match="path separator"):
        ip.load_template(path)


def test_a_second_writer_is_refused_and_names_the_holder(cohort, tmp_path) -> None:
    run = ip.Run(tmp_path / "run")
    with run.lock("gate"):
        with pytest.raises(ImmunoprofileError, match=r"in use by `gate` \(process"):
            _gate(cohort, tmp_path / "run")
    assert not run.lock_path.exists()


def test_a_lock_left_by_a_dead_process_is_taken_over(cohort, tmp_path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    run = ip.Run(tmp_path / "run")
    run.path.mkdir(parents=True)
    import socket

    run.lock_path.write_text(json.dumps({"pid": int(dead.stdout), "verb": "gate",
                                         "host": socket.gethostname(), "since": "earlier"}))
    assert _gate(cohort, tmp_path / "run").exit_code == 0
    assert not run.lock_path.exists()


def test_clean_up_touches_only_the_runs_own_temporary_files(cohort, tmp_path) -> None:
    out = tmp_path / "run"
    mine = out / "projects" / "old" / ".draft.tmp"
    mine.parent.mkdir(parents=True)
    mine.write_text("a user's draft")
    leftover = out / "events" / ".P.parquet.abc123.tmp"
    leftover.parent.mkdir(parents=True)
    leftover.write_text("half-written")
    _gate(cohort, out)
    assert mine.read_text() == "a user's draft"
    assert not leftover.exists()


def test_the_lock_is_released_when_the_writer_fails(tmp_path) -> None:
    run = ip.Run(tmp_path / "run")
    with pytest.raises(RuntimeError, match="boom"), run.lock("gate"):
        raise RuntimeError("boom")
    assert not run.lock_path.exists()


# -- sample sheets as Excel and people write them ---------------------------------------------

_SHEET = ("sample_id,path,patient_id,arm,timepoint,lymphocytes_per_ul\n"
          "S1,a.fcs,P1,SOC,W0,1500\nS2,b.fcs,P2,TEL,W0,1200\n")


def _sheet(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "sheet.csv"
    path.write_bytes(data)
    return path


def test_sheet_with_bom_crlf_tsv_or_trailing_commas_reads(tmp_path) -> None:
    variants = {
        "bom": b"\xef\xbb\xbf" + _SHEET.encode(),
        "crlf": _SHEET.replace("\n", "\r\n").encode(),
        "tsv": _SHEET.replace(",", "\t").encode(),
        "trailing": "".join(line + ",\n" for line in _SHEET.splitlines()).encode(),
    }
    for name, data in variants.items():
        sheet = ip.read_samplesheet(_sheet(tmp_path, data))
        assert list(sheet.table["sample_id"]) == ["S1", "S2"], name
        assert sheet.table["lymphocytes_per_ul"].tolist() == [1500.0, 1200.0], name


@pytest.mark.parametrize(("data", "words"), [
    (b"", ["empty", "header row"]),
    (b"sample_id,path,patient_id,arm,timepoint\nS1,a.fcs,P1,SOC\n",
     ["row 1 (line 2)", "4 fields, the header has 5"]),
    (b"sample_id,path,patient_id,arm,timepoint\nS1,a.fcs,P1,SOC,W0,\n",
     ["row 1 (line 2)", "6 fields", "trailing separator"]),
    ("sample_id,path,patient_id,arm,timepoint\nS1,a.fcs,Pé1,SOC,W0\n".encode("latin-1"),
     ["line 2 is not UTF-8", "CSV UTF-8"]),
    (_SHEET.replace("1500", "inf").encode(), ["row 1 (line 2)", "not a finite number"]),
    (b"sample_id,path,patient_id,arm,timepoint,arm\nS1,a.fcs,P1,SOC,W0,TEL\n",
     ["'arm' appears 2 times"]),
])
def test_bad_sheets_are_refused_with_the_row_and_a_fix(tmp_path, data, words) -> None:
    with pytest.raises(SampleSheetError) as err:
        ip.read_samplesheet(_sheet(tmp_path, data))
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_cba_sheet_saved_as_csv_utf8_by_excel_reads(cohort, tmp_path) -> None:
    from immunoprofile.cba import read_cba_sheet

    sheet = cohort / "cba" / "cba_sheet.csv"
    plain = read_cba_sheet(sheet)
    excel = tmp_path / "cba" / "cba_sheet.csv"
    shutil.copytree(cohort / "cba", excel.parent)
    excel.write_bytes(b"\xef\xbb\xbf" + sheet.read_text().replace("\n", "\r\n").encode())
    read = read_cba_sheet(excel)
    assert list(read.columns) == list(plain.columns)
    pd.testing.assert_frame_equal(read.drop(columns="path"), plain.drop(columns="path"))
