"""The `groklab` command line: run locally, run the service, talk to it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(help="groklab: train and analyse grokking experiments.", no_args_is_help=True)

DEFAULT_URL = "http://127.0.0.1:8000"
FINISHED = ("succeeded", "failed", "cancelled")


def _load_spec_file(path: Path):
    from pydantic import ValidationError

    from service.spec import load_spec

    try:
        return load_spec(path)
    except ValidationError as exc:
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            typer.secho(f"{path}: {loc}: {err['msg']}", fg="red", err=True)
        raise typer.Exit(2)


@app.command()
def train(
    spec: Annotated[Path, typer.Argument(help="Spec file (JSON or YAML).", exists=True, dir_okay=False)],
    out: Annotated[Path, typer.Option(help="Folder for metrics and checkpoints.")] = Path("runs/local"),
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train a spec on this machine, no server needed."""
    from worker.engine.local import train_local

    train_local(_load_spec_file(spec), out, progress=progress)


@app.command()
def migrate() -> None:
    """Bring the database schema up to date (alembic upgrade head)."""
    from service.db import migrate as run_migrations
    from service.settings import get_settings

    url = get_settings().resolved_database_url
    run_migrations(url)
    typer.echo(f"database at head: {url}")


@app.command()
def api(
    host: Annotated[Optional[str], typer.Option(help="Bind address.")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port.")] = None,
) -> None:
    """Run the REST API."""
    import uvicorn

    from service.settings import get_settings

    settings = get_settings()
    uvicorn.run(
        "service.app:create_app", factory=True,
        host=host or settings.host, port=port or settings.port, log_level="info",
    )


@app.command()
def worker(
    queues: Annotated[Optional[str], typer.Option(help="Comma-separated queues, e.g. gpu or cpu.")] = None,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "info",
    name: Annotated[Optional[str], typer.Option(help="Worker node name.")] = None,
) -> None:
    """Run a Celery worker that trains queued experiments (one job at a time)."""
    import worker.tasks  # noqa: F401  registers the task
    from service.settings import get_settings
    from worker.celery_app import celery_app

    settings = get_settings()
    argv = [
        "worker", "--queues", queues or settings.worker_queues, "--concurrency", "1",
        "--loglevel", loglevel, "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]
    if name:
        argv += ["--hostname", name]
    celery_app.worker_main(argv)


@app.command()
def up(
    host: Annotated[str, typer.Option(help="API bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port.")] = 8000,
    data_dir: Annotated[Path, typer.Option(help="Folder for groklab.db and the broker.")] = Path("."),
) -> None:
    """Everything on one machine: SQLite, a filesystem broker, the API and one worker."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GROKLAB_DATA_DIR=str(data_dir))
    env.pop("GROKLAB_DATABASE_URL", None)
    env.pop("GROKLAB_BROKER_URL", None)
    subprocess.run([sys.executable, "-m", "service.cli", "migrate"], env=env, check=True)

    token = _ensure_local_admin_token(env)
    procs = [
        subprocess.Popen([sys.executable, "-m", "service.cli", "api", "--host", host, "--port", str(port)], env=env),
        subprocess.Popen([sys.executable, "-m", "service.cli", "worker", "--name", "embedded@%h"], env=env),
    ]
    url = f"http://{host}:{port}"
    typer.secho(f"groklab is up: {url}  (docs: {url}/docs, data: {data_dir})", fg="green")
    if token:
        typer.secho(f"local admin token (shown once): {token}", fg="yellow")

    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping and all(p.poll() is None for p in procs):
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
        typer.echo("groklab stopped")


def _ensure_local_admin_token(env: dict) -> str | None:
    """On the first start of a data dir (its database never had a token), create an admin token
    for the owner 'local' and return it, to be shown once; None on every later start."""
    from service import auth
    from service.models import LOCAL_OWNER
    from service.settings import Settings

    settings = Settings(data_dir=Path(env["GROKLAB_DATA_DIR"]), database_url=None)
    with _token_session(settings) as session:
        if auth.count_tokens(session):
            return None
        _, token = auth.create_token(session, LOCAL_OWNER, "admin")
    return token


# ---- tokens ----------------------------------------------------------------------------------

token_app = typer.Typer(
    help="API tokens, straight on the database (GROKLAB_DATABASE_URL, or SQLite under "
    "GROKLAB_DATA_DIR). Only their sha256 is stored: a token is shown once, when created.",
    no_args_is_help=True,
)
app.add_typer(token_app, name="token")


@contextmanager
def _token_session(settings=None):
    from sqlalchemy import inspect
    from sqlalchemy.engine import make_url

    from service.db import is_sqlite, make_engine, make_sessionmaker
    from service.settings import get_settings

    url = (settings or get_settings()).resolved_database_url
    shown = make_url(url).render_as_string(hide_password=True)
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:" and not Path(database).exists():
            typer.secho(
                f"no database at {shown}: run `groklab migrate` (or `groklab up`) first, or set "
                "GROKLAB_DATA_DIR / GROKLAB_DATABASE_URL",
                fg="red", err=True,
            )
            raise typer.Exit(1)
    engine = make_engine(url)
    try:
        if not inspect(engine).has_table("api_tokens"):
            typer.secho(
                f"the database at {shown} has no api_tokens table: run `groklab migrate` first",
                fg="red", err=True,
            )
            raise typer.Exit(1)
        with make_sessionmaker(engine)() as session:
            yield session
    finally:
        engine.dispose()


@token_app.command("create")
def token_create(
    owner: Annotated[str, typer.Option(help="Whose experiments the token sees and submits.")],
    scope: Annotated[
        str, typer.Option(help="read (look), write (also submit and cancel), admin (everyone's).")
    ] = "read",
) -> None:
    """Create a token and print it, once, alone on stdout (TOKEN=$(groklab token create ...))."""
    from service import auth

    try:
        auth.check_owner(owner)
        auth.check_scope(scope)
    except ValueError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2)
    with _token_session() as session:
        row, token = auth.create_token(session, owner, scope)
    typer.secho(
        f"created token {row.id[:8]} for owner {owner!r}, scope {scope}; it is shown only now:",
        fg="yellow", err=True,
    )
    typer.echo(token)


@token_app.command("list")
def token_list(
    all_: Annotated[bool, typer.Option("--all", help="Include revoked tokens.")] = False,
) -> None:
    """Tokens: id prefix, owner, scope, created (never the secret, which is not stored)."""
    from service import auth

    with _token_session() as session:
        tokens = auth.list_tokens(session, include_revoked=all_)
    typer.echo(f"{'ID':<10}{'OWNER':<24}{'SCOPE':<7}{'CREATED':<27}REVOKED")
    for t in tokens:
        revoked = t.revoked_at.isoformat(timespec="seconds") if t.revoked_at else "-"
        created = t.created_at.isoformat(timespec="seconds")
        typer.echo(f"{t.id[:8]:<10}{t.owner:<24}{t.scope:<7}{created:<27}{revoked}")


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id, or its first 4+ characters.")],
) -> None:
    """Revoke a token: requests with it are answered 401 from now on."""
    from service import auth

    with _token_session() as session:
        try:
            token = auth.revoke_token(session, token_id)
        except LookupError as exc:
            typer.secho(str(exc), fg="red", err=True)
            raise typer.Exit(1)
    typer.echo(f"revoked token {token.id[:8]} of owner {token.owner!r} ({token.scope})")


def _client(url: str):
    import httpx

    headers = {}
    token = os.environ.get("GROKLAB_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.Client(base_url=url, headers=headers, timeout=30)


@app.command()
def submit(
    spec: Annotated[Path, typer.Argument(help="Spec file (JSON or YAML).", exists=True, dir_okay=False)],
    url: Annotated[str, typer.Option(envvar="GROKLAB_URL", help="API base URL.")] = DEFAULT_URL,
    wait: Annotated[bool, typer.Option(help="Show progress until the job is done.")] = False,
) -> None:
    """Submit a spec to a running service."""
    body = _load_spec_file(spec).model_dump(mode="json")
    with _client(url) as client:
        r = client.post("/api/v1/experiments", json=body)
        if r.status_code != 201:
            typer.secho(f"error {r.status_code}: {r.text}", fg="red", err=True)
            raise typer.Exit(1)
        job = r.json()
        typer.echo(f"submitted {job['id']} ({job['status']})")
        if wait:
            job = _wait(client, job["id"])
            typer.echo(json.dumps({k: job.get(k) for k in ("id", "status", "error", "summary")}, indent=2))
            if job["status"] != "succeeded":
                raise typer.Exit(1)


def _wait(client, experiment_id: str) -> dict:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
    ) as bar:
        task = bar.add_task("queued", total=None, rate="")
        while True:
            job = client.get(f"/api/v1/experiments/{experiment_id}").json()
            prog = job.get("progress") or {}
            rate = prog.get("steps_per_s")
            bar.update(
                task, description=job["status"], total=prog.get("total_steps"),
                completed=prog.get("step") or 0, rate=f"{rate:.1f} steps/s" if rate else "",
            )
            if job["status"] in FINISHED:
                return job
            time.sleep(1.0)


@app.command()
def status(
    experiment_id: Annotated[str, typer.Argument(help="Experiment id.")],
    url: Annotated[str, typer.Option(envvar="GROKLAB_URL", help="API base URL.")] = DEFAULT_URL,
) -> None:
    """Show one experiment's status, progress and summary."""
    with _client(url) as client:
        r = client.get(f"/api/v1/experiments/{experiment_id}")
        if r.status_code != 200:
            typer.secho(f"error {r.status_code}: {r.text}", fg="red", err=True)
            raise typer.Exit(1)
        typer.echo(json.dumps(r.json(), indent=2))


if __name__ == "__main__":
    app()
