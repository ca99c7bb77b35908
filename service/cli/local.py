"""`groklab train`: train a spec on this machine, with a progress bar and a one-line verdict."""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from service.cli.spec_file import load_spec_file
from service.science.grokking import ACC_THRESHOLD, TRAIN_ACC, VAL_ACC
from service.science.progress import StepRate

if TYPE_CHECKING:
    from service.contract.spec import ExperimentSpec

app = typer.Typer()

# Redraw the bar at most this often: a tiny model trains thousands of steps a second.
REDRAW_S = 0.1


@app.command()
def train(
    spec: Annotated[Path, typer.Argument(help="Spec file (JSON or YAML).", exists=True, dir_okay=False)],
    out: Annotated[Path, typer.Option(help="Folder for metrics and checkpoints.")] = Path("runs/local"),
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train a spec on this machine, no server needed."""
    train_with_progress(load_spec_file(spec), out, progress=progress)


def train_with_progress(spec: ExperimentSpec, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    """train_local into out_dir under a Rich progress bar (member 0's accuracies, the rate),
    then print grokking_line; return the summary."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from worker.engine.local import train_local

    console = Console()
    latest: dict[str, float | None] = {TRAIN_ACC: None, VAL_ACC: None}
    rate = StepRate()
    last_draw = 0.0

    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("train acc {task.fields[train_acc]}  val acc {task.fields[val_acc]}"),
        TextColumn("{task.fields[rate]} steps/s"), TimeRemainingColumn(),
        console=console, disable=not progress, transient=False,
    ) as bar:
        task = bar.add_task(spec.name, total=spec.training.steps, train_acc="-", val_acc="-", rate="-")

        def on_metrics(rows: list[dict]) -> None:
            for row in rows:
                if row["member"] == 0 and row["name"] in latest:
                    latest[row["name"]] = row["value"]
            bar.update(task, train_acc=_fmt(latest[TRAIN_ACC]), val_acc=_fmt(latest[VAL_ACC]))

        def on_progress(step: int, total_steps: int) -> None:
            nonlocal last_draw
            now = time.perf_counter()
            if now - last_draw < REDRAW_S and step < total_steps:
                return
            last_draw = now
            rate.observe(step)
            steps_per_s = rate.rate()
            bar.update(task, completed=step, rate="-" if steps_per_s is None else f"{steps_per_s:.0f}")

        summary = train_local(spec, out_dir, on_progress=on_progress, on_metrics=on_metrics)
        bar.update(task, completed=summary["steps"])

    console.print(grokking_line(summary))
    return summary


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def grokking_line(summary: dict[str, Any]) -> str:
    """One line: per member, the memorisation step and the step where val acc reached
    ACC_THRESHOLD."""
    parts = []
    for m in summary["members"]:
        memorised = m["memorization_step"]
        generalised = m["generalization_step"]
        prefix = f"member {m['member']}: " if len(summary["members"]) > 1 else ""
        parts.append(
            f"{prefix}memorised (train acc >= {ACC_THRESHOLD}) at step "
            f"{memorised if memorised is not None else 'never'}, "
            f"val acc reached {ACC_THRESHOLD} at step {generalised if generalised is not None else 'never'}"
        )
    return "; ".join(parts)
