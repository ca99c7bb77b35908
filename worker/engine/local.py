"""Train a spec on this machine with no server: `groklab train SPEC --out DIR`.

out_dir receives spec.json, metrics.jsonl (one metric row per line, appended as the run goes),
step_XXXXXXX.safetensors checkpoints and summary.json. An existing metrics.jsonl is replaced.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from service.spec import ExperimentSpec
from worker.engine.train import Trainer


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def grokking_line(summary: dict[str, Any]) -> str:
    """One line: per member, the memorisation step and the step where val acc reached 0.99."""
    parts = []
    for m in summary["members"]:
        memorised = m["memorization_step"]
        generalised = m["generalization_step"]
        prefix = f"member {m['member']}: " if len(summary["members"]) > 1 else ""
        parts.append(
            f"{prefix}memorised (train acc >= 0.99) at step "
            f"{memorised if memorised is not None else 'never'}, "
            f"val acc reached 0.99 at step {generalised if generalised is not None else 'never'}"
        )
    return "; ".join(parts)


def train_local(spec: ExperimentSpec, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "spec.json").write_text(json.dumps(spec.model_dump(mode="json"), indent=2) + "\n")
    console = Console()
    trainer = Trainer(spec)
    total = spec.training.steps
    latest = {"train_acc": None, "val_acc": None}

    with (out_dir / "metrics.jsonl").open("w") as metrics_file, Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("train acc {task.fields[train_acc]}  val acc {task.fields[val_acc]}"),
        TextColumn("{task.fields[rate]} steps/s"), TimeRemainingColumn(),
        console=console, disable=not progress, transient=False,
    ) as bar:
        task = bar.add_task(spec.name, total=total, train_acc="-", val_acc="-", rate="-")
        started = time.perf_counter()
        last_draw = 0.0

        def on_metrics(rows: list[dict]) -> None:
            for row in rows:
                metrics_file.write(json.dumps(row) + "\n")
                if row["member"] == 0 and row["name"] in latest:
                    latest[row["name"]] = row["value"]
            metrics_file.flush()
            bar.update(task, train_acc=_fmt(latest["train_acc"]), val_acc=_fmt(latest["val_acc"]))

        def on_checkpoint(step: int, blob: bytes, meta: dict) -> None:
            (out_dir / f"step_{step:07d}.safetensors").write_bytes(blob)

        def on_progress(step: int, total_steps: int) -> None:
            nonlocal last_draw
            now = time.perf_counter()
            if now - last_draw < 0.1 and step < total_steps:
                return
            last_draw = now
            rate = (step - trainer_start) / max(now - started, 1e-9)
            bar.update(task, completed=step, rate=f"{rate:.0f}")

        trainer_start = trainer.step
        summary = trainer.run(on_metrics=on_metrics, on_checkpoint=on_checkpoint, on_progress=on_progress)
        bar.update(task, completed=trainer.step)

    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    console.print(grokking_line(summary))
    return summary
