"""The web dashboard in a real browser (Debian's headless Chromium through selenium), against the
real stack: sign in with a #token= fragment, find the finished ci-small run in the list, open it,
see its charts and its Fourier spectrum drawn, then a bad token and an unknown id shown as errors;
pause and resume an experiment and a sweep with a write token's buttons. Screenshots of each page
land in the test's tmp_path."""
from __future__ import annotations

import uuid

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC

from tests.integration.browser import browser, chart_drawn, screenshot, severe_errors, wait  # noqa: F401

pytestmark = pytest.mark.integration

# The charts of the experiment page and the series each draws for a ci-small run.
CHART_SERIES = {
    "chart-accuracy": 2,  # train_acc, val_acc
    "chart-loss": 2,  # train_loss, val_loss
    "chart-weight-norm": 1,
    "chart-restricted": 2,  # restricted_loss, excluded_loss
    "chart-gini": 2,  # gini_embed, gini_unembed
    "chart-key-freqs": 1,  # key_freq_count
}


def banner_text(browser) -> str | bool:
    banner = browser.find_element(By.ID, "error-banner")
    return banner.is_displayed() and banner.text


def test_dashboard_shows_a_finished_run_and_its_errors(stack, grokked_run, browser, tmp_path):
    token = stack.client.headers["Authorization"].removeprefix("Bearer ")
    run_id = grokked_run["id"]
    analysis = stack.client.get(f"/api/v1/experiments/{run_id}/analysis").json()
    checkpoints = stack.client.get(f"/api/v1/experiments/{run_id}/checkpoints").json()

    # Sign in with the fragment: the token is kept in sessionStorage and leaves the address bar.
    browser.get(f"{stack.url}/#token={token}")
    row = wait(browser, EC.visibility_of_element_located(
        (By.CSS_SELECTOR, f'#experiments tr[data-id="{run_id}"]')))
    assert "token" not in browser.current_url
    assert browser.execute_script("return sessionStorage.getItem('groklab.token')") == token
    assert grokked_run["name"] in row.text and "succeeded" in row.text
    assert grokked_run["summary"]["phase"] in row.text
    screenshot(browser, tmp_path, "experiments.png")

    # The run's page: every chart drawn with its series, the spectrum with its key frequencies.
    row.find_element(By.TAG_NAME, "a").click()
    counts = {chart: wait(browser, chart_drawn(chart)) for chart in CHART_SERIES}
    assert counts == CHART_SERIES
    assert wait(browser, chart_drawn("chart-spectrum")) == 2  # other and key frequencies
    spectrum = browser.find_element(By.ID, "chart-spectrum")
    keys = [k["frequency"] for k in analysis["fourier"]["members"][0]["key_frequencies"]]
    assert keys, "a grokked ci-small run has key frequencies"
    assert spectrum.get_attribute("data-key-frequencies") == ",".join(map(str, keys))
    highlighted = browser.find_elements(By.CSS_SELECTOR, "#spectrum-note .key-frequency")
    assert [int(e.text.lstrip(", ").split()[0]) for e in highlighted] == keys
    summary = grokked_run["summary"]
    assert browser.find_element(By.ID, "phase").text == summary["phase"]
    header = browser.find_element(By.ID, "experiment-header").text
    assert str(summary["memorization_step"]) in header
    assert str(summary["generalization_step"]) in header
    assert len(browser.find_elements(By.CSS_SELECTOR, "#checkpoints a.download")) == len(checkpoints)
    assert browser.find_elements(By.ID, "cancel") == []  # a finished run cannot be cancelled
    screenshot(browser, tmp_path, "experiment.png")

    # An unknown id: an error in the page, not a blank screen.
    browser.get(f"{stack.url}/#/experiments/{uuid.uuid4()}")
    assert "not found" in wait(browser, banner_text)

    # A bad token: the error in the page and the sign-in form back.
    browser.get(f"{stack.url}/#token=not-a-groklab-token")
    assert "invalid or revoked token" in wait(browser, banner_text)
    assert browser.find_element(By.ID, "signin").is_displayed()
    screenshot(browser, tmp_path, "bad-token.png")
    assert severe_errors(browser) == []


def header_says(element_id: str, words: str):
    def says(browser):
        text = browser.find_element(By.ID, element_id).text
        return words in text and text
    return says


def test_a_write_token_pauses_and_resumes_with_the_buttons(bare_stack, browser, tmp_path):
    """No worker: the jobs stay queued, so each click is all that moves them."""
    client = bare_stack.client
    token = client.headers["Authorization"].removeprefix("Bearer ")
    job = client.post("/api/v1/experiments", json={"name": "to-pause", "preset": "ci-small"}).json()

    browser.get(f"{bare_stack.url}/#/experiments/{job['id']}?token={token}")
    wait(browser, EC.element_to_be_clickable((By.ID, "pause"))).click()
    wait(browser, header_says("experiment-header", "paused"))
    assert client.get(f"/api/v1/experiments/{job['id']}").json()["status"] == "paused"
    assert browser.find_elements(By.ID, "pause") == []
    assert browser.find_element(By.ID, "cancel").is_displayed()  # a paused job can be cancelled
    screenshot(browser, tmp_path, "paused.png")
    wait(browser, EC.element_to_be_clickable((By.ID, "resume"))).click()
    wait(browser, header_says("experiment-header", "queued"))
    assert client.get(f"/api/v1/experiments/{job['id']}").json()["status"] == "queued"
    assert browser.find_elements(By.ID, "resume") == []

    sweep = client.post("/api/v1/sweeps", json={
        "name": "to-pause", "base": {"preset": "ci-small"}, "grid": {"training.seed": [0, 1]},
    }).json()
    browser.get(f"{bare_stack.url}/#/sweeps/{sweep['id']}")
    wait(browser, EC.element_to_be_clickable((By.ID, "pause-sweep"))).click()
    assert "paused 2" in wait(browser, header_says("sweep-header", "paused 2"))
    assert client.get(f"/api/v1/sweeps/{sweep['id']}").json()["status"] == "paused"
    wait(browser, EC.element_to_be_clickable((By.ID, "resume-sweep"))).click()
    wait(browser, header_says("sweep-header", "queued 2"))
    assert client.get(f"/api/v1/sweeps/{sweep['id']}").json()["counts"]["queued"] == 2
    assert severe_errors(browser) == []


def test_the_llc_card_estimates_on_a_click(stack, browser, tmp_path):
    from tests.builders import tiny_job
    from tests.integration.conftest import wait_for_status

    token = stack.client.headers["Authorization"].removeprefix("Bearer ")
    job = stack.client.post("/api/v1/experiments", json=tiny_job("llc-card")).json()
    assert wait_for_status(stack.client, job["id"])["status"] == "succeeded"
    steps = [c["step"] for c in stack.client.get(f"/api/v1/experiments/{job['id']}/checkpoints").json()]
    browser.get(f"{stack.url}/#token={token}")
    browser.get(f"{stack.url}/#/experiments/{job['id']}")
    button = wait(browser, EC.element_to_be_clickable((By.ID, "llc-estimate")))
    assert browser.find_element(By.ID, "chart-llc").get_attribute("data-drawn") is None  # not before
    button.click()
    # The workers estimate every checkpoint; then the curve (one series) and the setting.
    assert wait(browser, chart_drawn("chart-llc"), timeout=300) == 1
    series = stack.client.get(f"/api/v1/experiments/{job['id']}/llc").json()["series"]
    llc = next(s for s in series if s["name"] == "llc" and s["member"] == 0)
    assert llc["steps"] == steps
    note = browser.find_element(By.ID, "llc-note").text
    assert f"{len(steps)} checkpoints; SGLD 3 chains × 100 draws" in note
    assert browser.find_element(By.ID, "llc-estimate").is_displayed() is False
    screenshot(browser, tmp_path, "llc.png")
    assert severe_errors(browser) == []


def test_a_running_jobs_checkpoints_appear_without_a_reload(stack, browser):
    from tests.builders import tiny_job
    from tests.integration.conftest import wait_for_status

    token = stack.client.headers["Authorization"].removeprefix("Bearer ")
    body = tiny_job("live-checkpoints", steps=20000, eval_every=50, checkpoint_every=100)
    job = stack.client.post("/api/v1/experiments", json=body).json()
    try:
        wait_for_status(stack.client, job["id"], statuses=("running",), timeout=120)
        browser.get(f"{stack.url}/#token={token}")
        browser.get(f"{stack.url}/#/experiments/{job['id']}")
        wait(browser, header_says("experiment-header", "running"))

        def rows(browser):
            return len(browser.find_elements(By.CSS_SELECTOR, "#checkpoints a.download"))

        def ticks(browser):
            return len(browser.find_elements(By.CSS_SELECTOR, "#circuit .tick"))

        first = rows(browser)
        # The page is not reloaded: the event stream's new points bring the new checkpoints.
        wait(browser, lambda b: rows(b) > first + 1 and ticks(b) == rows(b) and rows(b), timeout=60)
        assert "running" in browser.find_element(By.ID, "experiment-header").text
    finally:
        stack.client.post(f"/api/v1/experiments/{job['id']}/cancel")
        wait_for_status(stack.client, job["id"])
    assert severe_errors(browser) == []
