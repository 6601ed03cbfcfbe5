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
