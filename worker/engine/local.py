"""Train a spec on this machine with no server, into a folder (behind `groklab train`).

out_dir receives spec.json, metrics.jsonl (one metric row per line, appended as the run goes;
the Fourier progress measures every analysis.every steps too, as the worker records them),
step_XXXXXXX.safetensors checkpoints and summary.json. An existing metrics.jsonl is replaced.
Nothing is drawn or printed here: a caller that shows progress passes callbacks.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from service.contract.spec import ExperimentSpec
from worker.analysis.callback import analysis_callback
from worker.engine.train import MetricRow, Trainer


def train_local(
    spec: ExperimentSpec,
    out_dir: Path,
    on_progress: Callable[[int, int], None] | None = None,
    on_metrics: Callable[[list[MetricRow]], None] | None = None,
) -> dict[str, Any]:
    """Train spec to the end, writing its files to out_dir; return the summary.

    on_progress(step, total_steps) runs after every training step; on_metrics(rows) after each
    evaluation's rows are written to metrics.jsonl.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "spec.json").write_text(json.dumps(spec.model_dump(mode="json"), indent=2) + "\n")

    with (out_dir / "metrics.jsonl").open("w") as metrics_file:

        def write_metrics(rows: list[MetricRow]) -> None:
            for row in rows:
                metrics_file.write(json.dumps(row) + "\n")
            metrics_file.flush()
            if on_metrics is not None:
                on_metrics(rows)

        def write_checkpoint(step: int, blob: bytes, meta: dict) -> None:
            (out_dir / f"step_{step:07d}.safetensors").write_bytes(blob)

        summary = Trainer(spec).run(
            on_metrics=write_metrics, on_checkpoint=write_checkpoint, on_progress=on_progress,
            on_analysis=analysis_callback(spec),  # the worker's series, written like the others
        )

    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
