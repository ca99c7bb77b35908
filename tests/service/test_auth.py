"""Bearer tokens, scopes and tenancy, over every /api/v1 route of the app."""
from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import inspect, select, text
from typer.testing import CliRunner

from service import store
from service.access import auth
from service.api.deps import get_principal
from service.app import create_app
from service.contract.models import ApiToken
from service.contract.settings import Settings, get_settings
from service.infra.db import make_engine, migrate
from tests.service.blobs import checkpoint_bytes
from tests.service.specs import API, TINY

CHECKPOINT_STEP = 30
SWEEPS = "/api/v1/sweeps"
SWEEP = {"name": "seeds", "base": {k: v for k, v in TINY.items() if k != "name"},
         "grid": {"training.seed": [0, 1]}}
OPEN_PATHS = {"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json",
              "/", "/ui/{path:path}",  # the dashboard page and its static files (no data)
              "/metrics"}  # Prometheus: counts and timings, no tenant data


REPRODUCTIONS = "/api/v1/reproductions"
REPRODUCTION = "prieto2025-stablemax"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass(frozen=True)
class Route:
    scope: str  # the least scope that may call it
    per_experiment: bool  # {experiment_id} in the path: another owner's is 404
    body: dict | None = None
    per_sweep: bool = False  # {sweep_id} in the path: another owner's is 404
    params: dict | None = None
    model_checkpoint: bool = False  # it reads the model in the checkpoint, not only its bytes
    stream: bool = False  # an event stream: called on finished (cancelled) jobs, so it ends
    paused: bool = False  # it acts on a paused job or sweep (resume): called on paused ones
    run: bool = False  # its {sweep_id} is a reproduction's run (POST /reproductions/{name})


# Every /api/v1 route, with what it needs. A new route fails test_every_api_route_is_in_the_matrix
# until it has a row here.
ROUTES: dict[tuple[str, str], Route] = {
    ("POST", API): Route("write", per_experiment=False, body=TINY),
    ("GET", API): Route("read", per_experiment=False),
    ("GET", API + "/{experiment_id}"): Route("read", per_experiment=True),
    ("POST", API + "/{experiment_id}/cancel"): Route("write", per_experiment=True),
    ("POST", API + "/{experiment_id}/pause"): Route("write", per_experiment=True),
    ("POST", API + "/{experiment_id}/resume"): Route("write", per_experiment=True, paused=True),
    ("GET", API + "/{experiment_id}/metrics"): Route("read", per_experiment=True),
    ("GET", API + "/{experiment_id}/checkpoints"): Route("read", per_experiment=True),
    ("GET", API + "/{experiment_id}/checkpoints/{step}"): Route("read", per_experiment=True),
    ("GET", API + "/{experiment_id}/analysis"): Route("read", per_experiment=True),
    ("GET", API + "/{experiment_id}/checkpoints/{step}/analysis"): Route("read", per_experiment=True),
    ("GET", API + "/{experiment_id}/checkpoints/{step}/export"): Route(
        "read", per_experiment=True, model_checkpoint=True),
    ("GET", API + "/{experiment_id}/progress-measures"): Route("read", per_experiment=True),
    ("GET", API + "/{experiment_id}/checkpoints/{step}/embedding"): Route("read", per_experiment=True),
    ("GET", API + "/{experiment_id}/checkpoints/{step}/neurons"): Route("read", per_experiment=True),
    ("GET", API + "/{experiment_id}/checkpoints/{step}/waves"): Route("read", per_experiment=True),
    ("GET", API + "/{experiment_id}/checkpoints/{step}/attention"): Route("read", per_experiment=True),
    ("GET", API + "/{experiment_id}/checkpoints/{step}/llc"): Route("read", per_experiment=True),
    ("GET", API + "/{experiment_id}/llc"): Route("read", per_experiment=True),
    ("GET", API + "/{experiment_id}/events"): Route("read", per_experiment=True, stream=True),
    ("POST", SWEEPS): Route("write", per_experiment=False, body=SWEEP),
    ("GET", SWEEPS): Route("read", per_experiment=False),
    ("GET", SWEEPS + "/{sweep_id}"): Route("read", per_experiment=False, per_sweep=True),
    ("POST", SWEEPS + "/{sweep_id}/cancel"): Route("write", per_experiment=False, per_sweep=True),
    ("POST", SWEEPS + "/{sweep_id}/pause"): Route("write", per_experiment=False, per_sweep=True),
    ("POST", SWEEPS + "/{sweep_id}/resume"): Route(
        "write", per_experiment=False, per_sweep=True, paused=True
    ),
    ("GET", SWEEPS + "/{sweep_id}/phase-diagram"): Route(
        "read", per_experiment=False, per_sweep=True, params={"x": "training.seed"}
    ),
    ("GET", SWEEPS + "/{sweep_id}/members"): Route("read", per_experiment=False, per_sweep=True),
    ("GET", "/api/v1/whoami"): Route("read", per_experiment=False),
    ("GET", REPRODUCTIONS): Route("read", per_experiment=False),
    ("POST", REPRODUCTIONS + "/{name}"): Route("write", per_experiment=False, body={"scale": "ci"}),
    ("GET", REPRODUCTIONS + "/{name}/runs/{sweep_id}"): Route(
        "read", per_experiment=False, per_sweep=True, run=True),
    ("GET", SWEEPS + "/{sweep_id}/report"): Route(
        "read", per_experiment=False, per_sweep=True, run=True),
}


def all_routes(app) -> list:
    """Every route the app serves, those of included routers too (with their full paths)."""
    return list(iter_route_contexts(app.routes))


def api_routes(app) -> set[tuple[str, str]]:
    return {
        (method, route.path)
        for route in all_routes(app)
        if route.path.startswith("/api/")
        for method in route.methods
    }


def test_every_api_route_is_in_the_matrix(api_app):
    routes = api_routes(api_app)
    assert routes - set(ROUTES) == set(), "add these routes to ROUTES in test_auth.py"
    assert set(ROUTES) - routes == set(), "these ROUTES rows name routes that no longer exist"


def test_every_route_outside_the_api_is_meant_to_be_open(api_app, client):
    other = {r.path for r in all_routes(api_app) if not r.path.startswith("/api/")}
    assert other == OPEN_PATHS
    anonymous = TestClient(api_app)
    for path in OPEN_PATHS - {"/docs/oauth2-redirect", "/ui/{path:path}"}:
        assert anonymous.get(path).status_code == 200, path
    assert anonymous.get("/ui/app.js").status_code == 200


def _depends_on(dependant, call) -> bool:
    return any(d.call is call or _depends_on(d, call) for d in dependant.dependencies)


def test_every_api_route_authenticates(api_app):
    for route in all_routes(api_app):
        if route.path.startswith("/api/"):
            assert isinstance(route.original_route, APIRoute), route.path
            assert _depends_on(route.dependant, get_principal), route.path


@pytest.fixture
def world(client, make_token, api_sessions):
    """Tokens of alice (the client's owner), bob and an admin; one experiment of alice's with
    a checkpoint, and a revoked token of alice's."""
    tokens = {
        "alice_read": make_token("alice", "read"),
        "alice_write": make_token("alice", "write"),
        "bob_read": make_token("bob", "read"),
        "bob_write": make_token("bob", "write"),
        "admin": make_token("root", "admin"),
    }
    revoked = make_token("alice", "admin")
    with api_sessions() as s:
        (row,) = [t for t in store.list_tokens(s) if t.token_hash == auth.hash_token(revoked)]
        auth.revoke_token(s, row.id)
    tokens["revoked"] = revoked
    return tokens


def new_experiment(client, token: str) -> str:
    r = client.post(API, json=TINY, headers=bearer(token))
    assert r.status_code == 201, r.text
    return r.json()["id"]


def model_checkpoint(client, experiment_id: str) -> bytes:
    """A real checkpoint of the experiment's model, as a worker would store it."""
    from service.contract.spec import ExperimentSpec
    from worker.engine.train import Trainer

    with client.app.state.sessions() as s:
        spec = ExperimentSpec.model_validate(store.get_experiment(s, experiment_id).spec)
    return Trainer(spec).to_checkpoint()


def call(client, method: str, path: str, route: Route, target: str, headers=None):
    """The route called on `target`: an experiment id, or a sweep id for a per-sweep route."""
    url = path.format(experiment_id=target, sweep_id=target, step=CHECKPOINT_STEP,
                      name=REPRODUCTION)
    anonymous = TestClient(client.app, raise_server_exceptions=False)  # no default header
    return anonymous.request(method, url, json=route.body, params=route.params,
                             headers=headers or {})


@pytest.mark.parametrize(("method", "path"), list(ROUTES), ids=[f"{m} {p}" for m, p in ROUTES])
def test_auth_matrix(client, world, api_sessions, method, path):
    route = ROUTES[(method, path)]
    experiments = []
    for _ in range(2):  # one for alice's own call, one for the admin's
        experiment_id = new_experiment(client, world["alice_write"])
        blob = model_checkpoint(client, experiment_id) if route.model_checkpoint else checkpoint_bytes()
        with api_sessions() as s:
            store.add_checkpoint(s, experiment_id, CHECKPOINT_STEP, blob, {})
        experiments.append(experiment_id)
        if route.stream:
            client.post(f"{API}/{experiment_id}/cancel", headers=bearer(world["alice_write"]))
    mine, for_admin = experiments
    if route.run:  # a reproduction's run: one of alice's runs of it
        mine, for_admin = (
            client.post(f"{REPRODUCTIONS}/{REPRODUCTION}", json={"scale": "ci"},
                        headers=bearer(world["alice_write"])).json()["sweep"]["id"]
            for _ in range(2)
        )
    elif route.per_sweep:  # the sweep routes act on one of alice's sweeps instead
        mine, for_admin = (
            client.post(SWEEPS, json=SWEEP, headers=bearer(world["alice_write"])).json()["id"]
            for _ in range(2)
        )
    if route.paused:
        for target in (mine, for_admin):
            pause = f"{SWEEPS if route.per_sweep else API}/{target}/pause"
            assert client.post(pause, headers=bearer(world["alice_write"])).status_code == 200
    # No token, a made-up one, a revoked one: 401 with a Bearer challenge.
    for headers in (
        {},
        bearer("glk_" + "x" * 43),
        bearer(world["revoked"]),
        {"Authorization": "Basic YWxpY2U6c2VjcmV0"},
    ):
        r = call(client, method, path, route, mine, headers)
        assert r.status_code == 401, (headers, r.status_code, r.text)
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert "token" in r.json()["detail"]

    if route.scope == "write":
        for token in ("alice_read", "bob_read"):  # the scope is checked before the owner
            r = call(client, method, path, route, mine, bearer(world[token]))
            assert r.status_code == 403, (token, r.text)
            assert "'write'" in r.json()["detail"] and "'read'" in r.json()["detail"]

    if route.per_experiment:
        # Another owner's experiment looks exactly like a missing one.
        r = call(client, method, path, route, mine, bearer(world[f"bob_{route.scope}"]))
        missing = call(client, method, path, route, str(uuid.uuid4()), bearer(world["bob_write"]))
        assert r.status_code == missing.status_code == 404, r.text
        assert r.json()["detail"] == f"experiment {mine} not found"
        assert missing.json()["detail"].startswith("experiment ")

    if route.per_sweep:
        r = call(client, method, path, route, mine, bearer(world[f"bob_{route.scope}"]))
        missing = call(client, method, path, route, str(uuid.uuid4()), bearer(world["bob_write"]))
        assert r.status_code == missing.status_code == 404, r.text
        assert r.json()["detail"] == f"sweep {mine} not found"

    ok = call(client, method, path, route, mine, bearer(world[f"alice_{route.scope}"]))
    assert 200 <= ok.status_code < 300, ok.text
    ok = call(client, method, path, route, for_admin, bearer(world["admin"]))
    assert 200 <= ok.status_code < 300, ok.text


def test_experiments_belong_to_the_token_owner_and_lists_show_only_your_own(client, world):
    alices = [new_experiment(client, world["alice_write"]) for _ in range(2)]
    bobs = new_experiment(client, world["bob_write"])

    def listed(token: str, **params) -> list[str]:
        r = client.get(API, params=params, headers=bearer(token))
        assert r.status_code == 200, r.text
        return [job["id"] for job in r.json()["items"]]

    assert client.get(f"{API}/{bobs}", headers=bearer(world["admin"])).json()["owner"] == "bob"
    assert listed(world["alice_read"]) == alices[::-1]
    assert listed(world["bob_read"]) == [bobs]
    assert listed(world["admin"]) == [bobs, *alices[::-1]]
    assert listed(world["admin"], owner="bob") == [bobs]
    assert listed(world["alice_read"], owner="alice") == alices[::-1]
    r = client.get(API, params={"owner": "bob"}, headers=bearer(world["alice_read"]))
    assert r.status_code == 422 and "only admin tokens" in r.json()["detail"][0]["msg"]
    # Cursor pages stay within the owner's experiments.
    first = client.get(API, params={"limit": 1}, headers=bearer(world["alice_read"])).json()
    second = client.get(
        API, params={"limit": 1, "cursor": first["next_cursor"]}, headers=bearer(world["alice_read"])
    ).json()
    assert [j["id"] for j in first["items"] + second["items"]] == alices[::-1]
    assert second["next_cursor"] is None


def test_a_revoked_token_stops_working_at_once(client, make_token, api_sessions):
    token = make_token("carol", "read")
    assert client.get(API, headers=bearer(token)).status_code == 200
    with api_sessions() as s:
        (row,) = [t for t in store.list_tokens(s) if t.owner == "carol"]
        revoked = auth.revoke_token(s, row.id[:6])
    assert revoked.revoked_at is not None
    r = client.get(API, headers=bearer(token))
    assert r.status_code == 401 and r.headers["www-authenticate"] == 'Bearer error="invalid_token"'


def test_openapi_shows_the_bearer_scheme_on_every_api_route(client):
    spec = client.get("/openapi.json").json()
    (scheme,) = spec["components"]["securitySchemes"].values()
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert "groklab token create" in scheme["description"]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            secured = operation.get("security") == [{"HTTPBearer": []}]
            assert secured == path.startswith("/api/"), (method, path)


def all_text_in_database(url: str) -> str:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            rows = []
            for table in inspect(connection).get_table_names():
                rows += connection.execute(text(f'SELECT * FROM "{table}"')).all()
        return repr(rows)
    finally:
        engine.dispose()


def test_tokens_are_stored_only_as_hashes(client, make_token, api_settings):
    token = make_token("dave", "write")
    assert client.get(API, headers=bearer(token)).status_code == 200
    digest = hashlib.sha256(token.encode()).hexdigest()
    secret = token.removeprefix(auth.TOKEN_PREFIX)
    assert len(secret) >= 43  # 256 random bits

    dumped = all_text_in_database(api_settings.resolved_database_url)
    assert digest in dumped and secret not in dumped and secret[:16] not in dumped
    # Nor anywhere in the SQLite files, write-ahead log included.
    files = [p for p in api_settings.data_dir.iterdir() if p.name.startswith("groklab.db")]
    raw = b"".join(p.read_bytes() for p in files)
    assert digest.encode() in raw and secret[:16].encode() not in raw


def test_cli_token_create_list_and_revoke(tmp_path, monkeypatch):
    from service.cli import app

    monkeypatch.setenv("GROKLAB_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("GROKLAB_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        r = runner.invoke(app, ["token", "create", "--owner", "erin", "--scope", "read"])
        assert r.exit_code == 1 and "groklab migrate" in r.output  # no database yet

        migrate(Settings().resolved_database_url)
        r = runner.invoke(app, ["token", "create", "--owner", "erin", "--scope", "read"])
        assert r.exit_code == 0, r.output
        token = r.stdout.strip()
        assert token.startswith(auth.TOKEN_PREFIX) and "\n" not in token

        r = runner.invoke(app, ["token", "create", "--owner", "erin", "--scope", "root"])
        assert r.exit_code == 2 and "read, write, admin" in r.output
        r = runner.invoke(app, ["token", "create", "--owner", "has space", "--scope", "read"])
        assert r.exit_code == 2 and "owner must be" in r.output

        # The token works against an API on the same data dir, with its scope.
        with TestClient(create_app(Settings(reaper_interval_s=0))) as api:
            assert api.get(API, headers=bearer(token)).status_code == 200
            assert api.post(API, json=TINY, headers=bearer(token)).status_code == 403

        r = runner.invoke(app, ["token", "list"])
        assert r.exit_code == 0
        (line,) = [line for line in r.stdout.splitlines() if "erin" in line]
        assert line.split()[1:3] == ["erin", "read"] and token not in r.stdout
        id_prefix = line.split()[0]
        r = runner.invoke(app, ["token", "revoke", id_prefix])
        assert r.exit_code == 0 and "revoked" in r.stdout
        assert "erin" not in runner.invoke(app, ["token", "list"]).stdout
        assert "erin" in runner.invoke(app, ["token", "list", "--all"]).stdout
        r = runner.invoke(app, ["token", "revoke", "ffffffff"])
        assert r.exit_code == 1 and "no token" in r.output
        with TestClient(create_app(Settings(reaper_interval_s=0))) as api:
            assert api.get(API, headers=bearer(token)).status_code == 401
    finally:
        get_settings.cache_clear()


def test_up_creates_a_local_admin_token_on_the_first_start_only(tmp_path, monkeypatch):
    from service.cli import _ensure_local_admin_token

    env = {"GROKLAB_DATA_DIR": str(tmp_path)}
    monkeypatch.delenv("GROKLAB_DATABASE_URL", raising=False)
    url = Settings(data_dir=tmp_path).resolved_database_url
    migrate(url)
    token = _ensure_local_admin_token(env)
    assert token is not None and _ensure_local_admin_token(env) is None
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(ApiToken.owner, ApiToken.scope)).all()
    finally:
        engine.dispose()
    assert rows == [("local", "admin")]
    with TestClient(create_app(Settings(data_dir=tmp_path, reaper_interval_s=0))) as api:
        # Only an admin token may list another owner's experiments.
        assert api.get(API, params={"owner": "bob"}, headers=bearer(token)).status_code == 200


def test_owner_and_scope_are_validated():
    for owner in ("", "a b", "-leading", "x" * 201, "a\x00b"):
        with pytest.raises(ValueError, match="owner must be"):
            auth.check_owner(owner)
    with pytest.raises(ValueError, match="read, write, admin"):
        auth.check_scope("superuser")
    assert auth.scope_includes("admin", "write") and not auth.scope_includes("read", "write")
