"""Grokking-aware early stopping on the real stack: a small ci-small sweep with
early_stopping, where the weight-decay-0 member (it only memorises) is pruned by the live pruner
in its pack's worker with its reason and score, and the weight-decay-1 member (it groks at ~450)
trains on to the end; the same decisions as bench_pruning's replay of the stored series; pruned
through the API, the client, the CLI and the members CSV; the pruned member's checkpoints still
download."""
from __future__ import annotations

import csv
import hashlib
import io

import pytest

from service.client import Client
from service.science.pruning import EarlyStoppingSpec, replay
from tests.integration.conftest import raw_metrics, wait_for_sweep
from tests.integration.browser import browser  # noqa: F401
from tests.integration.test_client import cli, token_of

pytestmark = pytest.mark.integration

EARLY_STOPPING = {"policy": "grokking_aware", "after": "memorization", "check_every": 100}
GRID = {
    "name": "pruned-without-weight-decay",
    "base": {"preset": "ci-small", "training": {"steps": 800, "checkpoint_every": 400},
             "analysis": {"every": None}},
    "grid": {"optimizer.weight_decay": [0, 1]},
    "early_stopping": EARLY_STOPPING,
}


def series_of(client, experiment_id: str) -> dict[str, list[tuple[int, float]]]:
    named: dict[str, list[tuple[int, float]]] = {}
    for (name, member, step), value in sorted(raw_metrics(client, experiment_id).items()):
        if member == 0 and value is not None:
            named.setdefault(name, []).append((step, value))
    return named


@pytest.fixture(scope="module")
def pruned_sweep(stack):
    r = stack.client.post("/api/v1/sweeps", json=GRID)
    assert r.status_code == 201, r.text
    created = r.json()
    wait_for_sweep(stack.client, created["id"])
    jobs = [stack.client.get(f"/api/v1/experiments/{i}").json() for i in created["experiment_ids"]]
    return created, jobs


def test_the_member_without_weight_decay_is_pruned_and_the_grokking_one_kept(stack, pruned_sweep):
    created, (no_wd, wd) = pruned_sweep
    assert no_wd["status"] == "pruned", no_wd
    pruning = no_wd["summary"]["pruning"]
    assert pruning["policy"] == "grokking_aware" and pruning["score"] < 0.5
    assert "will_generalize" in pruning["reason"] and "after memorisation" in pruning["reason"]
    assert no_wd["summary"]["stopped"] == "pruned"
    assert no_wd["progress"]["step"] == pruning["step"] < 800  # it left its pack there
    assert no_wd["summary"]["generalization_step"] is None

    assert wd["status"] == "succeeded" and wd["progress"]["step"] == 800
    assert wd["summary"]["grokked"]
    forecast = wd["summary"]["forecast"]
    assert forecast["will_generalize"] == 1.0
    assert forecast["generalization_step"] == wd["summary"]["generalization_step"]
    assert wd["forecast"]["step"] == 800  # the status carries the latest one

    sweep = stack.client.get(f"/api/v1/sweeps/{created['id']}").json()
    assert sweep["status"] == "succeeded" and sweep["counts"]["pruned"] == 1


def test_the_live_pruner_decides_as_the_replay_of_the_stored_series(stack, pruned_sweep):
    _, jobs = pruned_sweep
    fates = replay(EarlyStoppingSpec.model_validate(EARLY_STOPPING),
                   [series_of(stack.client, j["id"]) for j in jobs], budget=800)
    assert fates[0]["pruned_at"] == jobs[0]["summary"]["pruning"]["step"]
    assert fates[0]["reason"] == jobs[0]["summary"]["pruning"]["reason"]
    assert fates[1]["pruned_at"] is None


def test_a_pruned_members_checkpoints_still_download(stack, pruned_sweep, tmp_path):
    _, (no_wd, _) = pruned_sweep
    checkpoints = stack.client.get(f"/api/v1/experiments/{no_wd['id']}/checkpoints").json()
    last = checkpoints[-1]
    assert last["step"] == no_wd["summary"]["pruning"]["step"]  # its checkpoint when it left
    with Client(stack.url, token_of(stack)) as client:
        path = client.download_checkpoint(no_wd["id"], last["step"], tmp_path / "pruned.safetensors")
        assert hashlib.sha256(path.read_bytes()).hexdigest() == last["sha256"]
        assert client.wait(no_wd["id"], progress=False)["status"] == "pruned"
        assert no_wd["id"] in {j["id"] for j in client.list(status="pruned", sweep_id=pruned_sweep[0]["id"])}


def test_members_csv_phase_diagram_and_cli_show_the_pruned_member(stack, pruned_sweep):
    created, (no_wd, _) = pruned_sweep
    r = stack.client.get(f"/api/v1/sweeps/{created['id']}/members", params={"format": "csv"})
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert rows[0]["status"] == "pruned" and rows[0]["prune_reason"].startswith("grokking_aware")
    assert float(rows[0]["prune_score"]) < 0.5 and rows[0]["pruned_at_step"] == str(no_wd["progress"]["step"])
    assert rows[1]["status"] == "succeeded" and rows[1]["prune_reason"] == "" and rows[1]["will_generalize"] == "1.0"
    diagram = stack.client.get(f"/api/v1/sweeps/{created['id']}/phase-diagram",
                               params={"x": "optimizer.weight_decay"}).json()
    cells = {c["x"]: c for c in diagram["cells"]}
    assert cells[0]["phases"]["pruned"] == 1 and cells[0]["phases"]["memorization"] == 0
    assert cells[1]["phases"].get("pruned", 0) == 0

    out = cli(stack, "members", created["id"])
    assert out.returncode == 0, out.stderr
    assert "pruned" in out.stdout and "grokking_aware" in out.stdout


def test_the_dashboard_shows_the_pruned_member_its_reason_and_the_forecast(stack, pruned_sweep, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    from tests.integration.browser import severe_errors, wait

    _, (no_wd, wd) = pruned_sweep
    token = token_of(stack)
    browser.get(f"{stack.url}/#token={token}")
    browser.get(f"{stack.url}/#/experiments/{no_wd['id']}")
    pruning = wait(browser, EC.visibility_of_element_located((By.ID, "pruning")))
    assert f"at step {no_wd['summary']['pruning']['step']}" in pruning.text and "grokking_aware" in pruning.text
    assert "pruned" in browser.find_element(By.CSS_SELECTOR, "#experiment-header .badge").text
    assert "will generalise" in browser.find_element(By.ID, "forecast").text
    browser.get(f"{stack.url}/#/experiments/{wd['id']}")
    wait(browser, lambda b: "generalises at" in b.find_element(By.ID, "forecast").text)
    assert severe_errors(browser) == []
