"""Docker cannot run here, so the compose file is checked against the settings it feeds."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from service.contract.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def load_compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_the_production_services_with_healthchecks():
    services = load_compose()["services"]
    core = {name for name, service in services.items() if "profiles" not in service}
    assert core == {"postgres", "redis", "migrate", "api", "worker"}
    for name in ("postgres", "redis", "api"):
        assert "healthcheck" in services[name], name
    assert services["migrate"]["restart"] == "no"
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["worker"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_compose_environment_names_only_real_settings():
    services = load_compose()["services"]
    fields = {f"GROKLAB_{name.upper()}" for name in Settings.model_fields}
    # prometheus-client's own variable: the folder where the API processes share their samples.
    fields.add("PROMETHEUS_MULTIPROC_DIR")
    for name in ("migrate", "api", "worker"):
        env = services[name]["environment"]
        assert {"GROKLAB_DATABASE_URL", "GROKLAB_BROKER_URL"} <= set(env)
        unknown = set(env) - fields
        assert not unknown, f"{name} sets unknown settings {unknown}"
        assert env["GROKLAB_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["GROKLAB_BROKER_URL"].startswith("redis://redis:")


def test_worker_reserves_a_gpu_and_scales_without_fixed_names_or_ports():
    worker = load_compose()["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    # --scale worker=N needs no container_name and no host ports on the worker.
    assert "container_name" not in worker and "ports" not in worker


def test_the_api_packs_sweeps_for_the_workers_it_feeds():
    """The API sizes packs by the worker plan: it reads the same plan settings as the worker,
    and the GPUs it assumes are those the worker reserves."""
    services = load_compose()["services"]
    plan = ("GROKLAB_WORKER_PROCESSES", "GROKLAB_TORCH_THREADS", "GROKLAB_WORKER_GPUS")
    api, worker = services["api"]["environment"], services["worker"]["environment"]
    assert {name: api[name] for name in plan} == {name: worker[name] for name in plan}
    reserved = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["count"]
    assert worker["GROKLAB_WORKER_GPUS"] == f"${{GROKLAB_WORKER_GPUS:-{reserved}}}"
    # unset in the shell, the processes and threads arrive empty: worked out on the host
    assert Settings(worker_processes="", torch_threads="").worker_processes is None


def test_api_image_has_no_torch():
    dockerfile = (ROOT / "Dockerfile").read_text()
    api_stage = dockerfile.split("FROM api AS worker")[0]
    instructions = [line for line in api_stage.splitlines() if not line.startswith("#")]
    assert not any("torch" in line for line in instructions)
    assert load_compose()["services"]["api"]["build"]["target"] == "api"
    worker_stage = dockerfile.split("FROM api AS worker")[1]
    assert ".[worker]" in worker_stage
    assert ".[llc]" in worker_stage  # the worker image estimates the LLC (devinterp)


OBSERVABILITY = ROOT / "deploy" / "observability"


def test_observability_profile_wires_prometheus_to_the_api_and_grafana_to_prometheus():
    services = load_compose()["services"]
    observability = {n for n, s in services.items() if "observability" in s.get("profiles", [])}
    assert observability == {"prometheus", "grafana"}

    prometheus, grafana = services["prometheus"], services["grafana"]
    assert prometheus["depends_on"]["api"]["condition"] == "service_healthy"
    assert "prometheus" in grafana["depends_on"]
    assert "yesoreyeram-infinity-datasource" in grafana["environment"]["GF_INSTALL_PLUGINS"]
    # Every bind-mounted file or folder is in the repository.
    for service in (prometheus, grafana):
        for volume in service["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source

    config = yaml.safe_load((OBSERVABILITY / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["api:8000"]  # the api service's port


def test_observability_listens_on_loopback_with_no_default_password_and_a_metrics_token():
    services = load_compose()["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    for service in (prometheus, grafana):
        assert all(port.startswith("127.0.0.1:") for port in service["ports"]), service["ports"]
    # Grafana's admin password comes from the environment, with no default, and the container
    # refuses to start without one.
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:-}"
    assert "admin" not in grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"].split(":-")[1]
    assert 'test -n "$$GF_SECURITY_ADMIN_PASSWORD"' in grafana["entrypoint"][-1]
    assert grafana["entrypoint"][-1].endswith("exec /run.sh")
    # The API's metrics token reaches Prometheus's scrape as a credentials file.
    token = "${GROKLAB_METRICS_TOKEN:-}"
    assert services["api"]["environment"]["GROKLAB_METRICS_TOKEN"] == token
    assert prometheus["environment"]["GROKLAB_METRICS_TOKEN"] == token
    [job] = yaml.safe_load((OBSERVABILITY / "prometheus.yml").read_text())["scrape_configs"]
    credentials = job["authorization"]["credentials_file"]
    assert job["authorization"]["type"] == "Bearer"
    assert f"> {credentials}" in prometheus["entrypoint"][-1]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["entrypoint"][-1]


def test_grafana_provisioning_names_datasources_that_the_dashboard_uses():
    provisioning = OBSERVABILITY / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "datasources.yml").read_text())
    by_uid = {d["uid"]: d for d in datasources["datasources"]}
    assert by_uid["groklab-prometheus"]["url"] == "http://prometheus:9090"
    infinity = by_uid["groklab-api"]
    assert infinity["type"] == "yesoreyeram-infinity-datasource"
    assert infinity["url"] == "http://api:8000"
    # The read token is a secret from the environment, never written in the repository.
    assert infinity["jsonData"]["httpHeaderName1"] == "Authorization"
    assert infinity["secureJsonData"]["httpHeaderValue1"] == "Bearer $GRAFANA_GROKLAB_READ_TOKEN"
    grafana_env = load_compose()["services"]["grafana"]["environment"]
    assert "GRAFANA_GROKLAB_READ_TOKEN" in grafana_env

    providers = yaml.safe_load((provisioning / "dashboards" / "dashboards.yml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboard = json.loads((OBSERVABILITY / "grafana" / "dashboards" / "groklab.json").read_text())
    used = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert used == set(by_uid)
    [accuracy] = [p for p in dashboard["panels"] if p["datasource"]["uid"] == "groklab-api"]
    [target] = accuracy["targets"]
    assert target["url"] == "/api/v1/experiments/${experiment}/metrics"
    params = {p["key"]: p["value"] for p in target["url_options"]["params"]}
    assert params["names"] == "train_acc,val_acc"
    assert "experiment" in {v["name"] for v in dashboard["templating"]["list"]}


def test_several_api_processes_share_a_fresh_metrics_folder():
    api = load_compose()["services"]["api"]
    folder = api["environment"]["PROMETHEUS_MULTIPROC_DIR"]
    assert int(api["environment"]["GROKLAB_API_WORKERS"]) > 1
    assert folder in api["tmpfs"]  # empty at every start, as prometheus-client requires
