"""`groklab token create|list|revoke`: API tokens, straight on the database."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="API tokens, straight on the database (GROKLAB_DATABASE_URL, or SQLite under "
    "GROKLAB_DATA_DIR). Only their sha256 is stored: a token is shown once, when created.",
    no_args_is_help=True,
)


@contextmanager
def token_session(settings=None, table: str = "api_tokens"):
    """A session on the database of settings (default: the environment's), which must exist and
    be migrated (have `table`): otherwise say how to fix it, and exit 1."""
    from sqlalchemy import inspect
    from sqlalchemy.engine import make_url

    from service.contract.settings import get_settings
    from service.infra.db import is_sqlite, make_engine, make_sessionmaker

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
        if not inspect(engine).has_table(table):
            typer.secho(
                f"the database at {shown} has no {table} table: run `groklab migrate` first",
                fg="red", err=True,
            )
            raise typer.Exit(1)
        with make_sessionmaker(engine)() as session:
            yield session
    finally:
        engine.dispose()


@app.command("create")
def token_create(
    owner: Annotated[str, typer.Option(help="Whose experiments the token sees and submits.")],
    scope: Annotated[
        str, typer.Option(help="read (look), write (also submit and cancel), admin (everyone's).")
    ] = "read",
    max_active_jobs: Annotated[
        int | None,
        typer.Option(min=0, help="Queued + running jobs at once; 0: none (the token cannot "
                     "submit). Leave it out for the setting GROKLAB_MAX_ACTIVE_JOBS_PER_OWNER "
                     "(no limit for an admin token)."),
    ] = None,
    submissions_per_minute: Annotated[
        int | None,
        typer.Option(min=0, help="Submissions per minute; 0: none. Leave it out for the setting "
                     "GROKLAB_SUBMISSIONS_PER_MINUTE (no limit for an admin token)."),
    ] = None,
    max_compute: Annotated[
        float | None,
        typer.Option(min=0, help="Compute per job, in member x parameter x example x step units; "
                     "0: none. Leave it out for the setting GROKLAB_MAX_COMPUTE_PER_JOB."),
    ] = None,
) -> None:
    """Create a token and print it, once, alone on stdout (TOKEN=$(groklab token create ...)).

    A quota given here replaces the setting for this token: 0 allows none, and a quota left
    out is the setting's (whose 0 means no limit)."""
    from service.access import auth

    try:
        auth.check_owner(owner)
        auth.check_scope(scope)
    except ValueError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2)
    with token_session() as session:
        row, token = auth.create_token(
            session, owner, scope,
            max_active_jobs=max_active_jobs,
            submissions_per_minute=submissions_per_minute,
            max_compute=max_compute,
        )
    typer.secho(
        f"created token {row.id[:8]} for owner {owner!r}, scope {scope}; it is shown only now:",
        fg="yellow", err=True,
    )
    typer.echo(token)


@app.command("list")
def token_list(
    all_: Annotated[bool, typer.Option("--all", help="Include revoked tokens.")] = False,
) -> None:
    """Tokens: id prefix, owner, scope, created (never the secret, which is not stored)."""
    from service import store

    with token_session() as session:
        tokens = store.list_tokens(session, include_revoked=all_)
    typer.echo(f"{'ID':<10}{'OWNER':<24}{'SCOPE':<7}{'CREATED':<27}REVOKED")
    for t in tokens:
        revoked = t.revoked_at.isoformat(timespec="seconds") if t.revoked_at else "-"
        created = t.created_at.isoformat(timespec="seconds")
        typer.echo(f"{t.id[:8]:<10}{t.owner:<24}{t.scope:<7}{created:<27}{revoked}")


@app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id, or its first 4+ characters.")],
) -> None:
    """Revoke a token: requests with it are answered 401 from now on."""
    from service.access import auth

    with token_session() as session:
        try:
            token = auth.revoke_token(session, token_id)
        except LookupError as exc:
            typer.secho(str(exc), fg="red", err=True)
            raise typer.Exit(1)
    typer.echo(f"revoked token {token.id[:8]} of owner {token.owner!r} ({token.scope})")
