"""The papers' claims at ci scale, through the real stack: each reproduction is submitted at the
session's first test and trained in the background on what the other tests leave idle
(tests/background.py); these tests run last and read each run's report from the sweep alone
(GET /api/v1/sweeps/{id}/report), as a notebook or CI would. (prieto2025-stablemax runs through
`groklab reproduce` itself: test_reproductions.py.)

A claim that fails here fails the test with the report's measured numbers: the runs are never
retried."""
from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC

from tests.background import WAIT_S
from tests.integration.browser import screenshot
from tests.integration.test_dashboard import browser, chart_drawn, wait  # noqa: F401 - fixture

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(WAIT_S + 120)]


@pytest.fixture
def report(request, postgres_server_url, redis_databases, background_reproductions) -> dict:
    """The report of the test's reproduction, once its background run has finished."""
    name = request.node.get_closest_marker("reproduction").args[0]
    report = background_reproductions.report(name)
    for claim in report["claims"]:
        print(f"{name}: {claim['verdict']}: {claim['says']}: expected {claim['expected']}, "
              f"measured {claim['measured']}")
    return report


def members_by(report: dict, axis: str) -> dict:
    out: dict = {}
    for m in report["members"]:
        out.setdefault(repr(m["point"][axis]), []).append(m)
    return out


def verdicts(report: dict) -> list[tuple[str, str, str]]:
    return [(c["verdict"], c["says"], c["measured"]) for c in report["claims"]]


@pytest.mark.reproduction("power2022-fraction")
def test_power2022_the_smaller_the_fraction_the_later_it_generalises(report):
    assert report["sweep"]["status"] == "succeeded", report["sweep"]
    assert report["verdict"] == "pass", verdicts(report)
    by_fraction = members_by(report, "task.train_fraction")
    assert all(m["generalization_step"] is None for m in by_fraction["0.3"])
    assert all(m["memorization_step"] is not None for m in by_fraction["0.3"])  # it memorises
    steps = {f: sorted(m["generalization_step"] for m in by_fraction[f]) for f in ("0.45", "0.6")}
    assert max(steps["0.6"]) <= max(steps["0.45"]), steps
    # A run that grokked stopped there; the others ran the whole budget.
    assert {m["summary"]["stopped"] for m in by_fraction["0.6"]} == {"grokked"}


@pytest.mark.reproduction("grokfast2024-acceleration")
def test_grokfast2024_the_filter_generalises_many_times_sooner(report):
    assert report["verdict"] == "pass", verdicts(report)
    by_lamb = members_by(report, "optimizer.grad_filter.lamb")
    filtered, = by_lamb["2.0"]
    plain, = by_lamb["0.0"]
    # The preset's own run memorises, then generalises, and stops once grokked.
    assert filtered["memorization_step"] is not None
    assert filtered["memorization_step"] <= filtered["generalization_step"]
    assert filtered["summary"]["stopped"] == "grokked" and filtered["final_val_acc"] >= 0.99
    # Without the filter: val acc 0.95 four times later, or not within the budget (a lower bound).
    later = plain["summary"]["generalization_step_95"] or plain["summary"]["last_step"]
    assert later >= 4 * filtered["summary"]["generalization_step_95"], (plain["summary"], filtered["summary"])


@pytest.mark.reproduction("varma2023-ungrokking")
def test_varma2023_a_grokked_run_cut_below_the_critical_size_ungroks(report):
    assert report["verdict"] == "pass", verdicts(report)
    full, cut = (members_by(report, "data_schedule")[k][0] for k in ("None", repr([{"at_step": 500, "train_fraction": 0.05}])))
    assert full["final_val_acc"] >= 0.99
    assert cut["generalization_step"] is not None and cut["generalization_step"] < 500
    assert cut["final_val_acc"] < 0.6 and cut["final_train_acc"] >= 0.99


@pytest.mark.reproduction("nanda2023-progress")
def test_nanda2023_progress_measures_move_before_the_test_loss(report):
    assert report["verdict"] == "pass", verdicts(report)
    for m in report["members"]:
        summary = m["summary"]
        assert summary["restricted_loss_fall_step"] < summary["test_loss_fall_step"], summary
        assert summary["excluded_loss_rise"] > 1, summary
        assert 2 <= summary["key_freq_count"] <= 8, summary


@pytest.mark.reproduction("omnigrok-init-scale")
def test_omnigrok_a_large_init_generalises_later_and_only_with_weight_decay(report):
    assert report["verdict"] == "pass", verdicts(report)
    runs: dict = {}
    for m in report["members"]:
        runs.setdefault((m["point"]["model.init_scale"], m["point"]["optimizer.weight_decay"]), []).append(m)
    # Everything memorises; the large init later than the small one.
    assert all(m["memorization_step"] is not None for ms in runs.values() for m in ms)
    assert min(m["memorization_step"] for m in runs[3.0, 1.0]) > max(m["memorization_step"] for m in runs[1.0, 1.0])
    # Weight decay 1: every run generalises, the large init's median at least 1.5x later.
    steps = {s: sorted(m["generalization_step"] for m in runs[s, 1.0]) for s in (1.0, 3.0)}
    assert steps[3.0][1] >= 1.5 * steps[1.0][1], steps
    # Weight decay 0.3: the large init ran the whole budget without generalising.
    assert all(m["generalization_step"] is None and m["summary"]["last_step"] == 1600 for m in runs[3.0, 0.3])


@pytest.mark.reproduction("power2022-fraction")
def test_the_report_page_plots_the_steps_against_the_fraction(report, background_reproductions, browser, tmp_path):  # noqa: F811
    stack = background_reproductions.stack
    sweep_id = report["sweep"]["id"]
    token = stack.client.headers["Authorization"].removeprefix("Bearer ")
    browser.get(f"{stack.url}/#token={token}")
    browser.get(f"{stack.url}/#/reproductions/power2022-fraction/runs/{sweep_id}")
    wait(browser, EC.text_to_be_present_in_element((By.ID, "verdict"), "PASS"))
    plot = wait(browser, lambda b: b.find_element(By.ID, "claim-plot") if b.find_element(By.ID, "claim-plot").get_attribute("data-values") else False)
    assert "against task.train_fraction" in browser.find_element(By.CSS_SELECTOR, "#reproduction-plot figcaption").text
    # One value per fraction; the two 30% runs in the "never" row; 45% and 60% generalised.
    assert plot.get_attribute("data-values") == "3"
    assert plot.get_attribute("data-never") == "2"
    assert plot.get_attribute("data-generalise-points") == "3"
    assert wait(browser, chart_drawn("chart-members-val-acc")) == 6
    screenshot(browser, tmp_path, "reproduction-power.png")


@pytest.mark.reproduction("omnigrok-init-scale")
def test_the_omnigrok_report_plots_only_the_members_at_weight_decay_1(report, background_reproductions, browser, tmp_path):  # noqa: F811
    assert report["plot_axis"] == "model.init_scale" and report["plot_members"] == {"optimizer.weight_decay": 1.0}
    stack = background_reproductions.stack
    token = stack.client.headers["Authorization"].removeprefix("Bearer ")
    browser.get(f"{stack.url}/#token={token}")
    browser.get(f"{stack.url}/#/reproductions/omnigrok-init-scale/runs/{report['sweep']['id']}")
    wait(browser, EC.text_to_be_present_in_element((By.ID, "verdict"), "PASS"))
    plot = wait(browser, lambda b: b.find_element(By.ID, "claim-plot") if b.find_element(By.ID, "claim-plot").get_attribute("data-values") else False)
    caption = browser.find_element(By.CSS_SELECTOR, "#reproduction-plot figcaption").text
    assert "against model.init_scale at optimizer.weight_decay=1" in caption, caption
    # Both init scales generalised at weight decay 1; the weight decay 0.3 runs that did not
    # are not in this plot (they would sit in its "never" row).
    assert plot.get_attribute("data-values") == "2"
    assert plot.get_attribute("data-generalise-points") == "2"
    assert plot.get_attribute("data-never") == "0"
    screenshot(browser, tmp_path, "reproduction-omnigrok.png")

