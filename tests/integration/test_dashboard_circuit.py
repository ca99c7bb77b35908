"""The dashboard's pictures in a real browser against the real stack: the Circuit section of the
grokked ci-small run (its clocks, neurons by frequency, activation waves and attention, redrawn
by the checkpoint scrubber that marks the phases of grokking), and the sweep page of the
ci-small sweep (the members' curves overlaid and picked out by a cell of the phase diagram, the
median steps to memorise and generalise per axis value, the heatmap's colour scale and
readable cell numbers). Screenshots land in tmp_path (and GROKLAB_TEST_SHOTS when set)."""
from __future__ import annotations

import time

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

from tests.builders import tiny_job
from tests.integration.browser import (  # noqa: F401
    browser,
    chart_drawn,
    contrast,
    screenshot,
    severe_errors,
    wait,
)
from tests.integration.conftest import wait_for_status

pytestmark = pytest.mark.integration

PICTURES = ("embedding", "neurons", "waves", "attention")


def picture(client, run_id: str, step: int, name: str, **params) -> dict:
    """A picture's JSON from the API, asked again while a worker computes it (202)."""
    deadline = time.monotonic() + 120
    while True:
        r = client.get(f"/api/v1/experiments/{run_id}/checkpoints/{step}/{name}", params=params)
        if r.status_code != 202:
            assert r.status_code == 200, r.text
            return r.json()
        assert time.monotonic() < deadline, f"{name} at step {step} still computing"
        time.sleep(0.5)


def drawn_at(step: int):
    """The Circuit section once every picture shows `step`."""
    def drawn(browser):
        section = browser.find_element(By.ID, "circuit")
        return section.get_attribute("data-step") == str(step) and section
    return drawn


def attr_ints(elements, name: str) -> list[int]:
    return [int(e.get_attribute(name)) for e in elements]


def canvas_pixels(browser, selector: str) -> str:
    return browser.execute_script(
        "return document.querySelector(arguments[0]).toDataURL();", selector)


def test_the_circuit_section_draws_each_picture_and_follows_the_scrubber(
    stack, grokked_run, browser, tmp_path
):
    client = stack.client
    token = client.headers["Authorization"].removeprefix("Bearer ")
    run_id = grokked_run["id"]
    steps = sorted(c["step"] for c in client.get(f"/api/v1/experiments/{run_id}/checkpoints").json())
    assert len(steps) >= 2, steps
    first, last = steps[0], steps[-1]

    browser.get(f"{stack.url}/#/experiments/{run_id}?token={token}")
    wait(browser, drawn_at(last), timeout=120)  # the trained model first
    at_last = {name: picture(client, run_id, last, name) for name in PICTURES}
    p = at_last["embedding"]["p"]
    screenshot(browser, tmp_path, "circuit-last.png", "#circuit")

    # The scrubber: one tick per stored checkpoint, the known phases marked on its track.
    ticks = browser.find_elements(By.CSS_SELECTOR, "#circuit-scrubber .tick")
    assert [int(t.text) for t in ticks] == steps
    phases = client.get(f"/api/v1/experiments/{run_id}/analysis").json()["phases"]
    marked = [b.get_attribute("data-phase")
              for b in browser.find_elements(By.CSS_SELECTOR, "#circuit-scrubber .scrub-band")]
    assert marked == [k for k in ("memorization", "circuit_formation", "cleanup") if phases.get(k)]
    assert marked, "a grokked run has phases"

    # The clocks: one per key frequency, p points each.
    clocks = browser.find_elements(By.CSS_SELECTOR, "#circuit-embedding canvas[data-frequency]")
    assert attr_ints(clocks, "data-frequency") == [c["frequency"] for c in at_last["embedding"]["clocks"]]
    assert attr_ints(clocks, "data-points") == [p] * len(clocks)
    assert clocks, "a grokked run has key frequencies"

    # Neurons by frequency: a bar per neuron, the share above 0.9 written out.
    neurons = at_last["neurons"]
    bars = browser.find_element(By.CSS_SELECTOR, "#circuit-neurons canvas[data-bars]")
    assert int(bars.get_attribute("data-bars")) == neurons["n_neurons"] == len(neurons["neurons"])
    share = browser.find_element(By.ID, "neuron-share").text
    assert share == f"{100 * neurons['share_above_0_9']:.1f}%"
    legend = browser.find_element(By.CSS_SELECTOR, "#circuit-neurons .legend").text
    assert all(f"k = {k}" in legend for k in neurons["key_frequencies"])

    # Activation waves: the default neurons and the logit of answer 0, p x p each, with scales.
    waves = at_last["waves"]
    heats = browser.find_elements(By.CSS_SELECTOR, "#circuit-waves .heat canvas[data-rows]")
    assert len(heats) == len(waves["neurons"]) + 1
    assert {(int(c.get_attribute("data-rows")), int(c.get_attribute("data-cols"))) for c in heats} == {(p, p)}
    assert len(browser.find_elements(By.CSS_SELECTOR, "#circuit-waves .colour-scale")) == len(heats)
    shown = [int(e.get_attribute("data-neuron"))
             for e in browser.find_elements(By.CSS_SELECTOR, "#circuit-waves [data-neuron]")]
    assert shown == [n["neuron"] for n in waves["neurons"]]

    # Attention of '=': to a and to b for every head.
    heads = at_last["attention"]["heads"]
    maps = browser.find_elements(By.CSS_SELECTOR, "#circuit-attention canvas[data-rows]")
    assert len(maps) == 2 * len(heads) and heads

    # Another answer's logit: only the waves redraw, for that answer.
    answer = browser.find_element(By.ID, "circuit-answer")
    answer.clear()
    answer.send_keys("5", Keys.TAB)
    wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, '#circuit-waves [data-answer="5"]'), timeout=60)

    # Back to the first checkpoint with the keyboard: every picture redraws for that step.
    before = canvas_pixels(browser, "#circuit-embedding canvas")
    bars_before = canvas_pixels(browser, "#circuit-neurons canvas")
    browser.find_element(By.ID, "circuit-slider").send_keys(Keys.HOME)
    wait(browser, drawn_at(first), timeout=120)
    assert browser.find_element(By.ID, "circuit-step").text == str(first)
    for name in PICTURES:
        assert browser.find_element(By.ID, f"circuit-{name}").get_attribute("data-state") == "drawn"
    early = picture(client, run_id, first, "embedding")
    clocks = browser.find_elements(By.CSS_SELECTOR, "#circuit-embedding canvas[data-frequency]")
    assert attr_ints(clocks, "data-frequency") == [c["frequency"] for c in early["clocks"]]
    if clocks:
        assert canvas_pixels(browser, "#circuit-embedding canvas") != before
    assert canvas_pixels(browser, "#circuit-neurons canvas") != bars_before
    assert browser.find_element(By.CSS_SELECTOR, '#circuit-waves [data-answer]').get_attribute("data-answer") == "5"
    screenshot(browser, tmp_path, "circuit-first.png", "#circuit")
    assert severe_errors(browser) == []


def test_a_picture_that_does_not_apply_says_why(stack, browser, tmp_path):
    """An MLP has embeddings and neurons to draw, but no attention: that picture says so."""
    client = stack.client
    token = client.headers["Authorization"].removeprefix("Bearer ")
    body = tiny_job("circuit-of-an-mlp")
    body["model"]["arch"] = "mlp"
    job = client.post("/api/v1/experiments", json=body).json()
    assert wait_for_status(client, job["id"], timeout=120)["status"] == "succeeded"
    last = max(c["step"] for c in client.get(f"/api/v1/experiments/{job['id']}/checkpoints").json())
    reason = client.get(f"/api/v1/experiments/{job['id']}/checkpoints/{last}/attention")
    assert reason.status_code == 422

    browser.get(f"{stack.url}/#/experiments/{job['id']}?token={token}")
    wait(browser, drawn_at(last), timeout=120)
    attention = browser.find_element(By.ID, "circuit-attention")
    assert attention.get_attribute("data-state") == "unavailable"
    assert attention.find_element(By.CLASS_NAME, "picture-status").text == reason.json()["detail"]
    assert attention.find_elements(By.TAG_NAME, "canvas") == []
    for name in ("embedding", "neurons", "waves"):
        assert browser.find_element(By.ID, f"circuit-{name}").get_attribute("data-state") == "drawn"
    screenshot(browser, tmp_path, "circuit-mlp.png", "#circuit")
    assert severe_errors(browser) == []


def cell_colours(browser) -> list[tuple[str, str]]:
    return [(c.value_of_css_property("color"), c.value_of_css_property("background-color"))
            for c in browser.find_elements(By.CSS_SELECTOR, "#heatmap td.cell")]


def test_the_sweep_page_overlays_the_members_and_plots_their_steps(
    stack, ci_small_sweep, browser, tmp_path
):
    created, _ = ci_small_sweep
    client = stack.client
    token = client.headers["Authorization"].removeprefix("Bearer ")
    sweep_id = created["id"]
    members = client.get(f"/api/v1/sweeps/{sweep_id}/members").json()["members"]

    browser.get(f"{stack.url}/#/sweeps/{sweep_id}?token={token}")
    # One curve per member in each chart.
    assert wait(browser, chart_drawn("chart-sweep-val"), timeout=60) == len(members)
    assert wait(browser, chart_drawn("chart-sweep-train")) == len(members)
    legend = browser.find_element(By.ID, "curves-legend").text
    assert "optimizer.weight_decay" in legend

    # The heatmap (weight decay x train fraction, fraction that generalised): its colour scale
    # spans the cells' values, and every number reads on its cell, light or dark.
    diagram = client.get(f"/api/v1/sweeps/{sweep_id}/phase-diagram",
                         params={"x": "optimizer.weight_decay", "y": "task.train_fraction"}).json()
    values = [c["grokked_fraction"] for c in diagram["cells"] if c["grokked_fraction"] is not None]
    scale = browser.find_element(By.CSS_SELECTOR, "#heatmap-scale canvas")
    assert (float(scale.get_attribute("data-lo")), float(scale.get_attribute("data-hi"))) == (min(values), max(values))
    colours = cell_colours(browser)
    assert len(colours) == len(diagram["cells"])
    assert all(contrast(fg, bg) >= 4.5 for fg, bg in colours), colours
    assert len({fg for fg, _ in colours}) == 2, "light and dark cells, each with its own text colour"

    # The median steps against the train fraction: a point (or a "never" mark) per fraction for
    # each of memorise and generalise, the members that never generalised counted.
    plot = browser.find_element(By.ID, "steps-plot")
    fractions = sorted({m["point"]["task.train_fraction"] for m in members})
    assert Select(browser.find_element(By.ID, "steps-axis")).first_selected_option.text == "task.train_fraction"
    assert int(plot.get_attribute("data-values")) == len(fractions) == 2
    assert int(plot.get_attribute("data-memorise-points")) == len(fractions)
    assert int(plot.get_attribute("data-generalise-points")) == len(fractions)
    never = sum(m["status"] == "succeeded" and m["generalization_step"] is None for m in members)
    assert int(plot.get_attribute("data-never")) == never > 0  # weight decay 0 never generalises
    screenshot(browser, tmp_path, "sweep.png", "main")

    # Against the weight decay instead: one value per weight decay.
    Select(browser.find_element(By.ID, "steps-axis")).select_by_value("optimizer.weight_decay")
    assert browser.find_element(By.ID, "steps-plot").get_attribute("data-values") == "2"

    # A cell picks out its members' curves; a second click lets them go.
    cell = browser.find_element(By.CSS_SELECTOR, '#heatmap td.cell[data-x="1"][data-y="0.6"]')
    cell.click()
    in_cell = [m for m in members if m["point"]["optimizer.weight_decay"] == 1
               and m["point"]["task.train_fraction"] == 0.6]
    picked = lambda b: b.find_element(By.ID, "chart-sweep-val").get_attribute("data-highlighted")  # noqa: E731
    wait(browser, lambda b: picked(b) == str(len(in_cell)))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#cell-members tbody tr")) == len(in_cell)
    screenshot(browser, tmp_path, "sweep-cell.png", "main")
    browser.find_element(By.CSS_SELECTOR, '#heatmap td.cell[data-x="1"][data-y="0.6"]').click()
    wait(browser, lambda b: picked(b) == "0")
    assert severe_errors(browser) == []
