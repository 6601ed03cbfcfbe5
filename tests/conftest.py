"""Shared fixtures: the FCS corpus (skipped with a reason when absent) and test data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "data"
SHARED = Path(os.environ.get("IMMUNOPROFILE_SHARED", REPO.parent / "shared"))
CORPUS = SHARED / "fcs-corpus"


def corpus_path(*parts: str) -> Path:
    """A path inside ../shared/fcs-corpus, skipping the test when the corpus is absent."""
    if not CORPUS.is_dir():
        pytest.skip(
            f"the shared FCS corpus is not at {CORPUS} (it sits beside the clone in CI; "
            "set IMMUNOPROFILE_SHARED to its parent folder to run these tests)"
        )
    return CORPUS.joinpath(*parts)


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    return corpus_path()


@pytest.fixture(scope="session")
def sim_cohort(tmp_path_factory: pytest.TempPathFactory):
    """A simulated trial cohort shared by the session: 4 arms × 2 patients × 3 visits × 2 tubes
    (48 FCS files, 30k events each) with per-batch staining shifts and time artefacts."""
    from immunoprofile.datasets import simulate_cohort

    out = tmp_path_factory.mktemp("cohort")
    return simulate_cohort(out, patients_per_arm=2, n_events=30_000, visits=(0, 2, 12), seed=11)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory):
    """The whole journey once per session, exactly as `immunoprofile demo` runs it (8
    patients per arm, weeks 0, 2, 12, 20k events per Treg file and 60k per B-cell file): the
    story it tells is tested.
    Returns the DemoResult."""
    from immunoprofile.demo import run_demo

    return run_demo(tmp_path_factory.mktemp("demo"), workers=2, say=lambda _: None)


@pytest.fixture(scope="session")
def default_cohort(tmp_path_factory: pytest.TempPathFactory):
    """The default simulated cohort: 4 arms × 8 patients × 5 visits × 2 tubes, 50k events
    (with its clinical table and bead-array files)."""
    from immunoprofile.datasets import simulate_cohort

    return simulate_cohort(tmp_path_factory.mktemp("default_cohort"))
