"""train_local, the engine behind `groklab train`: a spec in, a folder of files out, nothing drawn."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load as safetensors_load

from worker.engine.local import train_local


def test_train_local_writes_metrics_checkpoints_and_summary_and_prints_nothing(tiny_spec, tmp_path, capsys):
    spec = tiny_spec(training={"steps": 30, "eval_every": 10, "checkpoint_every": 20})
    progress: list[tuple[int, int]] = []
    reported: list[dict] = []
    summary = train_local(
        spec, tmp_path / "run", on_progress=lambda step, total: progress.append((step, total)),
        on_metrics=reported.extend,
    )
    out = tmp_path / "run"

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sorted({r["step"] for r in rows}) == [0, 1, 2, 4, 8, 10, 20, 30]
    assert {r["name"] for r in rows} == {"train_loss", "train_acc", "val_loss", "val_acc", "weight_norm"}
    assert len(rows) == 8 * 5  # nothing written twice
    assert reported == rows  # the callback sees every row the file holds, once
    assert progress == [(step, 30) for step in range(1, 31)]

    checkpoints = sorted(p.name for p in out.glob("step_*.safetensors"))
    assert checkpoints == ["step_0000020.safetensors", "step_0000030.safetensors"]
    assert "param.W_E" in safetensors_load((out / checkpoints[-1]).read_bytes())

    assert summary["steps"] == 30
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert json.loads((out / "spec.json").read_text())["task"]["p"] == 11
    assert capsys.readouterr().out == ""


def test_train_local_needs_no_callbacks(tiny_spec, tmp_path):
    summary = train_local(tiny_spec(training={"steps": 5}), tmp_path)
    assert summary["steps"] == 5
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 5


def test_the_engine_draws_nothing():
    code = "import sys, worker.engine.local; assert 'rich' not in sys.modules, 'rich imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
