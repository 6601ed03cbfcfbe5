"""The HTML report, opened in a real headless Chromium (Debian's package)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from browser import check_page

from immunoprofile.batch import BatchSettings, gate_samples
from immunoprofile.report import write_report


@pytest.fixture(scope="module")
def small_run(sim_cohort, tmp_path_factory: pytest.TempPathFactory) -> Path:
    sheet = pd.read_csv(sim_cohort.out / "samplesheet.csv").head(8)
    sheet["path"] = [str(sim_cohort.out / p) for p in sheet["path"]]
    folder = tmp_path_factory.mktemp("report_run")
    sheet.to_csv(folder / "sheet.csv", index=False)
    gate_samples(folder / "sheet.csv", ["treg", "bcell"], folder / "run", workers=2,
                 settings=BatchSettings(keep_events=2000))
    return folder / "run"


def test_report_is_self_contained(small_run: Path) -> None:
    report = write_report(small_run)
    text = report.read_text()
    assert "<script src=" not in text and "http://" not in text and "https://" not in text
    assert text.count('class="thumb"') == len(list((small_run / "plots").glob("*.png")))
    # Thumbnails are small JPEGs (tens of KB), full size on click.
    thumbs = [len(t) * 3 / 4 for t in
              pd.Series(text.split('src="data:image/jpeg;base64,')[1:]).str.split('"').str[0]]
    assert thumbs and np.median(thumbs) < 80_000


def test_report_in_headless_chromium(small_run: Path, tmp_path: Path) -> None:
    report = write_report(small_run, tmp_path / "report.html")
    result = check_page(report, tmp_path / "report.png")
    assert result.console_errors == [] and result.page_errors == []
    assert result.failed_requests == []
    assert result.n_images >= 8 and result.broken_images == []
    assert result.lightbox_opened
    from matplotlib.image import imread

    shot = imread(result.screenshot)
    assert shot.shape[0] > 500 and float(shot[..., :3].std()) > 0.05  # not blank


def test_a_large_run_report_keeps_its_images_beside_it(small_run: Path, tmp_path: Path) -> None:
    """The form large runs get by default: thumbnails of the flagged samples beside the page,
    every other plot listed and linked where the run keeps it, nothing embedded."""
    import re

    out = small_run / "report_large.html"
    report = write_report(small_run, out, self_contained=False, gallery_limit=4)
    text = report.read_text()
    assert "data:image" not in text
    thumbs = sorted((small_run / "report_large_files").glob("*.jpg"))
    assert 0 < len(thumbs) <= 4 and text.count('class="thumb"') == len(thumbs)
    links = re.findall(r'(?:src|href|data-full)="([^"]+\.(?:png|jpg))"', text)
    assert links and all((report.parent / link).is_file() for link in links)
    plots = list((small_run / "plots").glob("*.png"))
    assert text.count("<li><a href=") == len(plots) - len(thumbs)  # the rest, on demand
    # the page and what it loads stay small whatever the number of unflagged samples
    assert report.stat().st_size + sum(t.stat().st_size for t in thumbs) < 1_000_000
    result = check_page(report, tmp_path / "large.png")
    assert result.console_errors == [] and result.broken_images == []
    assert result.failed_requests == []
    # a rewrite leaves no thumbnail no page refers to
    write_report(small_run, out, self_contained=False, gallery_limit=2)
    assert len(list((small_run / "report_large_files").glob("*.jpg"))) <= 2


def test_hand_corrected_samples_come_first_in_the_gallery(small_run: Path, tmp_path: Path) -> None:
    import re
    import shutil

    from immunoprofile.batch import apply_overrides
    from immunoprofile.run import Run

    run = Path(shutil.copytree(small_run, tmp_path / "run"))
    last = sorted(Run(run).subsets["sample_id"].astype(str).unique())[-1]
    template = str(Run(run).subsets.query("sample_id == @last")["template"].iloc[0])
    pop = "Live lymphocytes"
    apply_overrides(run, [{"sample_id": last, "template": template, "population": pop,
                           "gate": {"range": {"viability": [None, 1.5]}}}],
                    by="tester", reason="dead cells in the gate", workers=1)
    text = write_report(run, self_contained=False).read_text()
    shown = re.findall(r'<div class="thumb"><img[^>]* alt="([^"]+)"', text)
    assert shown and shown[0].startswith(last)
    assert "gate corrected by hand" in text


def test_gating_plots_belong_to_their_sample_whatever_the_underscores() -> None:
    """Plot names are <sample_id>_<template>.png; template names may hold '_' too."""
    from immunoprofile.run import Run

    names = ["bcell", "bcell_igm_cd21", "treg"]
    assert Run.plot_sample(Path("P01_W0_bcell_igm_cd21.png"), names) == "P01_W0"
    assert Run.plot_sample(Path("P01_W0_bcell.png"), names) == "P01_W0"
    assert Run.plot_sample(Path("S_1_treg.png"), names) == "S_1"
    assert Run.plot_sample(Path("odd_name.png"), names) == "odd"
