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
