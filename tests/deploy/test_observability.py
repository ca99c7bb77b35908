"""GET /metrics: what Prometheus scrapes and the Grafana dashboard plots (deploy/observability)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service import store
from service.contract.models import Experiment
from tests.service.conftest import (  # noqa: F401  the API fixtures, shared with tests/service
    api_app,
    api_sessions,
    api_settings,
    celery_app,
    client,
    enqueued,
    make_token,
)

DASHBOARD = (
    Path(__file__).resolve().parents[2] / "deploy" / "observability" / "grafana" / "dashboards"
    / "groklab.json"
)
LATENCY = "groklab_http_request_duration_seconds"


def scrape(client: TestClient) -> tuple[str, dict[tuple[str, frozenset], float]]:
    """GET /metrics with no token: the text, and every sample by (name, labels)."""
    response = TestClient(client.app).get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    return response.text, samples


def submit(client: TestClient, name: str) -> str:
    body = {"name": name, "preset": "ci-small", "training": {"steps": 50}}
    response = client.post("/api/v1/experiments", json=body)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def start_running(api_sessions, experiment_id: str, worker: str, steps_per_s: float) -> None:
    """What a worker's claim and first progress report leave in the database."""
    with api_sessions() as session:
        experiment = session.get(Experiment, experiment_id)
        experiment.status, experiment.worker, experiment.steps_per_s = "running", worker, steps_per_s
        session.commit()


def test_every_metric_the_dashboard_plots_is_exported(client, api_sessions):
    running = submit(client, "dashboard-check")
    start_running(api_sessions, running, "gpu-host-1@node", 12.5)
    client.get(f"/api/v1/experiments/{running}")  # one request for the latency histogram
    text, samples = scrape(client)
    exported = {name for name, _ in samples}
    exported |= {f.name for f in text_string_to_metric_families(text)}

    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"] if "expr" in t]
    used = {name for expr in expressions for name in re.findall(r"\bgroklab_[a-z_]+", expr)}
    assert len(used) >= 6, used  # queues, statuses, jobs, steps/s, ingest, latency
    assert used <= exported, f"the dashboard plots metrics /metrics lacks: {used - exported}"


def test_metrics_count_the_stack_and_name_no_tenant(client, api_sessions):
    queued = submit(client, "alice-secret-project")
    running = submit(client, "alice-other-project")
    start_running(api_sessions, running, "gpu-host-1@node", 42.0)
    points = [{"step": s, "member": 0, "name": n, "value": 0.5}
              for s in range(0, 50, 10) for n in ("train_acc", "val_acc", "train_loss")]
    with api_sessions() as session:
        assert store.ingest_metrics(session, running, points) == 15
        assert store.ingest_metrics(session, running, points) == 0  # a redelivered batch

    text, samples = scrape(client)
    assert samples[("groklab_experiments", frozenset({("status", "queued")}))] == 1
    assert samples[("groklab_experiments", frozenset({("status", "running")}))] == 1
    assert samples[("groklab_experiments", frozenset({("status", "succeeded")}))] == 0
    assert samples[("groklab_running_jobs", frozenset())] == 1
    assert samples[("groklab_worker_steps_per_second",
                    frozenset({("worker", "gpu-host-1@node")}))] == 42.0
    assert samples[("groklab_metric_rows_ingested_total", frozenset())] == 15
    # Both submissions' messages wait on the test's filesystem broker, in the cpu queue.
    assert samples[("groklab_queue_depth", frozenset({("queue", "cpu")}))] == 2
    assert samples[("groklab_queue_depth", frozenset({("queue", "gpu")}))] == 0

    for tenant_data in ("alice", "secret-project", "other-project", queued, running):
        assert tenant_data not in text


def test_latency_is_labelled_by_route_template_never_by_id(client):
    experiment_id = submit(client, "latency-check")
    by_route = ("route", "/api/v1/experiments/{experiment_id}")
    ok = frozenset({by_route, ("method", "GET"), ("status", "200")})
    _, before = scrape(client)  # the histogram is the process's: count what this test adds
    for _ in range(3):
        assert client.get(f"/api/v1/experiments/{experiment_id}").status_code == 200
    assert client.get("/api/v1/experiments/not-a-uuid-at-all").status_code in (404, 422)
    assert client.get(f"/no/such/page/{experiment_id}").status_code == 404

    text, after = scrape(client)
    assert after[(f"{LATENCY}_count", ok)] - before.get((f"{LATENCY}_count", ok), 0) == 3
    routes = {dict(labels)["route"] for name, labels in after if name == f"{LATENCY}_count"}
    assert "unmatched" in routes  # the unknown page, whatever its path
    assert "/api/v1/experiments" in routes  # the submission (POST)
    assert experiment_id not in text and "not-a-uuid" not in text and "/no/such" not in text


MULTIPROCESS_SCRIPT = """
import os, sys
from fastapi.testclient import TestClient
from service.app import create_app
from service.infra.db import migrate
from service.contract.settings import Settings

settings = Settings(data_dir=sys.argv[1], reaper_interval_s=0)
migrate(settings.resolved_database_url)
app = create_app(settings)
child = os.fork()
if child == 0:  # a second API process: its requests must show in the first one's /metrics
    TestClient(app).get("/healthz"); TestClient(app).get("/healthz")
    os._exit(0)
os.waitpid(child, 0)
TestClient(app).get("/healthz")
print(TestClient(app).get("/metrics").text)
"""


def test_several_api_processes_report_one_merged_histogram(tmp_path):
    """PROMETHEUS_MULTIPROC_DIR set (several uvicorn workers): each process's requests count."""
    shared = tmp_path / "prometheus"
    shared.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(shared)}
    out = subprocess.run(
        [sys.executable, "-c", MULTIPROCESS_SCRIPT, str(tmp_path)], env=env, check=True,
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2], timeout=120,
    ).stdout
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for family in text_string_to_metric_families(out) for s in family.samples}
    healthz = frozenset({("route", "/healthz"), ("method", "GET"), ("status", "200")})
    assert samples[(f"{LATENCY}_count", healthz)] == 3
    assert ("groklab_running_jobs", frozenset()) in samples


def test_a_metrics_token_closes_metrics_to_anyone_without_it(tmp_path):
    from service.app import create_app
    from service.contract.settings import Settings
    from service.infra.db import migrate

    settings = Settings(data_dir=tmp_path, metrics_token="scrape-secret")
    migrate(settings.resolved_database_url)
    anonymous = TestClient(create_app(settings))
    refused = anonymous.get("/metrics")
    assert refused.status_code == 401 and "GROKLAB_METRICS_TOKEN" in refused.json()["detail"]
    assert refused.headers["www-authenticate"] == "Bearer"
    assert anonymous.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    scraped = anonymous.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
    assert scraped.status_code == 200 and LATENCY in scraped.text
    # an empty setting (compose's ${GROKLAB_METRICS_TOKEN:-}) leaves it open
    assert Settings(metrics_token="").metrics_token is None
