"""The example B-cell template on flowAI's three real LSRII B-cell files.

``gating_templates/examples/bcell_igm_cd21.yaml`` was written for these files (uncompensated,
no truth): the readouts below are what its gates gave when they were checked by eye on the
gating plots, with a margin, so a change in the gating code or the template that moves a gate
shows up here. The gating plots are written under pytest's ``tmp_path`` and their paths
printed, so a reviewer can open them from the test output.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, SHARED

import immunoprofile as ip

DATA = SHARED / "real-data" / "flowai_bcells"
TEMPLATE = REPO / "gating_templates" / "examples" / "bcell_igm_cd21.yaml"
FILES = ("Bcells1", "Bcells2", "Bcells3")

# Observed on 2026-12 (B cells % of live lymphocytes; subsets % of B cells), with margins of
# about a fifth of the value (at least 1.5 points) so that small changes in placement pass.
EXPECTED: dict[str, dict[str, tuple[float, float]]] = {
    "Bcells1": {"B cells": (5.0, 8.5), "Naive B": (60, 75), "Unswitched memory B": (1.5, 5),
                "Switched memory B": (16, 27), "Double negative B": (6, 11),
                "CD21lo B": (8, 15), "CD23+ B": (88, 98)},
    "Bcells2": {"B cells": (2.0, 3.6), "Naive B": (6, 14), "Unswitched memory B": (4, 10),
                "Switched memory B": (57, 75), "Double negative B": (13, 23),
                "CD21lo B": (31, 45), "CD23+ B": (80, 95)},
    "Bcells3": {"B cells": (3.0, 4.8), "Naive B": (18, 30), "Unswitched memory B": (3, 7.5),
                "Switched memory B": (48, 66), "Double negative B": (10, 19),
                "CD21lo B": (15, 27), "CD23+ B": (70, 88)},
}
# Gates that must place from the data in every file: the scatter gates and CD19.
MANDATORY = ("Lymphocytes", "Singlets", "B cells")


def _path(name: str) -> Path:
    path = DATA / f"{name}.fcs"
    if not path.is_file():
        pytest.skip(f"{path} is absent: ../shared/real-data sits beside the clone in CI (set "
                    "IMMUNOPROFILE_SHARED to its parent folder to run these tests)")
    return path


@pytest.fixture(scope="module")
def gated() -> dict[str, tuple]:
    """``{file: (sample, result)}`` for the three files, gated once for the module."""
    out = {}
    for name in FILES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the reader's notes on these rebuilt files
            sample = ip.read_fcs(_path(name))
        out[name] = (sample, ip.gate_sample(sample, TEMPLATE))
    return out


def _counts(result) -> dict[str, int]:
    return dict(zip(result.counts["population"], result.counts["count"]))


@pytest.mark.parametrize("name", FILES)
def test_readouts_in_observed_ranges(gated, name: str) -> None:
    _, result = gated[name]
    table = result.counts.set_index("population")
    b_pct = float(table.loc["B cells", "pct_of_live_lymphocytes"])
    lo, hi = EXPECTED[name]["B cells"]
    assert lo <= b_pct <= hi, f"{name}: B cells {b_pct:.2f}% of live lymphocytes"
    for pop, (lo, hi) in EXPECTED[name].items():
        if pop == "B cells":
            continue
        pct = float(table.loc[pop, "pct_of_b_cells"])
        assert np.isfinite(pct) and lo <= pct <= hi, f"{name}: {pop} {pct:.2f}% of B cells"


@pytest.mark.parametrize("name", FILES)
def test_subsets_partition_their_parents(gated, name: str) -> None:
    n = _counts(gated[name][1])
    assert n["IgM+ B"] + n["IgM- B"] == n["B cells"]
    assert n["Naive B"] + n["Unswitched memory B"] == n["IgM+ B"]
    assert n["Switched memory B"] + n["Double negative B"] == n["IgM- B"]
    # Enough B cells for subset percentages to mean something.
    assert n["B cells"] >= 300


@pytest.mark.parametrize("name", FILES)
def test_adaptive_gates_place_where_expected(gated, name: str) -> None:
    positions = gated[name][1].gate_positions
    for pop in MANDATORY:
        assert not positions[pop]["fallback"], f"{name}: {pop}: {positions[pop]['reason']}"
    lym = positions["Lymphocytes"]["placed"]
    assert 110_000 < lym["center_x"] < 145_000 and 45_000 < lym["center_y"] < 65_000
    assert 0.8 < positions["Singlets"]["placed"]["ratio_mode"] < 0.95
    assert 4.3 < positions["B cells"]["placed"]["CD19"] < 5.5
    # Dead cells are small and fall outside the scatter gate, so viability is one peak inside
    # it: the live valley has nothing to find and the default cut (above the B cells) holds.
    live = positions["Live lymphocytes"]
    assert live["fallback"] and ("one peak" in live["reason"] or "no valley" in live["reason"])
    # Align-placed gates (continuum markers) find their reference peak in every file.
    for pop in ("CD21lo B", "CD23+ B", "Switched memory B"):
        assert not positions[pop]["fallback"], f"{name}: {pop}: {positions[pop]['reason']}"


def test_gating_plots(gated, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    folder = tmp_path / "bcell_igm_cd21_plots"
    folder.mkdir()
    written = []
    for name, (sample, result) in gated.items():
        png = folder / f"{name}.png"
        ip.pl.gating(result, sample, save=png)
        written.append(png)
    with capsys.disabled():
        print("\ngating plots of the flowAI B-cell files:")
        for png in written:
            print(f"  {png}")
    for png in written:
        with Image.open(png) as img:
            img.load()
            pixels = np.asarray(img.convert("L"), dtype=float)
        assert min(pixels.shape) > 400, png
        # Not blank: a drawn figure has dark ink and many grey levels on its white ground.
        assert pixels.std() > 10 and (pixels < 128).mean() > 0.01, png
        assert np.unique(pixels).size > 50, png
