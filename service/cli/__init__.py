"""The `groklab` command line, one program grouped by audience:

    local.py   groklab train                  a researcher, on this machine, no server
    serve.py   groklab migrate|api|worker|up  an operator, running the service
    client.py  groklab submit|status|list|cancel|pause|resume|watch|metrics|export|circuit|llc
               a user of a running service, over HTTP (service/client/)
    reproduce.py  groklab reproduce           the same user: a paper's claims, checked
    tokens.py  groklab token create|list|revoke  an admin, straight on the database
    webhooks.py  groklab webhook-secret set|list|revoke  an admin: alert signing secrets

Every module imports worker/ (and so torch) only inside the commands that start a worker or
train locally: the API's image runs `groklab api` without torch.
"""
from __future__ import annotations

import typer

from service.cli import client, local, reproduce, serve, tokens, webhooks
from service.cli.serve import _ensure_local_admin_token

__all__ = ["app", "_ensure_local_admin_token"]

app = typer.Typer(help="groklab: train and analyse grokking experiments.", no_args_is_help=True)
# The grouping is in the code only: each audience's commands sit at the top level of `groklab`.
for audience in (local.app, serve.app, client.app, reproduce.app):
    app.registered_commands += audience.registered_commands
app.add_typer(tokens.app, name="token")
app.add_typer(webhooks.app, name="webhook-secret")
