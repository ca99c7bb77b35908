"""`groklab reproduce NAME [--scale ci|paper]`: run a paper's reproduction on a running service,
show its progress, and print the report (each claim: expected, measured, pass or fail)."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from service.cli.client import Url, _counts, _service
from service.client import DEFAULT_URL

app = typer.Typer()


def report_table(run: dict):
    """The run's claims as a Rich table: claim, expected, measured, paper, verdict. The texts
    are the reproduction's, shown as they are (a selector's "[a=b]" is not Rich markup)."""
    from rich.table import Table
    from rich.text import Text

    table = Table("claim", "expected", "measured", "paper", "verdict", show_lines=True,
                  title=f"{run['reproduction']} v{run['version']} ({run['scale']} scale): "
                        f"{(run['verdict'] or 'pending').upper()}")
    for claim in run["claims"] or []:
        colour = "green" if claim["verdict"] == "pass" else "red"
        table.add_row(*(Text(claim[k] or "") for k in ("says", "expected", "measured", "paper")),
                      Text(claim["verdict"], style=colour))
    return table


@app.command()
def reproduce(
    name: Annotated[Optional[str], typer.Argument(
        help="Reproduction name (see `groklab reproduce --list`).")] = None,
    scale: Annotated[str, typer.Option(help="ci (minutes on 2 CPU cores) or paper.")] = "ci",
    list_them: Annotated[bool, typer.Option("--list", help="List the reproductions.")] = False,
    sweep_id: Annotated[Optional[str], typer.Option(
        "--run", help="Wait for, and report, this earlier run (a sweep id) instead.")] = None,
    url: Url = DEFAULT_URL,
) -> None:
    """Run a reproduction: submit its sweep, show progress, then print each claim's expected
    and measured values and pass/fail. Exit code 0 when every claim passes, 1 otherwise."""
    from rich.console import Console

    console = Console(width=160)
    with _service(url) as client:
        if list_them or name is None:
            for r in client.reproductions():
                sizes = ", ".join(f"{s} {v['n_members']} runs" for s, v in r["scales"].items())
                typer.echo(f"{r['name']} v{r['version']}: {r['summary']} ({sizes})")
            return
        if sweep_id is None:
            run = client.reproduce(name, scale)
            sweep_id = run["sweep"]["id"]
            typer.echo(f"submitted {name} at {scale} scale: sweep {sweep_id} "
                       f"({run['sweep']['n_members']} runs)")
        last = [""]

        def show(run: dict) -> None:
            sweep = run["sweep"]
            line = f"{sweep['status']}: {sweep['progress']:.0%} of the steps, {_counts(sweep)}"
            if line != last[0]:
                typer.echo(line, err=True)
                last[0] = line

        run = client.wait_reproduction(name, sweep_id, on_progress=show)
    console.print(report_table(run))
    if run["verdict"] != "pass":
        raise typer.Exit(1)
