"""A reproduction end to end on the real stack: `groklab reproduce` submits the sweep, a real
worker trains it, the report judges the paper's claims on the stored summaries, and the
dashboard shows the report."""
from __future__ import annotations

import subprocess

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC

from tests.integration.test_client import cli_command
from tests.integration.test_dashboard import browser, chart_drawn, wait  # noqa: F401 - fixture

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def prieto_run(stack) -> tuple[subprocess.CompletedProcess, str]:
    """`groklab reproduce prieto2025-stablemax --scale ci`, run once: its output and sweep id."""
    done = subprocess.run(**cli_command(stack, "reproduce", "prieto2025-stablemax", "--scale", "ci"),
                          timeout=480)
    assert "submitted prieto2025-stablemax at ci scale" in done.stdout, done.stdout + done.stderr
    return done, done.stdout.split("sweep ", 1)[1].split()[0]


def test_groklab_reproduce_prieto2025_at_ci_scale_passes_with_the_measured_numbers(stack, prieto_run):
    done, sweep_id = prieto_run
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS" in done.stdout and "fail" not in done.stdout
    assert "succeeded" in done.stderr  # the progress lines

    run = stack.client.get(f"/api/v1/reproductions/prieto2025-stablemax/runs/{sweep_id}").json()
    assert run["verdict"] == "pass" and run["sweep"]["status"] == "succeeded"
    stable, softmax = run["claims"]
    assert stable["measured"] == "1" and softmax["measured"] == "0"
    by_point = {(m["point"]["optimizer.loss"], m["point"]["optimizer.orthogonal_grad"]): m
                for m in run["members"]}
    assert by_point["stablemax", True]["generalization_step"] is not None
    assert by_point["cross_entropy", False]["generalization_step"] is None
    assert by_point["cross_entropy", False]["final_val_acc"] < 0.99
    # The same verdicts from the sweep alone, as a notebook or CI asks.
    assert stack.client.get(f"/api/v1/sweeps/{sweep_id}/report").json()["claims"] == run["claims"]


def test_the_dashboard_shows_the_runs_report(stack, prieto_run, browser, tmp_path):  # noqa: F811
    _, sweep_id = prieto_run
    token = stack.client.headers["Authorization"].removeprefix("Bearer ")
    browser.get(f"{stack.url}/#token={token}")
    browser.get(f"{stack.url}/#/reproductions")
    link = wait(browser, EC.element_to_be_clickable(
        (By.CSS_SELECTOR, f'a[href="#/reproductions/prieto2025-stablemax/runs/{sweep_id}"]')))
    link.click()
    verdict = wait(browser, EC.text_to_be_present_in_element((By.ID, "verdict"), "PASS"))
    assert verdict
    rows = browser.find_elements(By.CSS_SELECTOR, "#reproduction-claims tr.claim")
    assert [r.get_attribute("class") for r in rows] == ["claim pass", "claim pass"]
    assert wait(browser, chart_drawn("chart-members-val-acc")) == 4  # one curve per member
    # The claim's plot: the steps against the loss, the members that never generalised marked
    # as such (every one but StableMax + ⊥AdamW).
    plot = browser.find_element(By.ID, "claim-plot")
    assert "against optimizer.loss" in browser.find_element(By.CSS_SELECTOR, "#reproduction-plot figcaption").text
    assert plot.get_attribute("data-values") == "2"
    assert plot.get_attribute("data-generalise-points") == "2"
    assert plot.get_attribute("data-never") == "3"
    browser.save_screenshot(str(tmp_path / "reproduction.png"))
