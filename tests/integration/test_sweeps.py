"""Sweeps on the real stack: one POST, members trained together in packs by a real worker
process, each member stored as an ordinary experiment, a phase diagram at the end; a member that
diverges fails alone; cancel and kill -9 of a pack's worker. The ci-small sweep (ci_small_sweep,
CI_SMALL_GRID) is conftest's, shared with the dashboard's sweep page test."""
from __future__ import annotations

import csv
import io
import time

import pytest

from tests.builders import tiny_job
from tests.integration.conftest import raw_metrics, wait_for_status, wait_for_sweep

pytestmark = pytest.mark.integration


def alone_metrics(spec_body: dict) -> dict[tuple[str, int, int], float]:
    """The metrics of one member's spec trained alone, in this process."""
    from service.contract.spec import ExperimentSpec
    from worker.engine.train import Trainer

    rows: list[dict] = []
    Trainer(ExperimentSpec.model_validate(spec_body)).run(on_metrics=rows.extend)
    return {(r["name"], r["member"], r["step"]): r["value"] for r in rows}


def assert_same_run(stored: dict, alone: dict) -> None:
    """A pack member against its spec trained alone. Batched kernels round differently from a
    single run's, and Adam turns those last-bit differences in near-zero gradients into full
    steps, so the curves agree closely at first and then stay within a band: the same points,
    the first evaluations to float tolerance, the same memorisation and generalisation steps
    and final accuracies."""
    assert stored.keys() == alone.keys()
    for (name, member, step), value in alone.items():
        if step <= 8:
            assert stored[(name, member, step)] == pytest.approx(value, rel=1e-4, abs=1e-5)

    def first_step(name: str, threshold: float = 0.99):
        steps = sorted(k[2] for k, v in alone.items() if k[0] == name and v >= threshold)
        mine = sorted(k[2] for k, v in stored.items() if k[0] == name and v >= threshold)
        return (steps or [None])[0], (mine or [None])[0]

    for name in ("train_acc", "val_acc"):
        expected, got = first_step(name)
        assert (expected is None) == (got is None), name
        if expected is not None:
            assert abs(got - expected) <= 100, (name, got, expected)  # two evaluations
        last = max(k[2] for k in alone if k[0] == name)
        assert stored[(name, 0, last)] == pytest.approx(alone[(name, 0, last)], abs=0.03)


def test_a_grid_becomes_packed_experiments_that_each_match_a_run_alone(stack, ci_small_sweep):
    created, sweep = ci_small_sweep
    client = stack.client
    assert len(created["experiment_ids"]) == 4 and created["n_packs"] <= 2
    assert sweep["status"] == "succeeded", sweep
    listed = client.get("/api/v1/experiments", params={"sweep_id": created["id"]}).json()["items"]
    assert {e["id"] for e in listed} == set(created["experiment_ids"])
    # Two members (one per weight decay) against the same spec trained alone.
    for experiment_id in created["experiment_ids"][::2]:
        job = client.get(f"/api/v1/experiments/{experiment_id}").json()
        assert job["status"] == "succeeded" and job["summary"]["phase"]
        assert_same_run(raw_metrics(client, experiment_id), alone_metrics(job["spec"]))
    checkpoints = client.get(f"/api/v1/experiments/{created['experiment_ids'][0]}/checkpoints")
    assert [c["step"] for c in checkpoints.json()] == [400, 800]


def test_the_phase_diagram_separates_memorisation_from_grokking(stack, ci_small_sweep):
    created, _ = ci_small_sweep
    r = stack.client.get(
        f"/api/v1/sweeps/{created['id']}/phase-diagram",
        params={"x": "optimizer.weight_decay", "y": "task.train_fraction"},
    )
    assert r.status_code == 200, r.text
    cells = {(c["x"], c["y"]): c for c in r.json()["cells"]}
    for fraction in (0.4, 0.6):
        assert cells[(0, fraction)]["phases"].get("memorization") == 1, cells[(0, fraction)]
        assert cells[(0, fraction)]["grokked_fraction"] == 0
    assert cells[(1, 0.6)]["phases"].get("grokking") == 1, cells[(1, 0.6)]
    assert cells[(1, 0.6)]["median_generalization_step"] > cells[(1, 0.6)]["median_memorization_step"]

    as_csv = stack.client.get(
        f"/api/v1/sweeps/{created['id']}/phase-diagram",
        params={"x": "optimizer.weight_decay", "y": "task.train_fraction", "format": "csv"},
    )
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert len(rows) == 4 and {row["x"] for row in rows} == {"0", "1"}
    members = stack.client.get(f"/api/v1/sweeps/{created['id']}/members",
                               params={"format": "csv"})
    member_rows = list(csv.DictReader(io.StringIO(members.text)))
    assert len(member_rows) == 4
    assert {row["phase"] for row in member_rows if row["optimizer.weight_decay"] == "0"} == {
        "memorization"}


def test_a_member_that_diverges_fails_alone(stack):
    body = {
        "name": "diverging",
        "base": {**tiny_job("d", p=11, width=16, steps=80, eval_every=10, checkpoint_every=40),
                 "optimizer": {"name": "sgd", "weight_decay": 0, "warmup_steps": 0}},
        "grid": {"optimizer.lr": [0.05, 10.0], "model.init_scale": [1.0, 30.0]},
    }
    body["base"].pop("name")
    created = stack.client.post("/api/v1/sweeps", json=body).json()
    wait_for_sweep(stack.client, created["id"])
    jobs = [stack.client.get(f"/api/v1/experiments/{i}").json() for i in created["experiment_ids"]]
    by_point = {(j["spec"]["optimizer"]["lr"], j["spec"]["model"]["init_scale"]): j for j in jobs}
    sane = by_point[(0.05, 1.0)]
    assert sane["status"] == "succeeded" and sane["progress"]["step"] == 80
    diverged = by_point[(10.0, 30.0)]
    assert diverged["status"] == "failed" and "NaN or infinite" in diverged["error"]
    assert diverged["summary"]["stopped"] == "nonfinite"
    sweep = stack.client.get(f"/api/v1/sweeps/{created['id']}").json()
    assert sweep["status"] == "failed" and sweep["counts"]["failed"] >= 1
    assert sweep["counts"]["succeeded"] >= 1


def test_cancelling_a_running_sweep_cancels_every_member(stack):
    body = {"name": "to-cancel",
            "base": {k: v for k, v in tiny_job("c", p=23, width=32, steps=20000).items()
                     if k != "name"},
            "grid": {"training.seed": [0, 1, 2]}}
    created = stack.client.post("/api/v1/sweeps", json=body).json()
    wait_for_status(stack.client, created["experiment_ids"][0], statuses=("running",), timeout=120)
    r = stack.client.post(f"/api/v1/sweeps/{created['id']}/cancel")
    assert r.status_code == 200, r.text
    sweep = wait_for_sweep(stack.client, created["id"], timeout=120)
    assert sweep["status"] == "cancelled" and sweep["counts"]["cancelled"] == 3
    for experiment_id in created["experiment_ids"]:
        job = stack.client.get(f"/api/v1/experiments/{experiment_id}").json()
        assert job["status"] == "cancelled" and job["progress"]["step"] < 20000


def test_kill_9_of_a_packs_worker_resumes_the_pack_with_identical_metrics(bare_stack):
    from service.contract.spec import ExperimentSpec
    from worker.engine.train import Trainer

    client = bare_stack.client
    base = {k: v for k, v in tiny_job("k", p=23, width=32, steps=1500, eval_every=25,
                                         checkpoint_every=100).items() if k != "name"}
    body = {"name": "killed", "base": base,
            "grid": {"optimizer.weight_decay": [0.3, 1.0], "training.seed": [0, 1]}}
    created = client.post("/api/v1/sweeps", json=body).json()
    assert created["n_packs"] == 1
    first = created["experiment_ids"][0]
    worker = bare_stack.start_worker("victim")
    # Killed once every member has stored its checkpoint at step 500 (its progress shows step 500
    # a moment before that checkpoint is written).
    deadline = time.monotonic() + 120
    while min(max((c["step"] for c in client.get(f"/api/v1/experiments/{i}/checkpoints").json()), default=0)
              for i in created["experiment_ids"]) < 500:
        assert client.get(f"/api/v1/experiments/{first}").json()["status"] in ("queued", "running")
        assert time.monotonic() < deadline
        time.sleep(0.1)
    bare_stack.kill_worker(worker)
    bare_stack.start_worker("survivor")
    sweep = wait_for_sweep(client, created["id"], timeout=300)
    assert sweep["status"] == "succeeded", sweep

    jobs = [client.get(f"/api/v1/experiments/{i}").json() for i in created["experiment_ids"]]
    assert all(j["attempt"] == 2 for j in jobs)
    assert all(j["summary"]["resumed_from_step"] >= 500 for j in jobs)
    specs = [ExperimentSpec.model_validate(j["spec"]) for j in jobs]
    rows: list[dict] = []
    Trainer.for_members(specs).run(on_metrics=rows.extend)
    for member, job in enumerate(jobs):
        expected = {(r["name"], 0, r["step"]): r["value"] for r in rows if r["member"] == member}
        stored = raw_metrics(client, job["id"])
        assert stored == expected, job["id"]  # bit-identical on the CPU
