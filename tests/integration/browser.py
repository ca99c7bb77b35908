"""The dashboard's browser tests' shared parts: Debian's headless Chromium driven by selenium,
waits, and the checks every page gets (no severe console error, text that reads on its
background)."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

# A folder to copy the screenshots into as well as the test's tmp_path, to look at them.
SHOTS = os.environ.get("GROKLAB_TEST_SHOTS")


@pytest.fixture(scope="module")
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, (
        "the dashboard test needs Debian's chromium and chromium-driver "
        "(apt-get install -y chromium chromium-driver; .ci/run installs them)"
    )
    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1800"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    b = webdriver.Chrome(options=options, service=Service(driver))
    yield b
    b.quit()


def wait(browser, condition, timeout: float = 30):
    return WebDriverWait(browser, timeout).until(condition)


def chart_drawn(chart_id: str):
    """The chart's series count once it has drawn (uPlot's canvas in place), else False."""
    def drawn(browser):
        return browser.execute_script(
            "const el = document.getElementById(arguments[0]);"
            "return el && el.dataset.drawn && el.querySelector('canvas') ? "
            "Number(el.dataset.seriesCount) : false;", chart_id)
    return drawn


def severe_errors(browser) -> list[str]:
    """The console's SEVERE entries, less the failed loads of the HTTP errors a page shows."""
    return [e["message"] for e in browser.get_log("browser")
            if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]


def screenshot(browser, tmp_path: Path, name: str, selector: str | None = None) -> Path:
    """The page (all of it, however long), or the element at `selector`, as tmp_path/name."""
    path = tmp_path / name
    # A window as tall as the page, so that nothing is cut at the bottom of the viewport.
    size = browser.get_window_size()
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(size["width"], max(size["height"], height + 200))
    try:
        if selector:
            browser.find_element(By.CSS_SELECTOR, selector).screenshot(str(path))
        else:
            browser.save_screenshot(str(path))
    finally:
        browser.set_window_size(size["width"], size["height"])
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(SHOTS) / name)
    return path


def _rgb(css: str) -> tuple[float, float, float]:
    r, g, b = (float(x) for x in re.findall(r"[\d.]+", css)[:3])
    return r, g, b


def contrast(foreground: str, background: str) -> float:
    """The WCAG contrast ratio of two CSS colours (rgb()/rgba() as the browser computes them)."""
    def luminance(css: str) -> float:
        def lin(c: float) -> float:
            c /= 255
            return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4
        r, g, b = _rgb(css)
        return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b)
    hi, lo = sorted((luminance(foreground), luminance(background)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)
