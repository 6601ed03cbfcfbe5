"""Open a page in the system's headless Chromium (Debian's package) through Playwright."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    """The system Chromium, or skip: CI installs Debian's `chromium` in .ci/run."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium on this machine (apt-get install chromium; .ci/run installs it)")


@dataclass
class PageCheck:
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    n_images: int = 0
    broken_images: list[str] = field(default_factory=list)
    screenshot: Path | None = None
    title: str = ""
    lightbox_opened: bool = False


def check_page(html_file: Path, screenshot: Path) -> PageCheck:
    """Load a local HTML file offline; report console errors, undecodable images, a screenshot
    and whether clicking a gallery thumbnail opens its full-size image."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    result = PageCheck()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: result.console_errors.append(m.text)
                    if m.type == "error" else None)
            page.on("pageerror", lambda e: result.page_errors.append(str(e)))
            page.on("requestfailed", lambda r: result.failed_requests.append(r.url))
            page.goto(html_file.resolve().as_uri(), wait_until="load", timeout=120_000)
            result.title = page.title()
            # Images beside a large report load lazily: scroll through as a reader would.
            y = 0
            while y < page.evaluate("document.body.scrollHeight"):  # grows as images load
                page.evaluate(f"window.scrollTo(0, {y})")
                page.wait_for_timeout(40)
                y += 700
            page.wait_for_load_state("networkidle")
            page.evaluate("window.scrollTo(0, 0)")
            states = page.eval_on_selector_all(
                "img[src]", "imgs => imgs.map(i => [i.alt, i.complete && i.naturalWidth > 0])")
            result.n_images = len(states)
            result.broken_images = [alt for alt, ok in states if not ok]
            page.screenshot(path=str(screenshot), full_page=False)
            result.screenshot = screenshot
            thumb = page.query_selector("img[data-full]")
            if thumb is not None:
                thumb.click()
                result.lightbox_opened = page.eval_on_selector(
                    "#lightbox", "b => b.classList.contains('open') && "
                    "b.querySelector('img').naturalWidth > 0")
        finally:
            browser.close()
    return result
