"""Docker cannot run here, so the compose file is checked against the settings it feeds."""
from __future__ import annotations

from pathlib import Path

import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def load_compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_the_production_services_with_healthchecks():
    services = load_compose()["services"]
    assert set(services) == {"postgres", "redis", "migrate", "api", "worker"}
    for name in ("postgres", "redis", "api"):
        assert "healthcheck" in services[name], name
    assert services["migrate"]["restart"] == "no"
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["worker"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_compose_environment_names_only_real_settings():
    services = load_compose()["services"]
    fields = {f"GROKLAB_{name.upper()}" for name in Settings.model_fields}
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


def test_api_image_has_no_torch():
    dockerfile = (ROOT / "Dockerfile").read_text()
    api_stage = dockerfile.split("FROM api AS worker")[0]
    instructions = [line for line in api_stage.splitlines() if not line.startswith("#")]
    assert not any("torch" in line for line in instructions)
    assert load_compose()["services"]["api"]["build"]["target"] == "api"
    assert ".[worker]" in dockerfile.split("FROM api AS worker")[1]
