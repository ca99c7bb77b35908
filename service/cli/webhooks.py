"""`groklab webhook-secret set|list|revoke`: the per-owner secrets alert webhooks are signed with,
straight on the database."""
from __future__ import annotations

from typing import Annotated

import typer

from service.cli.tokens import token_session

app = typer.Typer(
    help="Webhook secrets: each owner's alerts (a spec's notify) are signed with its secret "
    "(X-Groklab-Signature: t=<unix time>,v1=<HMAC-SHA256 of '<t>.' + body>). A secret is shown once, when set.",
    no_args_is_help=True,
)
OwnerOption = Annotated[str, typer.Option(help="The owner whose experiments' alerts it signs.")]


@app.command("set")
def secret_set(owner: OwnerOption) -> None:
    """Give an owner a new secret (replacing any) and print it, once, alone on stdout."""
    from service import store
    from service.access import auth

    try:
        auth.check_owner(owner)
    except ValueError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2)
    with token_session(table="webhook_secrets") as session:
        secret = store.set_webhook_secret(session, owner)
    typer.secho(
        f"new webhook secret for owner {owner!r} (any previous one stops signing now); it is "
        "shown only now:", fg="yellow", err=True,
    )
    typer.echo(secret)


@app.command("list")
def secret_list() -> None:
    """Owners with a secret and when it was set (never the secret)."""
    from service import store

    with token_session(table="webhook_secrets") as session:
        rows = store.list_webhook_secrets(session)
    typer.echo(f"{'OWNER':<24}SET")
    for row in rows:
        typer.echo(f"{row.owner:<24}{row.created_at.isoformat(timespec='seconds')}")


@app.command("revoke")
def secret_revoke(owner: OwnerOption) -> None:
    """Delete an owner's secret: its alerts are no longer sent (new submissions with notify are
    refused until a secret is set again)."""
    from service import store

    with token_session(table="webhook_secrets") as session:
        if not store.revoke_webhook_secret(session, owner):
            typer.secho(f"owner {owner!r} has no webhook secret", fg="red", err=True)
            raise typer.Exit(1)
    typer.echo(f"revoked the webhook secret of owner {owner!r}")
