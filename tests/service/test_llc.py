"""GET .../checkpoints/{step}/llc and GET .../llc: the local learning coefficient, estimated by a
worker (here its task function, in-process, against the API's database) on the first request
and served from the cache; the series over the stored checkpoints, with its progress while
workers compute it; what is refused, and why."""
from __future__ import annotations

import json
import math
import sys

from service import store
from service.contract.llc import LLC_KIND, LLC_SETTING
from service.contract.spec import ExperimentSpec
from tests.service.specs import API, TINY


def with_checkpoints(client, api_sessions, steps=(0,), **sections) -> tuple[str, ExperimentSpec]:
    """An experiment submitted through the API, with a checkpoint stored at each step (the
    model trained to it, as a worker stores it)."""
    from worker.engine.train import Trainer

    r = client.post(API, json={**TINY, **sections})
    assert r.status_code == 201, r.text
    experiment_id = r.json()["id"]
    with api_sessions() as s:
        spec = ExperimentSpec.model_validate(store.get_experiment(s, experiment_id).spec)
        trainer = Trainer(spec)
        for step in steps:
            while trainer.step < step:
                trainer.train_step()
            store.add_checkpoint(s, experiment_id, step, trainer.to_checkpoint(), {})
    return experiment_id, spec


def compute(experiment_id: str, step: int, settings) -> str:
    from worker.checkpoint_analysis import analyze_checkpoint

    return analyze_checkpoint(experiment_id, step, settings, kind=LLC_KIND)


def test_one_checkpoint_every_member_one_task(client, api_sessions, api_settings, enqueued):
    experiment_id, spec = with_checkpoints(client, api_sessions, ensemble={"size": 2})
    enqueued.clear()
    url = f"{API}/{experiment_id}/checkpoints/0/llc"
    for _ in range(2):
        r = client.get(url)
        assert r.status_code == 202 and r.json()["status"] == "pending", r.text
    assert enqueued == [(experiment_id, "analysis")]  # asked twice, one task
    assert compute(experiment_id, 0, api_settings) == "computed"
    r = client.get(url)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["step"] == 0 and body["setting"] == LLC_SETTING.as_dict()
    assert [m["member"] for m in body["members"]] == [0, 1]
    for m in body["members"]:
        assert len(m["chains"]) == LLC_SETTING.chains and math.isfinite(m["llc"])
        assert m["n"] == round(spec.task.train_fraction * spec.task.p ** 2)
    # each member is its own model
    assert body["members"][0]["init_loss"] != body["members"][1]["init_loss"]
    assert enqueued == [(experiment_id, "analysis")]


def test_the_series_shows_its_progress_then_the_curves(client, api_sessions, api_settings, enqueued):
    experiment_id, _ = with_checkpoints(client, api_sessions, steps=(0, 20, 40))
    enqueued.clear()
    url = f"{API}/{experiment_id}/llc"
    r = client.get(url)
    assert r.status_code == 202, r.text
    assert r.json()["computed"] == 0 and r.json()["of"] == 3 and r.headers["retry-after"] == "5"
    assert enqueued == [(experiment_id, "analysis")] * 3  # a task per checkpoint
    assert compute(experiment_id, 20, api_settings) == "computed"
    r = client.get(url)
    assert r.status_code == 202 and r.json()["computed"] == 1
    assert "1 of 3 checkpoints" in r.json()["detail"]
    assert len(enqueued) == 3  # the other two are still asked for: no new task
    for step in (0, 40):
        assert compute(experiment_id, step, api_settings) == "computed"
    r = client.get(url)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["failed"] == [] and body["setting"] == LLC_SETTING.as_dict()
    series = {s["name"]: s for s in body["series"]}
    assert series["llc"]["steps"] == [0, 20, 40] and series["llc"]["member"] == 0
    at_20 = client.get(f"{API}/{experiment_id}/checkpoints/20/llc").json()
    assert series["llc"]["values"][1] == at_20["members"][0]["llc"]
    assert len(series["llc_std"]["values"]) == 3 and "phases" in body


def test_a_worker_without_devinterp_fails_with_the_extra_named(
        client, api_sessions, api_settings, enqueued, monkeypatch):
    experiment_id, _ = with_checkpoints(client, api_sessions)
    monkeypatch.setitem(sys.modules, "devinterp.slt.sampler", None)
    url = f"{API}/{experiment_id}/checkpoints/0/llc"
    for _ in range(api_settings.analysis_max_attempts):
        assert client.get(url).status_code == 202
        assert compute(experiment_id, 0, api_settings) == "failed"
    r = client.get(url)
    assert r.status_code == 409
    assert "pip install 'groklab[interp]'" in r.json()["detail"]
    series = client.get(f"{API}/{experiment_id}/llc")
    assert series.status_code == 200  # every checkpoint computed or failed: the answer is final
    assert series.json()["series"] == []
    assert "groklab[interp]" in series.json()["failed"][0]["detail"]


def test_what_is_refused(client, api_sessions, make_token):
    experiment_id, _ = with_checkpoints(client, api_sessions)
    missing = client.get(f"{API}/{experiment_id}/checkpoints/999/llc")
    assert missing.status_code == 404
    assert missing.json()["detail"] == "no checkpoint at step 999; stored steps: [0]"
    bob = {"Authorization": f"Bearer {make_token('bob', 'read')}"}
    assert client.get(f"{API}/{experiment_id}/llc", headers=bob).status_code == 404
    assert client.get(f"{API}/{experiment_id}/checkpoints/0/llc", headers=bob).status_code == 404
    bare = client.post(API, json=TINY).json()["id"]
    r = client.get(f"{API}/{bare}/llc")
    assert r.status_code == 409 and "no checkpoint stored yet" in r.json()["detail"]


def test_groklab_llc_prints_the_estimate(client, api_sessions, api_settings, enqueued, monkeypatch):
    from typer.testing import CliRunner

    from service.cli import app
    from service.cli import client as cli_client
    from service.client import Client

    monkeypatch.setattr(cli_client, "_client", lambda url: Client(http=client))
    experiment_id, _ = with_checkpoints(client, api_sessions)
    assert client.get(f"{API}/{experiment_id}/checkpoints/0/llc").status_code == 202
    assert compute(experiment_id, 0, api_settings) == "computed"
    result = CliRunner().invoke(app, ["llc", experiment_id, "--step", "0"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["members"][0]["llc"] is not None
    result = CliRunner().invoke(app, ["llc", experiment_id])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["series"][0]["steps"] == [0]
