"""`groklab train SPEC --out DIR` without a server: train_local."""
from __future__ import annotations

import json

from safetensors.torch import load as safetensors_load

from worker.engine.local import train_local


def test_train_local_writes_metrics_checkpoints_and_prints_the_grokking_line(tiny_spec, tmp_path, capsys):
    spec = tiny_spec(training={"steps": 30, "eval_every": 10, "checkpoint_every": 20})
    summary = train_local(spec, tmp_path / "run", progress=True)
    out = tmp_path / "run"

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sorted({r["step"] for r in rows}) == [0, 1, 2, 4, 8, 10, 20, 30]
    assert {r["name"] for r in rows} == {"train_loss", "train_acc", "val_loss", "val_acc", "weight_norm"}
    assert len(rows) == 8 * 5  # nothing written twice

    checkpoints = sorted(p.name for p in out.glob("step_*.safetensors"))
    assert checkpoints == ["step_0000020.safetensors", "step_0000030.safetensors"]
    assert "param.W_E" in safetensors_load((out / checkpoints[-1]).read_bytes())

    assert summary["steps"] == 30
    assert json.loads((out / "summary.json").read_text())["steps"] == 30
    assert json.loads((out / "spec.json").read_text())["task"]["p"] == 11

    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "memorised (train acc >= 0.99) at step" in last_line
    assert "val acc reached 0.99 at step" in last_line


def test_train_local_without_progress_bar(tiny_spec, tmp_path, capsys):
    summary = train_local(tiny_spec(training={"steps": 5}), tmp_path, progress=False)
    assert summary["steps"] == 5
    assert "val acc reached 0.99 at step never" in capsys.readouterr().out
