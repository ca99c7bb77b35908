"""`groklab train SPEC --out DIR` as a user types it: YAML in, metrics and checkpoints out, a
progress bar and the grokking line on the terminal."""
from __future__ import annotations

import json
import subprocess
import sys

import yaml
from safetensors.torch import load as safetensors_load

from service.cli.local import train_with_progress


def test_groklab_train_runs_a_yaml_spec_and_prints_the_summary_line(tmp_path):
    spec = {
        "name": "cli-tiny", "preset": "ci-small", "task": {"p": 7},
        "model": {"d_model": 8, "n_heads": 1, "d_mlp": 16},
        "training": {"steps": 20, "eval_every": 10, "checkpoint_every": 10},
        "analysis": {"every": None},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "train", str(tmp_path / "spec.yaml"), "--out", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "memoris" in done.stdout.lower() or "memoriz" in done.stdout.lower()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows) == 20
    assert sorted(p.name for p in out.glob("step_*.safetensors")) == [
        "step_0000010.safetensors", "step_0000020.safetensors"
    ]


def test_groklab_train_names_the_bad_field(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"task": {"op": "x/y", "p": 100}}))
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "train", str(tmp_path / "bad.json")],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "task.p" in done.stderr and "prime" in done.stderr


def test_train_local_writes_metrics_checkpoints_and_prints_the_grokking_line(tiny_spec, tmp_path, capsys):
    spec = tiny_spec(training={"steps": 30, "eval_every": 10, "checkpoint_every": 20})
    summary = train_with_progress(spec, tmp_path / "run", progress=True)
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
    summary = train_with_progress(tiny_spec(training={"steps": 5}), tmp_path, progress=False)
    assert summary["steps"] == 5
    assert "val acc reached 0.99 at step never" in capsys.readouterr().out
