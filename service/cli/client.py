"""`groklab submit|status|list|cancel|pause|resume|watch|members|metrics|export|circuit|llc`: a running service over HTTP, through
the Python client (service/client/); GROKLAB_URL and GROKLAB_TOKEN say which and as whom."""
from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from service.cli.spec_file import load_spec_file
from service.client import DEFAULT_URL, Client, GroklabError

app = typer.Typer()

Url = Annotated[str, typer.Option(envvar="GROKLAB_URL", help="API base URL.")]
ExperimentId = Annotated[str, typer.Argument(help="Experiment id.")]


def _client(url: str) -> Client:
    return Client(url)


@contextmanager
def _service(url: str) -> Iterator[Client]:
    """The client; a failed request ends the command with `error STATUS: detail` on stderr and
    exit code 1."""
    try:
        with _client(url) as client:
            yield client
    except GroklabError as exc:
        typer.secho(f"error {exc}", fg="red", err=True)
        raise typer.Exit(1) from None


@app.command()
def submit(
    spec: Annotated[Optional[Path], typer.Argument(
        help="Spec file (JSON or YAML); or none, with --preset.", exists=True, dir_okay=False,
    )] = None,
    preset: Annotated[Optional[str], typer.Option(
        help="Submit this preset without a file: ci-small, nanda2023, power2022, ...",
    )] = None,
    name: Annotated[Optional[str], typer.Option(help="The experiment's name.")] = None,
    url: Url = DEFAULT_URL,
    wait: Annotated[bool, typer.Option(help="Show progress until the job is done.")] = False,
) -> None:
    """Submit a spec file, or a preset, to a running service."""
    if (spec is None) == (preset is None):
        typer.secho("give a spec FILE or --preset NAME (not both)", fg="red", err=True)
        raise typer.Exit(2)
    body = load_spec_file(spec).model_dump(mode="json") if spec is not None else {"name": preset}
    if name is not None:
        body["name"] = name
    with _service(url) as client:
        job = client.submit(body, preset=preset)
        typer.echo(f"submitted {job['id']} ({job['status']})")
        if wait:
            job = client.wait(job["id"])
            typer.echo(json.dumps({k: job.get(k) for k in ("id", "status", "error", "summary")}, indent=2))
    if wait and job["status"] != "succeeded":
        raise typer.Exit(1)


@app.command()
def status(experiment_id: ExperimentId, url: Url = DEFAULT_URL) -> None:
    """Show one experiment's status, progress and summary."""
    with _service(url) as client:
        typer.echo(json.dumps(client.get(experiment_id), indent=2))


@app.command("list")
def list_experiments(
    status: Annotated[Optional[str], typer.Option(
        help="Only jobs in this state: queued, running, paused, succeeded, failed, cancelled.",
    )] = None,
    name: Annotated[Optional[str], typer.Option(help="Only jobs with this exact name.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many, newest first.")] = 20,
    url: Url = DEFAULT_URL,
) -> None:
    """Your experiments, newest first, as a table."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text  # a name is shown as it is, never as markup

    table = Table("id", "name", "status", "step", "created")
    with _service(url) as client:
        for job in itertools.islice(client.list(status, name, limit=min(limit, 50)), limit):
            prog = job["progress"]
            table.add_row(
                job["id"], Text(job["name"]), job["status"], f"{prog['step']}/{prog['total_steps']}",
                job["created_at"][:19].replace("T", " "),
            )
    Console(width=200).print(table)


@app.command()
def cancel(experiment_id: ExperimentId, url: Url = DEFAULT_URL) -> None:
    """Cancel a job: a queued one at once, a running one at its next step."""
    with _service(url) as client:
        job = client.cancel(experiment_id)
    if job["status"] == "cancelled":
        typer.echo(f"{experiment_id} cancelled")
    else:
        typer.echo(f"{experiment_id} {job['status']}: cancel requested, it stops at its next step")


TargetId = Annotated[str, typer.Argument(
    metavar="ID", help="Experiment id (a sweep's with --sweep).",
)]
SweepFlag = Annotated[bool, typer.Option(
    "--sweep", help="ID is a sweep's: every member of it.",
)]


def _counts(sweep: dict) -> str:
    return ", ".join(f"{n} {status}" for status, n in sweep["counts"].items() if n)


@app.command()
def pause(
    target_id: TargetId,
    sweep: SweepFlag = False,
    url: Url = DEFAULT_URL,
) -> None:
    """Pause a job (or every member of a sweep): a queued one at once, a running one within a
    few seconds, after its worker stores a checkpoint. `groklab resume` continues it."""
    with _service(url) as client:
        if sweep:
            out = client.pause_sweep(target_id)
            typer.echo(f"sweep {target_id} {out['status']}: {_counts(out)}")
            return
        job = client.pause(target_id)
    if job["status"] == "paused":
        typer.echo(f"{target_id} paused at step {job['progress']['step']}")
    else:
        typer.echo(f"{target_id} {job['status']}: pause requested, its worker checkpoints it and "
                   "pauses it within a few seconds")


@app.command()
def resume(
    target_id: TargetId,
    sweep: SweepFlag = False,
    url: Url = DEFAULT_URL,
) -> None:
    """Resume a paused job (or every paused member of a sweep): queued again, it continues from
    its checkpoint."""
    with _service(url) as client:
        if sweep:
            out = client.resume_sweep(target_id)
            typer.echo(f"sweep {target_id} {out['status']}: {_counts(out)}")
            return
        job = client.resume(target_id)
    if job["status"] == "queued":
        typer.echo(f"{target_id} queued: it continues from step {job['progress']['step']}")
    else:
        typer.echo(f"{target_id} {job['status']}: pause request withdrawn, it trains on")


def _metrics_line(data: dict, total: int | None) -> str:
    """`step 120/1200  train_acc 0.981  val_acc 0.112` from a metrics event: member 0's latest
    value of each metric (an event may carry points of several steps)."""
    latest = {p["name"]: p["value"] for p in sorted(data["points"], key=lambda p: p["step"])
              if p["member"] == 0}
    values = "  ".join(
        f"{name} {value:.4g}" if value is not None else f"{name} nan"
        for name, value in sorted(latest.items())
    )
    return f"step {data['step']}{f'/{total}' if total else ''}  {values}"


@app.command()
def watch(experiment_id: ExperimentId, url: Url = DEFAULT_URL) -> None:
    """Follow a job live (its events stream): status changes and each step's metrics, until it
    ends. Exit code 0 when it succeeded, 1 otherwise."""
    job: dict = {}
    with _service(url) as client:
        for event, data in client.events(experiment_id):
            if event in ("status", "end"):
                if data["status"] != job.get("status"):
                    typer.echo(f"{experiment_id} {data['status']}")
                job = data
            elif event == "metrics":
                total = (job.get("progress") or {}).get("total_steps")
                typer.echo(_metrics_line(data, total))
    summary = job.get("summary") or {}
    if job.get("error"):
        typer.echo(f"error: {job['error']}")
    if summary:
        typer.echo(json.dumps(summary, indent=2))
    if summary.get("pruning"):  # its sweep's early stopping ended it: why
        typer.echo(f"pruned at step {summary['pruning']['step']}: {summary['pruning']['reason']}")
    if job.get("status") != "succeeded":
        raise typer.Exit(1)


@app.command()
def members(sweep_id: Annotated[str, typer.Argument(metavar="SWEEP_ID")], url: Url = DEFAULT_URL) -> None:
    """A sweep's members: status, axis values, phase, the forecast's probability of
    generalising, and for a member pruned by early stopping the step and the reason."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    with _service(url) as client:
        out = client.sweep_members(sweep_id)
    table = Table("index", "id", "status", *out["axes"], "phase", "generalized at", "will_generalize",
                  "pruned at", "reason")
    for m in out["members"]:
        p = m.get("will_generalize")
        table.add_row(
            str(m["index"]), m["experiment_id"][:8], m["status"], *(str(m["point"].get(a)) for a in out["axes"]),
            m["phase"] or "", str(m["generalization_step"] or ""), "" if p is None else f"{p:.2f}",
            str(m.get("pruned_at_step") or ""), Text(m.get("prune_reason") or ""),
        )
    Console(width=240).print(table)


@app.command()
def metrics(
    experiment_id: ExperimentId,
    names: Annotated[Optional[str], typer.Option(
        help="Comma-separated metric names, e.g. train_acc,val_acc. Default: all.",
    )] = None,
    output_format: Annotated[str, typer.Option(
        "--format", help="csv (name,member,step,value) or json (the API's series).",
    )] = "csv",
    max_points: Annotated[Optional[int], typer.Option(
        help="At most this many points per series (downsampled on the server).",
    )] = None,
    member: Annotated[Optional[int], typer.Option(help="One ensemble member; default all.")] = None,
    url: Url = DEFAULT_URL,
) -> None:
    """Print an experiment's metric series to stdout, as CSV or JSON."""
    if output_format not in ("csv", "json"):
        typer.secho(f"--format must be csv or json (got {output_format!r})", fg="red", err=True)
        raise typer.Exit(2)
    with _service(url) as client:
        data = client.metrics_series(
            experiment_id, names, max_points=max_points, member=member, format=output_format,
        )
    if output_format == "csv":
        typer.echo(data, nl=False)
    else:
        typer.echo(json.dumps(data, indent=2))


@app.command()
def export(
    experiment_id: ExperimentId,
    step: Annotated[int, typer.Argument(help="Checkpoint step.")],
    out: Annotated[Path, typer.Option(help="Where to write the safetensors file.", dir_okay=False)],
    member: Annotated[int, typer.Option(help="Ensemble member.")] = 0,
    export_format: Annotated[str, typer.Option("--format", help="Export format.")] = "transformer_lens",
    url: Url = DEFAULT_URL,
) -> None:
    """Export a checkpoint's weights for TransformerLens (a HookedTransformer state dict)."""
    with _service(url) as client:
        client.export_checkpoint(experiment_id, step, out, member=member, format=export_format)
    typer.echo(f"wrote {out} ({out.stat().st_size} bytes)")


@app.command()
def circuit(
    experiment_id: ExperimentId,
    step: Annotated[int, typer.Argument(help="Checkpoint step.")],
    picture: Annotated[str, typer.Argument(
        help="embedding (clocks), neurons (by frequency), waves or attention.",
    )],
    member: Annotated[int, typer.Option(help="Ensemble member.")] = 0,
    neurons: Annotated[Optional[str], typer.Option(
        help="waves: comma-separated neuron indices (default: the top 4 of distinct frequencies).",
    )] = None,
    answer: Annotated[int, typer.Option(help="waves: the answer whose logit is drawn.")] = 0,
    url: Url = DEFAULT_URL,
) -> None:
    """Print one circuit picture of a checkpoint as JSON, waiting while a worker computes it."""
    if picture not in ("embedding", "neurons", "waves", "attention"):
        typer.secho(f"picture must be embedding, neurons, waves or attention (got {picture!r})",
                    fg="red", err=True)
        raise typer.Exit(2)
    with _service(url) as client:
        if picture == "waves":
            data = client.waves(experiment_id, step, member=member, neurons=neurons, answer=answer)
        else:
            data = getattr(client, picture)(experiment_id, step, member=member)
    typer.echo(json.dumps(data))


@app.command()
def llc(
    experiment_id: ExperimentId,
    step: Annotated[Optional[int], typer.Option(
        help="One checkpoint's estimate (default: the series over the stored checkpoints).")] = None,
    url: Url = DEFAULT_URL,
) -> None:
    """Print the local learning coefficient as JSON (per member), waiting while workers
    estimate it: at one checkpoint, or over every stored checkpoint."""
    with _service(url) as client:
        typer.echo(json.dumps(client.llc(experiment_id, step)))
