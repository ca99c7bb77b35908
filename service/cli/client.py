"""`groklab submit|status|export`: talk to a running service over HTTP (GROKLAB_URL, GROKLAB_TOKEN)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated

import typer

from service.cli.spec_file import load_spec_file

app = typer.Typer()

DEFAULT_URL = "http://127.0.0.1:8000"
FINISHED = ("succeeded", "failed", "cancelled")


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
    body = load_spec_file(spec).model_dump(mode="json")
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
    """Poll the experiment every second under a progress bar (the service's own steps/s) until
    it is finished; return it."""
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


@app.command()
def export(
    experiment_id: Annotated[str, typer.Argument(help="Experiment id.")],
    step: Annotated[int, typer.Argument(help="Checkpoint step.")],
    out: Annotated[Path, typer.Option(help="Where to write the safetensors file.", dir_okay=False)],
    member: Annotated[int, typer.Option(help="Ensemble member.")] = 0,
    export_format: Annotated[str, typer.Option("--format", help="Export format.")] = "transformer_lens",
    url: Annotated[str, typer.Option(envvar="GROKLAB_URL", help="API base URL.")] = DEFAULT_URL,
) -> None:
    """Export a checkpoint's weights for TransformerLens (a HookedTransformer state dict)."""
    with _client(url) as client:
        r = client.get(
            f"/api/v1/experiments/{experiment_id}/checkpoints/{step}/export",
            params={"format": export_format, "member": member},
        )
        if r.status_code != 200:
            typer.secho(f"error {r.status_code}: {r.text}", fg="red", err=True)
            raise typer.Exit(1)
        out.write_bytes(r.content)
        typer.echo(f"wrote {out} ({len(r.content)} bytes)")
