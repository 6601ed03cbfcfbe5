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


# -- verbs never write over their inputs ------------------------------------------------------

def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "immunoprofile.cli", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def test_template_export_refuses_to_overwrite_its_sample(cohort, tmp_path) -> None:
    fcs = tmp_path / "a.fcs"
    shutil.copy(next((cohort / "fcs").glob("*treg.fcs")), fcs)
    before = fcs.read_bytes()
    res = _cli("template", "export", "treg", "--sample", str(fcs), "--out", str(fcs))
    assert res.returncode == 1 and "is an input of this command" in res.stderr
    assert fcs.read_bytes() == before
    out = tmp_path / "t.xml"
    out.write_text("mine")
    res = _cli("template", "export", "treg", "--sample", str(fcs), "--out", str(out))
    assert res.returncode == 1 and "pass --force" in res.stderr and out.read_text() == "mine"
    res = _cli("template", "export", "treg", "--sample", str(fcs), "--out", str(out), "--force")
    assert res.returncode == 0, res.stderr
    assert "Gating-ML" in out.read_text() or "gating" in out.read_text()


def test_template_import_refuses_to_overwrite_its_source(tmp_path) -> None:
    xml = tmp_path / "t.xml"
    xml.write_text("<not-read/>")
    res = _cli("template", "import", str(xml), "--out", str(xml))
    assert res.returncode == 1 and "is an input of this command" in res.stderr
    assert xml.read_text() == "<not-read/>"


def test_simulate_keeps_an_existing_sample_sheet(tmp_path) -> None:
    (tmp_path / "study").mkdir()
    sheet = tmp_path / "study" / "samplesheet.csv"
    sheet.write_text("sample_id,path\nmine,x.fcs\n")
    res = _cli("simulate", "--out", str(tmp_path / "study"), "--patients-per-arm", "1",
               "--events", "1000", "--visits", "0")
    assert res.returncode == 1 and "pass --force" in res.stderr
    assert sheet.read_text() == "sample_id,path\nmine,x.fcs\n"


# -- FCS files whose keywords disagree with their data ----------------------------------------

def _fcs(tmp_path: Path, name: str, events, **kw) -> Path:
    import numpy as np

    from immunoprofile.io.fcs_write import write_fcs

    events = np.asarray(events, dtype=np.float32)
    names = [f"C{i}" for i in range(events.shape[1])]
    return write_fcs(tmp_path / name, events, names, [""] * len(names), **kw)


def _patch_keyword(path: Path, key: bytes, value: bytes) -> None:
    """Rewrite a TEXT keyword's value in place, padding to the same length (offsets hold)."""
    data = bytearray(path.read_bytes())
    start = data.index(key) + len(key) + 1
    end = data.index(data[start - 1:start], start)
    old = data[start:end]
    assert len(value) <= len(old), (value, old)
    data[start:end] = value.ljust(len(old))
    path.write_bytes(bytes(data))


def test_tot_or_par_disagreeing_with_the_data_is_refused(tmp_path) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    path = _fcs(tmp_path, "half.fcs", rng.normal(1000, 100, (2000, 3)))
    _patch_keyword(path, b"$TOT", b"1000")
    with pytest.raises(ip.FCSError, match=r"\$TOT or \$PAR is wrong"):
        ip.read_fcs(path)


def test_nan_events_are_counted_and_left_out_of_gating(tmp_path) -> None:
    import numpy as np

    from immunoprofile.template.yaml_io import template_from_dict

    rng = np.random.default_rng(1)
    events = rng.normal(1000, 100, (1000, 2))
    events[:7, 0] = np.nan
    events[7:10, 1] = np.inf
    path = _fcs(tmp_path, "nan.fcs", events)
    with pytest.warns(ip.FCSWarning, match="10 events hold NaN or infinite values"):
        sample = ip.read_fcs(path)
    template = template_from_dict({
        "name": "t", "compensation": "none", "transforms": {"default": "linear"},
        "populations": [{"name": "All", "gate": {"rectangle": {
            "C0": [-1e9, 1e9], "C1": [-1e9, 1e9]}}}]})
    result = ip.gate_sample(sample, template)
    row = result.counts.iloc[0]
    assert row["parent_count"] == 990 and row["count"] == 990


def test_unusable_spillover_is_a_clear_error_when_the_template_asks_for_it(tmp_path) -> None:
    import numpy as np
    import pandas as pd

    from immunoprofile.template.yaml_io import template_from_dict

    rng = np.random.default_rng(2)
    names = ["C0", "C1"]
    singular = pd.DataFrame([[1.0, 1.0], [1.0, 1.0]], index=names, columns=names)
    path = _fcs(tmp_path, "sing.fcs", rng.normal(1000, 100, (500, 2)), spillover=singular)
    template = template_from_dict({
        "name": "t", "compensation": "file", "transforms": {"default": "linear"},
        "populations": [{"name": "All", "gate": {"rectangle": {
            "C0": [0, 1e9], "C1": [0, 1e9]}}}]})
    with pytest.raises(ip.FCSError, match="singular"):
        ip.gate_sample(path, template)
    with_nan = pd.DataFrame([[1.0, np.nan], [0.1, 1.0]], index=names, columns=names)
    path = _fcs(tmp_path, "nan_spill.fcs", rng.normal(1000, 100, (500, 2)), spillover=with_nan)
    with pytest.raises(ip.FCSError, match=r"NaN|unusable|could not be parsed"):
        ip.gate_sample(path, template)


# -- faults around the batch ------------------------------------------------------------------

def test_an_unreachable_scheduler_is_refused_before_any_work(cohort, tmp_path) -> None:
    import time

    t0 = time.perf_counter()
    with pytest.raises(ImmunoprofileError, match="cannot reach the dask scheduler"):
        _gate(cohort, tmp_path / "run", scheduler="tcp://127.0.0.1:9")
    assert time.perf_counter() - t0 < 20  # not the 30-60 s of a dask connect timeout
    assert not (tmp_path / "run").exists()
    with pytest.raises(ImmunoprofileError, match="no host or port"):
        _gate(cohort, tmp_path / "run", scheduler="tcp://nowhere")


def test_compare_refuses_impossible_counts_with_the_row() -> None:
    table = pd.DataFrame({
        "sample_id": ["a", "b", "c", "d"], "patient_id": ["p1", "p1", "p2", "p2"],
        "arm": ["SOC", "SOC", "TEL", "TEL"], "timepoint": ["W0", "W2", "W0", "W2"],
        "template": "t", "population": "B cells", "parent": "Lymphocytes",
        "count": [10, 120, 5, -1], "parent_count": [100, 100, 50, 50]})
    with pytest.raises(ImmunoprofileError, match=r"2 row\(s\).*b t/B cells count 120 of 100"):
        ip.tl.differential_abundance(table, control="SOC", baseline="W0")


def _children(pid: int) -> set[int]:
    out = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        children = (task / "children")
        if children.is_file():
            out |= {int(c) for c in children.read_text().split()}
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux-only process checks")
def test_pool_workers_die_with_a_killed_run(cohort, tmp_path) -> None:
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "immunoprofile.cli", "gate",
                             str(cohort / "samplesheet.csv"), "-t", "treg", "-t", "bcell",
                             "--out", str(tmp_path / "run"), "--workers", "2", "--no-plots",
                             "--no-progress"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    deadline = time.time() + 120
    while time.time() < deadline and len(workers) < 2 and proc.poll() is None:
        workers = {c for c in _children(proc.pid) if _alive(c)}
        time.sleep(0.02)
    if len(workers) < 2:
        proc.kill()
        pytest.skip("the run finished before its workers could be seen")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers), "orphaned workers kept running"


def test_a_full_disk_at_the_final_write_leaves_the_previous_tables(cohort, tmp_path) -> None:
    """A real write failure: the file-size limit (RLIMIT_FSIZE) of the process makes the
    final tables' writes fail as a full disk does."""
    out = tmp_path / "run"
    _gate(cohort, out)
    names = ("subsets.parquet", "subsets.csv", "qc.csv", "errors.csv", "run.json")
    before = {n: (out / n).read_bytes() for n in names}
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))\n"
        "from immunoprofile.batch import BatchSettings, gate_samples\n"
        "from immunoprofile.errors import ImmunoprofileError\n"
        "try:\n"
        f"    gate_samples({str(cohort / 'samplesheet.csv')!r}, ['treg', 'bcell', 'plasma'],\n"
        f"                 {str(out)!r}, workers=1, resume=True,\n"
        "                 settings=BatchSettings(plots=False, keep_events=500))\n"
        "except ImmunoprofileError as exc:\n"
        "    print(exc); sys.exit(7)\n")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 7, res.stdout + res.stderr
    assert "previous tables are unchanged" in res.stdout
    assert {n: (out / n).read_bytes() for n in names} == before
    assert not list(out.glob(".*.tmp")) and not (out / ".lock").exists()
    again = _gate(cohort, out, resume=True)  # space is back: resume completes
    assert again.exit_code == 0


def test_a_file_without_events_is_an_error_row_not_a_traceback(cohort, tmp_path) -> None:
    src = ip.read_fcs(next((cohort / "fcs").glob("*treg.fcs")))
    from immunoprofile.io.fcs_write import write_fcs

    path = write_fcs(tmp_path / "zero.fcs", src.events[:0], list(src.channels["pnn"]),
                     list(src.channels["pns"].fillna("")), spillover=src.spillover)
    row = {"sample_id": "Z", "path": str(path), "patient_id": "P", "arm": "SOC",
           "timepoint": "W0"}
    outcome = process_sample(row, resolve_templates(["treg"]), tmp_path / "run", SETTINGS)
    assert outcome.status == "failed"
    assert outcome.errors[0]["stage"] == "read" and "no events" in outcome.errors[0]["error"]
    with pytest.raises(ip.FCSError, match="holds no events"):
        ip.gate_sample(path, "treg")
