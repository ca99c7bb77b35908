"""`groklab train SPEC --out DIR` as a user types it: YAML in, metrics and checkpoints out."""
from __future__ import annotations

import json
import subprocess
import sys

import yaml


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
