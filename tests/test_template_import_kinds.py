"""``template import`` tells the gating file kinds apart by content (#13): FlowJo 10
workspaces, FlowJo 9 workspaces (also XML, sometimes .wsp), FACSDiva experiments, GatingML."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED, corpus_path

from immunoprofile.errors import TemplateError
from immunoprofile.template import gating_file_kind, import_template, load_template

REAL = SHARED / "real-data"


def _real(*parts: str) -> Path:
    path = REAL.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"{path} is absent: ../shared/real-data sits beside the clone in CI (set "
                    "IMMUNOPROFILE_SHARED to its parent folder to run these tests)")
    return path


@pytest.mark.parametrize("parts, kind, sample, n_pops", [
    (("flowworkspacedata", "A2004Analysis.xml"), "flowjo9", "a2004_O1T2pb05i_A2_A02.fcs", 19),
    (("flowworkspacedata", "PE_2.xml"), "diva", "124500.fcs", 5),
    (("flowsom_68983", "gating.wsp"), "flowjo", None, 15),
])
def test_each_kind_is_detected_and_imported_by_the_cli(tmp_path, parts, kind, sample,
                                                        n_pops) -> None:
    source = _real(*parts)
    assert gating_file_kind(source) == kind
    args = [sys.executable, "-m", "immunoprofile.cli", "template", "import", str(source),
            "--out", "t.yaml", *(["--sample", sample] if sample else [])]
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert f"{n_pops} populations" in done.stdout
    assert len(load_template(tmp_path / "t.yaml")) == n_pops


def test_gatingml_and_missing_files() -> None:
    gml = corpus_path("flowkit", "gate_ref", "gml", "gml_matrix_rect5_gate.xml")
    assert gating_file_kind(gml) == "gatingml"
    assert len(import_template(gml)) >= 1
    with pytest.raises(TemplateError, match="does not exist"):
        import_template("no/such/file.xml")
