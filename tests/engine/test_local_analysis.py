"""`groklab train` records the progress measures the worker records: same callback, same rows."""
from __future__ import annotations

import json

from worker.analysis.callback import PROGRESS_MEASURE_NAMES
from worker.engine.local import train_local


def test_a_local_run_with_analysis_every_writes_the_worker_series(tiny_spec, tmp_path):
    spec = tiny_spec(training={"steps": 40, "eval_every": 10}, analysis={"every": 20})
    reported: list[dict] = []
    train_local(spec, tmp_path, on_metrics=reported.extend)

    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert reported == rows
    for name in PROGRESS_MEASURE_NAMES:  # restricted_loss, excluded_loss, gini_*, key_freq_*
        assert sorted(r["step"] for r in rows if r["name"] == name) == [0, 20, 40], name
    steps_and_names = [(r["step"], r["member"], r["name"]) for r in rows]
    assert len(steps_and_names) == len(set(steps_and_names))  # nothing written twice


def test_a_local_run_of_a_task_without_fourier_measures_writes_none(tiny_spec, tmp_path):
    spec = tiny_spec(task={"kind": "permutation", "op": "x*y", "p": None},
                     training={"steps": 20}, analysis={"every": 10})
    train_local(spec, tmp_path)
    names = {json.loads(line)["name"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()}
    assert names == {"train_loss", "train_acc", "val_loss", "val_acc", "weight_norm"}
