"""GET .../checkpoints/{step}/embedding|neurons|waves|attention: the circuit pictures of a
checkpoint, computed by a worker (here its task function, in-process, against the API's
database) on the first request, one task for every picture and member, and served from the
cache after that; what is refused, and why."""
from __future__ import annotations

import pytest

from service import store
from service.contract.spec import ExperimentSpec
from tests.service.blobs import checkpoint_bytes
from tests.service.specs import API, TINY

PICTURES = ("embedding", "neurons", "waves", "attention")


def experiment_with_checkpoint(client, api_sessions, **sections) -> tuple[str, ExperimentSpec]:
    """An experiment submitted through the API, with its freshly initialised model stored as
    the checkpoint of step 0 (what a worker stores)."""
    from worker.engine.train import Trainer

    r = client.post(API, json={**TINY, **sections})
    assert r.status_code == 201, r.text
    experiment_id = r.json()["id"]
    with api_sessions() as s:
        spec = ExperimentSpec.model_validate(store.get_experiment(s, experiment_id).spec)
        store.add_checkpoint(s, experiment_id, 0, Trainer(spec).to_checkpoint(), {})
    return experiment_id, spec


def compute(experiment_id: str, kind: str, settings) -> str:
    from worker.checkpoint_analysis import analyze_checkpoint

    return analyze_checkpoint(experiment_id, 0, settings, kind=kind)


def url(experiment_id: str, picture: str, step: int = 0) -> str:
    return f"{API}/{experiment_id}/checkpoints/{step}/{picture}"


def test_one_task_computes_every_picture_of_every_member(client, api_sessions, api_settings, enqueued):
    experiment_id, spec = experiment_with_checkpoint(client, api_sessions, ensemble={"size": 2})
    p, d_mlp = spec.task.p, spec.model.d_mlp
    enqueued.clear()  # the submit's own message
    for picture in PICTURES:
        for member in (0, 1):
            r = client.get(url(experiment_id, picture), params={"member": member})
            assert r.status_code == 202, r.text
            assert r.headers["retry-after"] == "2" and r.json()["status"] == "pending"
    assert enqueued == [(experiment_id, "analysis")]  # asked eight times, one task
    assert compute(experiment_id, "circuit", api_settings) == "computed"
    assert compute(experiment_id, "circuit", api_settings) == "cached"  # a redelivery: no work

    bodies = {}
    for member in (0, 1):
        for picture in PICTURES:
            r = client.get(url(experiment_id, picture), params={"member": member})
            assert r.status_code == 200, (picture, r.text)
            body = r.json()
            assert (body["step"], body["member"], body["p"]) == (0, member, p)
            bodies[picture, member] = body
    assert enqueued == [(experiment_id, "analysis")]

    neurons = bodies["neurons", 0]
    assert neurons["n_neurons"] == d_mlp and len(neurons["neurons"]) == d_mlp
    assert sorted(n["neuron"] for n in neurons["neurons"]) == list(range(d_mlp))
    fractions = [n["fraction"] for n in neurons["neurons"]]
    assert fractions == sorted(fractions, reverse=True) and all(0 <= f <= 1 for f in fractions)
    assert all(0 <= n["frequency"] <= p // 2 for n in neurons["neurons"])
    assert neurons["share_above_0_9"] == pytest.approx(sum(f > 0.9 for f in fractions) / d_mlp, abs=0.01)

    embedding = bodies["embedding", 0]
    assert embedding["key_frequencies"] == neurons["key_frequencies"]
    assert len(embedding["clocks"]) == min(8, len(embedding["key_frequencies"]))
    for clock in embedding["clocks"]:
        assert [pt["residue"] for pt in clock["points"]] == list(range(p))
        assert clock["radius_mean"] > 0 and clock["radius_spread"] >= 0

    waves = bodies["waves", 0]
    # the default: the best explained neurons, one per frequency, with answer 0's logit
    top, seen = [], set()
    for n in neurons["neurons"]:
        if n["frequency"] and n["frequency"] not in seen and len(top) < 4:
            top.append(n["neuron"])
            seen.add(n["frequency"])
    assert [n["neuron"] for n in waves["neurons"]] == top
    for n in waves["neurons"]:
        assert len(n["values"]) == p and all(len(row) == p for row in n["values"])
    assert waves["logit"]["answer"] == 0 and len(waves["logit"]["values"]) == p

    heads = bodies["attention", 0]["heads"]
    assert [(h["layer"], h["head"]) for h in heads] == [
        (layer, h) for layer in range(spec.model.n_layers) for h in range(spec.model.n_heads)
    ]
    for head in heads:
        for a in range(p):
            for b in range(p):
                assert 0 <= head["to_a"][a][b] and head["to_a"][a][b] + head["to_b"][a][b] <= 1.001
    # each member is its own model
    assert bodies["waves", 0]["logit"] != bodies["waves", 1]["logit"]


def test_other_waves_are_one_more_task_each_and_are_the_models_own(client, api_sessions, api_settings, enqueued):
    from worker.analysis.fourier import full_grid_tokens
    from worker.engine.train import Trainer

    experiment_id, spec = experiment_with_checkpoint(client, api_sessions)
    p = spec.task.p
    enqueued.clear()
    params = {"neurons": "7,3,7", "answer": p - 1}
    assert client.get(url(experiment_id, "waves"), params=params).status_code == 202
    assert enqueued == [(experiment_id, "analysis")]
    assert compute(experiment_id, f"waves:0:7,3:{p - 1}", api_settings) == "computed"
    r = client.get(url(experiment_id, "waves"), params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [n["neuron"] for n in body["neurons"]] == [7, 3]  # each once, in the order asked
    with api_sessions() as s:
        trainer = Trainer.from_checkpoint(spec, store.load_checkpoint_verified(s, experiment_id, 0))
    logits, acts = trainer.model(full_grid_tokens(p), return_mlp_acts=True)
    assert body["neurons"][0]["values"][5][9] == pytest.approx(float(acts[0, 5 * p + 9, 7].detach()), rel=1e-3, abs=1e-6)
    assert body["logit"] == {"answer": p - 1, "values": body["logit"]["values"]}
    assert body["logit"]["values"][9][5] == pytest.approx(float(logits[0, 9 * p + 5, p - 1].detach()), rel=1e-3, abs=1e-6)
    assert enqueued == [(experiment_id, "analysis")]


def test_bad_requests_are_refused_naming_the_field(client, api_sessions, make_token):
    experiment_id, spec = experiment_with_checkpoint(client, api_sessions)
    p, d_mlp = spec.task.p, spec.model.d_mlp
    cases = [
        ("embedding", {"member": 1}, "member"),
        ("attention", {"member": -1}, "member"),
        ("waves", {"neurons": ",".join(str(n) for n in range(9))}, "neurons"),
        ("waves", {"neurons": str(d_mlp)}, "neurons"),
        ("waves", {"neurons": "3;17"}, "neurons"),
        ("waves", {"answer": p}, "answer"),
    ]
    for picture, params, field in cases:
        r = client.get(url(experiment_id, picture), params=params)
        assert r.status_code == 422, (picture, params, r.text)
        assert r.json()["detail"][0]["loc"] == ["query", field], r.text
    for picture in PICTURES:
        missing = client.get(url(experiment_id, picture, step=999))
        assert missing.status_code == 404
        assert missing.json()["detail"] == "no checkpoint at step 999; stored steps: [0]"
        bob = {"Authorization": f"Bearer {make_token('bob', 'read')}"}
        assert client.get(url(experiment_id, picture), headers=bob).status_code == 404


def test_pictures_that_do_not_apply_are_refused_with_the_reason(client, api_sessions, api_settings, enqueued):
    s5 = client.post(API, json={**TINY, "task": {"kind": "permutation", "op": "x*y", "p": None}})
    for picture in PICTURES:
        r = client.get(url(s5.json()["id"], picture))
        assert r.status_code == 422
        assert "need a modular task; this experiment is S5" in r.json()["detail"]

    experiment_id, spec = experiment_with_checkpoint(client, api_sessions,
                                                     model={**TINY["model"], "arch": "mlp"})
    r = client.get(url(experiment_id, "attention"))
    assert r.status_code == 422 and "no attention" in r.json()["detail"]
    enqueued.clear()
    assert client.get(url(experiment_id, "neurons")).status_code == 202
    assert compute(experiment_id, "circuit", api_settings) == "computed"
    neurons = client.get(url(experiment_id, "neurons")).json()
    assert neurons["n_neurons"] == spec.model.d_mlp  # the MLP's last hidden layer
    assert client.get(url(experiment_id, "embedding")).status_code == 200


def test_a_failure_is_retried_then_served_with_its_reason(client, api_sessions, api_settings, enqueued):
    experiment_id = client.post(API, json=TINY).json()["id"]
    with api_sessions() as s:  # a valid checkpoint without a model's tensors: the engine fails
        store.add_checkpoint(s, experiment_id, 0, checkpoint_bytes(b"no model"), {})
    enqueued.clear()
    tries = api_settings.analysis_max_attempts
    assert client.get(url(experiment_id, "embedding")).status_code == 202
    assert compute(experiment_id, "circuit", api_settings) == "failed"
    for attempt in range(2, tries + 1):  # any picture asks the one task again
        r = client.get(url(experiment_id, PICTURES[attempt % 4]))
        assert r.status_code == 202 and f"attempt {attempt} of {tries}" in r.json()["detail"]
        assert compute(experiment_id, "circuit", api_settings) == "failed"
    for picture in PICTURES:
        r = client.get(url(experiment_id, picture))
        assert r.status_code == 409, r.text
        assert r.json()["detail"].startswith("the analysis of step 0 failed: ValueError: ")
    assert enqueued == [(experiment_id, "analysis")] * tries


def test_groklab_circuit_prints_a_picture(client, api_sessions, api_settings, enqueued, monkeypatch):
    import json

    from typer.testing import CliRunner

    from service.cli import app
    from service.cli import client as cli_client
    from service.client import Client

    monkeypatch.setattr(cli_client, "_client", lambda url: Client(http=client))
    experiment_id, spec = experiment_with_checkpoint(client, api_sessions)
    assert client.get(url(experiment_id, "neurons")).status_code == 202
    assert compute(experiment_id, "circuit", api_settings) == "computed"
    runner = CliRunner()
    out = runner.invoke(app, ["circuit", experiment_id, "0", "neurons"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["n_neurons"] == spec.model.d_mlp
    out = runner.invoke(app, ["circuit", experiment_id, "0", "waves", "--neurons", "99"])
    assert out.exit_code == 1 and "422" in out.stderr and "query.neurons" in out.stderr
    out = runner.invoke(app, ["circuit", experiment_id, "0", "clocks"])
    assert out.exit_code == 2 and "embedding, neurons, waves or attention" in out.stderr
