"""Reproductions: claims written as data, judged on member summaries (pass and fail, with censored
steps), the shipped YAML files, and the API that runs one as a sweep and reports on it."""
from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from service.contract.limits import Limits
from service.contract.models import utcnow
from service.science.claims import Claim, evaluate, evaluate_claim
from service.science.reproductions import SCALES, Reproduction, reproductions
from service.science.sweeps import SweepSpec, expand
from tests.service.test_sweeps import SWEEPS, set_members

REPRODUCTIONS = "/api/v1/reproductions"
GRID = {"optimizer.grad_filter.lamb": [2.0, 0.0], "training.seed": [0, 1]}


def member(index: int, point: dict, status: str = "succeeded", last_step: int = 1000, **summary):
    summary = {"memorization_step": 100, "generalization_step": None, "final_val_acc": 0.5,
               "final_train_acc": 1.0, "last_step": last_step, **summary}
    return {"index": index, "status": status, "point": point, "summary": summary}


def grokfast_members(filtered: list[int | None], unfiltered: list[int | None], budget: int = 1000):
    rows = []
    for lamb, steps in ((2.0, filtered), (0.0, unfiltered)):
        for seed, step in enumerate(steps):
            rows.append(member(len(rows), {"optimizer.grad_filter.lamb": lamb, "training.seed": seed},
                               last_step=budget, generalization_step=step))
    return rows


RATIO = Claim(says="the filter makes it sooner", kind="ratio", metric="generalization_step",
              numerator={"optimizer.grad_filter.lamb": 0.0},
              denominator={"optimizer.grad_filter.lamb": 2.0}, op=">=", value={"ci": 4, "paper": 20})
ALL_FILTERED_GROK = Claim(says="filtered runs generalise", kind="value", metric="generalization_step",
                          members={"optimizer.grad_filter.lamb": 2.0}, statistic="fraction_reached",
                          op="==", value=1)


def test_a_ratio_of_exact_medians_passes_or_fails_against_the_scale_value():
    rows = grokfast_members([100, 140], [600, 700])  # medians 120 and 650: 5.4x
    report = evaluate_claim(RATIO, rows, GRID, "ci")
    assert report["verdict"] == "pass" and report["values"]["ratio"] == pytest.approx(650 / 120)
    assert report["measured"].startswith("5.417 (650 / 120)")
    assert ">= 4" in report["expected"]
    assert evaluate_claim(RATIO, rows, GRID, "paper")["verdict"] == "fail"  # 20x there


def test_a_step_never_reached_is_a_lower_bound_at_the_budget():
    # The unfiltered runs never generalised in 1000 steps: the ratio is only known to be > 1000/120.
    rows = grokfast_members([100, 140], [None, None], budget=1000)
    report = evaluate_claim(RATIO, rows, GRID, "ci")
    assert report["verdict"] == "pass" and report["measured"].startswith("> 8.333")
    assert report["values"]["exact"] is False
    # A bound below the claimed value says nothing: fail, and the report shows the bound.
    short = grokfast_members([300, 340], [None, None], budget=1000)  # > 3.1
    report = evaluate_claim(RATIO, short, GRID, "ci")
    assert report["verdict"] == "fail" and report["measured"].startswith("> 3.125")


def test_a_denominator_that_never_generalised_makes_the_ratio_unmeasurable():
    report = evaluate_claim(RATIO, grokfast_members([None, None], [None, None]), GRID, "ci")
    assert report["verdict"] == "fail" and "not measurable" in report["measured"]


def test_fraction_reached_and_a_failed_member():
    assert evaluate_claim(ALL_FILTERED_GROK, grokfast_members([100, 140], [None, None]), GRID,
                          "ci")["verdict"] == "pass"
    half = evaluate_claim(ALL_FILTERED_GROK, grokfast_members([100, None], [None, None]), GRID, "ci")
    assert half["verdict"] == "fail" and half["measured"] == "0.5"
    rows = grokfast_members([100, 140], [None, None])
    rows[1]["status"] = "failed"
    failed = evaluate_claim(ALL_FILTERED_GROK, rows, GRID, "ci")
    assert failed["verdict"] == "fail" and "member 1 failed" in failed["measured"]


def test_the_whole_passes_only_when_every_claim_does():
    good = evaluate([ALL_FILTERED_GROK, RATIO], grokfast_members([100, 140], [900, None]), GRID, "ci")
    assert good["verdict"] == "pass" and [c["verdict"] for c in good["claims"]] == ["pass", "pass"]
    bad = evaluate([ALL_FILTERED_GROK, RATIO], grokfast_members([100, 140], [200, 300]), GRID, "ci")
    assert bad["verdict"] == "fail" and [c["verdict"] for c in bad["claims"]] == ["pass", "fail"]


FRACTIONS = {"task.train_fraction": [0.3, 0.45, 0.6], "training.seed": [0, 1]}
TREND = Claim(says="falls with the fraction", kind="trend", axis="task.train_fraction",
              metric="generalization_step", direction="decreasing")
NONE_AT_FIRST = Claim(says="none at the smallest", kind="value", metric="generalization_step",
                      members={"task.train_fraction": "$first"}, statistic="fraction_reached",
                      op="==", value=0)


def fraction_members(steps: dict[float, list[int | None]]) -> list[dict]:
    return [member(i, {"task.train_fraction": f, "training.seed": s}, last_step=1200,
                   generalization_step=step)
            for i, (f, s, step) in enumerate((f, s, x) for f, xs in steps.items() for s, x in enumerate(xs))]


def test_a_trend_falls_through_censored_then_exact_medians():
    rows = fraction_members({0.3: [None, None], 0.45: [800, 700], 0.6: [400, 450]})
    report = evaluate_claim(TREND, rows, FRACTIONS, "ci")
    assert report["verdict"] == "pass", report
    assert report["measured"] == "0.3: > 1200, 0.45: 750, 0.6: 425"
    assert evaluate_claim(NONE_AT_FIRST, rows, FRACTIONS, "ci")["verdict"] == "pass"


@pytest.mark.parametrize("steps", [
    {0.3: [None, None], 0.45: [400, 450], 0.6: [800, 700]},   # rises
    {0.3: [500, 500], 0.45: [None, None], 0.6: [400, 400]},   # a censored median after an exact one
    {0.3: [None, None], 0.45: [None, None], 0.6: [400, 400]},  # only one exact median
])
def test_a_trend_that_does_not_fall_fails(steps):
    assert evaluate_claim(TREND, fraction_members(steps), FRACTIONS, "ci")["verdict"] == "fail"


def test_none_at_the_first_fraction_fails_when_one_generalised():
    rows = fraction_members({0.3: [None, 1100], 0.45: [800, 700], 0.6: [400, 450]})
    report = evaluate_claim(NONE_AT_FIRST, rows, FRACTIONS, "ci")
    assert report["verdict"] == "fail" and report["measured"] == "0.5"


SEEDS = {"training.seed": [0, 1]}
RESTRICTED_FIRST = Claim(says="the restricted loss falls first", kind="order", op="<",
                         metrics=["restricted_loss_fall_step", "test_loss_fall_step"])


def progress_members(restricted: list[int | None], test: list[int | None], budget: int = 1200):
    return [member(i, {"training.seed": i}, last_step=budget, restricted_loss_fall_step=r,
                   test_loss_fall_step=t) for i, (r, t) in enumerate(zip(restricted, test))]


def test_an_order_claim_compares_the_medians_in_turn():
    report = evaluate_claim(RESTRICTED_FIRST, progress_members([150, 250], [300, 400]), SEEDS, "ci")
    assert report["verdict"] == "pass"
    assert report["measured"] == "restricted_loss_fall_step: 200, test_loss_fall_step: 350"
    assert report["expected"].startswith("median restricted_loss_fall_step < median test_loss_fall_step")
    after = evaluate_claim(RESTRICTED_FIRST, progress_members([350, 450], [300, 400]), SEEDS, "ci")
    assert after["verdict"] == "fail"
    # equal medians hold under <= only
    same = progress_members([300, 400], [300, 400])
    assert evaluate_claim(RESTRICTED_FIRST, same, SEEDS, "ci")["verdict"] == "fail"
    loose = RESTRICTED_FIRST.model_copy(update={"op": "<="})
    assert evaluate_claim(loose, same, SEEDS, "ci")["verdict"] == "pass"


def test_an_order_claim_fails_on_a_step_never_reached():
    # The test loss never fell within 1200 steps: "> 1200" comes after 200, but the claim is
    # about two things that happened.
    report = evaluate_claim(RESTRICTED_FIRST, progress_members([150, 250], [None, None]), SEEDS, "ci")
    assert report["verdict"] == "fail" and report["measured"].endswith("test_loss_fall_step: > 1200")


@pytest.mark.parametrize(("fields", "words"), [
    ({"metrics": ["restricted_loss_fall_step"], "op": "<"}, "two or more"),
    ({"metrics": ["restricted_loss_fall_step", "key_freq_count"], "op": "<"}, "two or more"),
    ({"metrics": ["memorization_step", "cleanup_step"], "op": ">"}, "op < or <="),
    ({"metric": "cleanup_step", "op": "<"}, "two or more"),
])
def test_a_malformed_order_claim_is_refused(fields, words):
    with pytest.raises(ValidationError, match=words):
        Claim(says="order", kind="order", **fields)
    with pytest.raises(ValidationError, match="needs metric, not metrics"):
        Claim(says="a value", kind="value", metrics=["cleanup_step", "memorization_step"], op="<", value=1)


@pytest.mark.parametrize("name", sorted(reproductions()))
@pytest.mark.parametrize("scale", SCALES)
def test_every_shipped_reproduction_expands_to_valid_members(name, scale):
    body = reproductions()[name].sweep_body(scale)
    members = expand(SweepSpec.model_validate(body), Limits(), 1024)
    assert len(members) == reproductions()[name].n_members(scale) >= 2


def test_the_shipped_reproductions_include_the_three_papers():
    assert {"prieto2025-stablemax", "grokfast2024-acceleration", "power2022-fraction",
            "nanda2023-progress"} <= set(reproductions())


def test_a_claim_about_a_value_not_in_the_grid_is_refused():
    data = reproductions()["grokfast2024-acceleration"].model_dump(mode="json")
    data["claims"][0]["members"] = {"optimizer.grad_filter.lamb": 5.0}
    with pytest.raises(ValidationError, match=r"claims\[0\]: optimizer.grad_filter.lamb=5.0 is not"):
        Reproduction.model_validate(data)


@pytest.mark.parametrize(("plot", "words"), [
    ({"axis": "optimizer.lr"}, "plot.axis 'optimizer.lr' is not a grid axis"),
    ({"axis": "model.init_scale", "members": {"optimizer.weight_decay": 2.0}},
     "plot: optimizer.weight_decay=2.0 is not in the ci grid"),
])
def test_a_plot_off_the_grid_is_refused(plot, words):
    data = reproductions()["omnigrok-init-scale"].model_dump(mode="json")
    data["plot"] = plot
    with pytest.raises(ValidationError, match=re.escape(words)):
        Reproduction.model_validate(data)


def test_the_plot_is_drawn_over_the_members_it_names():
    omnigrok, power = reproductions()["omnigrok-init-scale"], reproductions()["power2022-fraction"]
    assert (omnigrok.plot_axis("ci"), omnigrok.plot_members("ci")) == (
        "model.init_scale", {"optimizer.weight_decay": 1.0})
    # Without a plot: the trend claim's axis, over every member.
    assert (power.plot_axis("ci"), power.plot_members("ci")) == ("task.train_fraction", {})


# ---- the API ---------------------------------------------------------------------------------


def test_the_list_names_each_reproduction_with_its_claims_and_sizes(client):
    r = client.get(REPRODUCTIONS)
    assert r.status_code == 200
    items = {item["name"]: item for item in r.json()["items"]}
    assert set(items) == set(reproductions())
    prieto = items["prieto2025-stablemax"]
    assert prieto["scales"]["ci"]["n_members"] == 4 and prieto["claims"][0]["says"]


@pytest.mark.parametrize(("name", "body", "loc", "words"), [
    ("karpathy2024", {"scale": "ci"}, ["path", "name"], "known: grokfast2024-acceleration"),
    ("prieto2025-stablemax", {"scale": "huge"}, ["body", "scale"], "'ci' or 'paper'"),
    ("prieto2025-stablemax", {"scale": "ci", "colour": "red"}, ["body", "colour"], "Extra"),
])
def test_an_unknown_reproduction_or_scale_is_422_naming_the_field(client, enqueued, name, body, loc, words):
    r = client.post(f"{REPRODUCTIONS}/{name}", json=body)
    assert r.status_code == 422, r.text
    assert any(d["loc"] == loc and words in d["msg"] for d in r.json()["detail"]), r.json()
    assert enqueued == [] and client.get(SWEEPS).json()["items"] == []


def test_a_run_is_a_sweep_whose_report_comes_when_every_member_has_finished(client, api_sessions, enqueued):
    r = client.post(f"{REPRODUCTIONS}/prieto2025-stablemax", json={"scale": "ci"})
    assert r.status_code == 201, r.text
    run = r.json()
    sweep = run["sweep"]
    assert (run["scale"], run["verdict"], sweep["n_members"]) == ("ci", None, 4)
    assert sweep["name"] == "prieto2025-stablemax v1 ci" and len(enqueued) == sweep["n_packs"]
    url = f"{REPRODUCTIONS}/prieto2025-stablemax/runs/{sweep['id']}"
    assert client.get(url).json()["verdict"] is None  # queued

    members = client.get(url).json()["members"]
    for m in members:
        stable = m["point"]["optimizer.loss"] == "stablemax" and m["point"]["optimizer.orthogonal_grad"]
        summary = {"generalization_step": 300 if stable else None, "memorization_step": 100,
                   "last_step": 600, "final_val_acc": 1.0 if stable else 0.3, "final_train_acc": 1.0}
        set_members(api_sessions, [m["experiment_id"]], "succeeded", step=600,
                    started_at=utcnow(), finished_at=utcnow(), summary=summary)
    report = client.get(url).json()
    assert report["verdict"] == "pass", report["claims"]
    assert [c["measured"] for c in report["claims"]] == ["1", "0"]

    # The same run had softmax generalised too: the claim fails, with the measured number.
    softmax = next(m for m in members if m["point"]["optimizer.loss"] == "cross_entropy"
                   and not m["point"]["optimizer.orthogonal_grad"])
    set_members(api_sessions, [softmax["experiment_id"]], "succeeded",
                summary={"generalization_step": 450, "last_step": 600})
    report = client.get(url).json()
    assert report["verdict"] == "fail"
    assert [c["verdict"] for c in report["claims"]] == ["pass", "fail"]
    assert report["claims"][1]["measured"] == "1"
    # The sweep's own report, found from the sweep alone, is the same body.
    by_sweep = client.get(f"{SWEEPS}/{sweep['id']}/report")
    assert by_sweep.status_code == 200, by_sweep.text
    assert by_sweep.json() == report


def test_a_sweep_that_is_not_a_run_of_the_reproduction_is_422(client):
    other = client.post(SWEEPS, json={"name": "other", "base": {"preset": "ci-small"},
                                      "grid": {"training.seed": [0, 1]}}).json()
    r = client.get(f"{REPRODUCTIONS}/prieto2025-stablemax/runs/{other['id']}")
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["path", "sweep_id"]
    assert "not a run of prieto2025-stablemax v1" in r.json()["detail"][0]["msg"]
    # Not a run of any reproduction: the sweep's report is a 404 that says so.
    r = client.get(f"{SWEEPS}/{other['id']}/report")
    assert r.status_code == 404
    assert "is not a run of any reproduction" in r.json()["detail"]


def finish_prieto_run(client, api_sessions, softmax_step: int | None) -> str:
    """A prieto2025-stablemax ci run whose members finished: StableMax + ⊥AdamW generalised at
    300; plain softmax at softmax_step (None: never)."""
    run = client.post(f"{REPRODUCTIONS}/prieto2025-stablemax", json={"scale": "ci"}).json()
    url = f"{REPRODUCTIONS}/prieto2025-stablemax/runs/{run['sweep']['id']}"
    for m in client.get(url).json()["members"]:
        loss, orthogonal = m["point"]["optimizer.loss"], m["point"]["optimizer.orthogonal_grad"]
        step = 300 if (loss, orthogonal) == ("stablemax", True) else (
            softmax_step if (loss, orthogonal) == ("cross_entropy", False) else None)
        set_members(api_sessions, [m["experiment_id"]], "succeeded", step=600, started_at=utcnow(),
                    finished_at=utcnow(), summary={"generalization_step": step, "last_step": 600})
    return run["sweep"]["id"]


@pytest.mark.parametrize(("softmax_step", "exit_code", "verdicts"), [
    (None, 0, ["pass", "pass"]),
    (450, 1, ["pass", "fail"]),
])
def test_groklab_reproduce_prints_the_report_and_exits_by_the_verdict(
    client, api_sessions, monkeypatch, softmax_step, exit_code, verdicts,
):
    from typer.testing import CliRunner

    from service.cli import app
    from service.cli import client as cli_client
    from service.client import Client

    sweep_id = finish_prieto_run(client, api_sessions, softmax_step)
    monkeypatch.setattr(cli_client, "_client", lambda url: Client(http=client))
    out = CliRunner().invoke(app, ["reproduce", "prieto2025-stablemax", "--run", sweep_id])
    assert out.exit_code == exit_code, out.output
    assert ("PASS" if exit_code == 0 else "FAIL") in out.output
    # One verdict cell per claim, in the table's last column.
    cells = re.findall(r"\b(pass|fail)\b\s*│\s*$", out.output, flags=re.M)
    assert cells == verdicts, out.output
    # The claims' selectors are printed as they are, not taken for markup.
    assert "optimizer.loss=stablemax" in re.sub(r"\s*│\s*", " ", out.output), out.output
