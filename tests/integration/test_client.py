"""The Python client (service/client/) and the `groklab` commands built on it, against the real
stack: submit and wait, pages, metrics as a DataFrame and as rows, a checked checkpoint
download, analysis, sweeps, errors; `groklab list|cancel|metrics|submit --preset|watch` as
processes."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
import sys
import time
import uuid

import pytest

from service.client import Client, GroklabError
from tests.builders import tiny_job
from tests.integration.conftest import FINISHED

pytestmark = pytest.mark.integration


def token_of(stack) -> str:
    return stack.client.headers["Authorization"].split()[-1]


@pytest.fixture
def groklab(stack):
    with Client(stack.url, token_of(stack)) as client:
        yield client


def cli_command(stack, *args: str) -> dict:
    return dict(
        args=[sys.executable, "-m", "service.cli", *args],
        env={**stack.env, "GROKLAB_URL": stack.url, "GROKLAB_TOKEN": token_of(stack)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def cli(stack, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(**cli_command(stack, *args), timeout=timeout)


def test_submit_and_wait_while_groklab_watch_follows_live(stack, groklab, capsys):
    job = groklab.submit(tiny_job("client-tiny"), training={"steps": 40})
    assert job["status"] == "queued"
    assert job["spec"]["training"]["steps"] == 40
    assert job["spec"]["training"]["eval_every"] == 20  # the rest of the section is kept
    watch = subprocess.Popen(**cli_command(stack, "watch", job["id"]))
    try:
        done = groklab.wait(job["id"], timeout=180)
        watched, errors = watch.communicate(timeout=60)
    finally:
        watch.kill()
    assert done["status"] == "succeeded", done["error"]
    assert "40/40 steps" in capsys.readouterr().err
    assert groklab.get(job["id"])["progress"]["step"] == 40

    assert watch.returncode == 0, watched + errors
    lines = watched.splitlines()
    assert f"{job['id']} succeeded" in lines
    steps = [int(line.split()[1].split("/")[0]) for line in lines if line.startswith("step ")]
    assert steps == sorted(set(steps)) and steps[-1] == 40  # each step once, in order
    assert any(line.startswith("step 40/40") and "val_acc" in line for line in lines), lines


def test_list_follows_the_cursor_over_every_page(groklab, grokked_run):
    one_per_page = [job["id"] for job in groklab.list(limit=1)]
    assert len(one_per_page) >= 2 and len(set(one_per_page)) == len(one_per_page)
    assert one_per_page == [job["id"] for job in groklab.list(limit=50)]
    succeeded = list(groklab.list(status="succeeded", limit=1))
    assert grokked_run["id"] in [job["id"] for job in succeeded]
    assert {job["status"] for job in succeeded} == {"succeeded"}
    assert [j["id"] for j in groklab.list(name="ci-small-e2e")] == [grokked_run["id"]]


def test_metrics_as_a_dataframe_and_as_rows_without_pandas(groklab, grokked_run, monkeypatch):
    import pandas

    frame = groklab.metrics(grokked_run["id"], names=["train_acc", "val_acc"], max_points=50)
    assert isinstance(frame, pandas.DataFrame)
    assert list(frame.columns) == ["name", "member", "step", "value"]
    assert set(frame["name"]) == {"train_acc", "val_acc"}
    assert frame.groupby("name").size().max() <= 50
    val_acc = frame[frame["name"] == "val_acc"].sort_values("step")
    assert val_acc["value"].iloc[0] < 0.5 and val_acc["value"].iloc[-1] > 0.99  # it grokked

    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` fails: rows instead
    rows = groklab.metrics(grokked_run["id"], names="train_acc,val_acc", max_points=50)
    assert isinstance(rows, list)
    assert [(r["name"], r["member"], r["step"], r["value"]) for r in rows] == [
        (r.name, int(r.member), int(r.step), float(r.value)) for r in frame.itertuples()
    ]


def test_checkpoint_download_checks_its_sha256(groklab, grokked_run, tmp_path):
    last = groklab.checkpoints(grokked_run["id"])[-1]
    path = groklab.download_checkpoint(
        grokked_run["id"], last["step"], tmp_path / "last.safetensors",
        expected_sha256=last["sha256"],
    )
    assert hashlib.sha256(path.read_bytes()).hexdigest() == last["sha256"]

    tampered = tmp_path / "tampered.safetensors"
    with pytest.raises(GroklabError) as caught:
        groklab.download_checkpoint(
            grokked_run["id"], last["step"], tampered, expected_sha256="0" * 64
        )
    assert "sha256" in caught.value.detail and "does not match" in caught.value.detail
    assert not tampered.exists()


def test_analysis_with_thresholds(groklab, grokked_run):
    summary = groklab.analysis(grokked_run["id"])["summary"]
    assert summary["phase"] == "grokking"
    assert summary["generalization_step"] == grokked_run["summary"]["generalization_step"]
    loose = groklab.analysis(grokked_run["id"], acc_threshold=0.5)["summary"]
    assert loose["generalization_step"] < summary["generalization_step"]


def test_errors_carry_the_status_and_the_servers_detail(groklab, grokked_run):
    unknown = str(uuid.uuid4())
    with pytest.raises(GroklabError) as caught:
        groklab.get(unknown)
    assert caught.value.status == 404 and unknown in caught.value.detail

    with pytest.raises(GroklabError) as caught:
        groklab.submit(preset="ci-small", training={"steps": 0})
    assert caught.value.status == 422
    assert ["body", "training", "steps"] in [e["loc"] for e in caught.value.detail]
    assert "body.training.steps: " in str(caught.value)

    with pytest.raises(GroklabError) as caught:
        groklab.cancel(grokked_run["id"])
    assert caught.value.status == 409 and "already finished" in caught.value.detail


def test_sweep_phase_diagram_and_members(groklab):
    base = {k: v for k, v in tiny_job("s", steps=40).items() if k != "name"}
    created = groklab.submit_sweep(
        {"name": "client-sweep", "base": base, "grid": {"training.seed": [0, 1]}}
    )
    deadline = time.monotonic() + 180
    while (sweep := groklab.sweep(created["id"]))["status"] not in FINISHED:
        assert time.monotonic() < deadline, sweep
        time.sleep(0.5)
    assert sweep["status"] == "succeeded" and sweep["counts"]["succeeded"] == 2
    assert created["id"] in [s["id"] for s in groklab.sweeps(limit=1)]

    diagram = groklab.phase_diagram(created["id"], "training.seed")
    assert [(c["x"], c["n"]) for c in diagram["cells"]] == [(0, 1), (1, 1)]
    members = list(csv.DictReader(io.StringIO(groklab.sweep_members(created["id"], format="csv"))))
    assert [m["experiment_id"] for m in members] == created["experiment_ids"]
    assert {m["status"] for m in members} == {"succeeded"}


def test_cli_submit_preset_cancel_list_and_watch_a_cancelled_job(stack, groklab):
    submitted = cli(stack, "submit", "--preset", "ci-small", "--name", "cli-preset")
    assert submitted.returncode == 0, submitted.stderr
    experiment_id = submitted.stdout.split()[1]
    job = groklab.get(experiment_id)
    assert job["name"] == "cli-preset" and job["spec"]["preset"] == "ci-small"

    cancelled = cli(stack, "cancel", experiment_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert experiment_id in cancelled.stdout and "cancel" in cancelled.stdout
    assert groklab.wait(experiment_id, timeout=60, progress=False)["status"] == "cancelled"

    listed = cli(stack, "list", "--status", "cancelled", "--name", "cli-preset")
    assert listed.returncode == 0, listed.stderr
    assert experiment_id in listed.stdout and "cancelled" in listed.stdout

    again = cli(stack, "cancel", experiment_id)
    assert again.returncode == 1 and "error 409" in again.stderr

    watched = cli(stack, "watch", experiment_id, timeout=60)
    assert watched.returncode == 1 and "cancelled" in watched.stdout

    neither = cli(stack, "submit")
    assert neither.returncode == 2 and "--preset" in neither.stderr


def test_cli_metrics_as_csv_and_json(stack, grokked_run):
    as_csv = cli(stack, "metrics", grokked_run["id"], "--names", "train_acc,val_acc",
                 "--format", "csv", "--max-points", "10")
    assert as_csv.returncode == 0, as_csv.stderr
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert {r["name"] for r in rows} == {"train_acc", "val_acc"}
    assert sum(r["name"] == "val_acc" for r in rows) <= 10

    as_json = cli(stack, "metrics", grokked_run["id"], "--names", "val_acc", "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    series = json.loads(as_json.stdout)["series"]
    assert [s["name"] for s in series] == ["val_acc"] and series[0]["values"][-1] > 0.99

    missing = cli(stack, "metrics", str(uuid.uuid4()))
    assert missing.returncode == 1 and "error 404" in missing.stderr
