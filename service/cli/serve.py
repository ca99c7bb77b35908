"""`groklab migrate|api|worker|up`: run the service, in production or all on one machine."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from service.cli.tokens import token_session

app = typer.Typer()


@app.command()
def migrate() -> None:
    """Bring the database schema up to date (alembic upgrade head)."""
    from service.contract.settings import get_settings
    from service.infra.db import migrate as run_migrations

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

    from service.contract.settings import get_settings

    settings = get_settings()
    uvicorn.run(
        "service.app:create_app", factory=True,
        host=host or settings.host, port=port or settings.port, log_level="info",
        workers=settings.api_workers,  # GROKLAB_API_WORKERS; `groklab up` stays one process
    )


@app.command()
def worker(
    queues: Annotated[Optional[str], typer.Option(help="Comma-separated queues, e.g. gpu or cpu.")] = None,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "info",
    name: Annotated[Optional[str], typer.Option(help="Worker node name.")] = None,
) -> None:
    """Run a Celery worker that trains queued experiments: one training process per core on a
    CPU host, one per GPU on a GPU host (GROKLAB_WORKER_PROCESSES, GROKLAB_TORCH_THREADS)."""
    import worker.tasks  # noqa: F401  registers the task
    from service.contract.settings import get_settings
    from service.science.worker_plan import worker_plan
    from service.infra.celery_app import get_celery_app
    from worker.processes import prepare_children

    settings = get_settings()
    plan = worker_plan(settings)
    prepare_children(plan)  # before the pool starts: the children inherit the thread limits
    typer.echo(f"groklab worker: {plan.describe()}")
    argv = [
        "worker", "--queues", queues or settings.worker_queues,
        "--concurrency", str(plan.processes), "--pool", "prefork",
        "--loglevel", loglevel, "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]
    if name:
        argv += ["--hostname", name]
    get_celery_app().worker_main(argv)


@app.command()
def up(
    host: Annotated[str, typer.Option(help="API bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port.")] = 8000,
    data_dir: Annotated[Path, typer.Option(help="Folder for groklab.db and the broker.")] = Path("."),
) -> None:
    """Everything on one machine: SQLite, a filesystem broker, the API and one worker with a
    training process per core (GROKLAB_WORKER_PROCESSES, GROKLAB_TORCH_THREADS)."""
    # Everything the embedded stack writes (database, broker messages) is its owner's only;
    # the API and worker processes inherit the mask.
    os.umask(0o077)
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GROKLAB_DATA_DIR=str(data_dir))
    env.pop("GROKLAB_DATABASE_URL", None)
    env.pop("GROKLAB_BROKER_URL", None)
    env["GROKLAB_API_WORKERS"] = "1"  # one process: its live-events poller serves every watcher
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
    from service import store
    from service.access import auth
    from service.contract.models import LOCAL_OWNER
    from service.contract.settings import Settings

    settings = Settings(data_dir=Path(env["GROKLAB_DATA_DIR"]), database_url=None)
    with token_session(settings) as session:
        if store.count_tokens(session):
            return None
        _, token = auth.create_token(session, LOCAL_OWNER, "admin")
    return token
