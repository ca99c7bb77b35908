"""Each training process of a worker keeps to its share: the thread limits it inherits, its
GPU on a GPU host, and a name of its own to claim jobs under."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from service.science.worker_plan import plan_worker
from worker.processes import (GPU_SLOTS, THREAD_VARIABLES, gpu_for_child, prepare_children,
                              training_process_name)

ROOT = Path(__file__).resolve().parents[2]


def test_the_children_inherit_the_plan(monkeypatch):
    for variable in (*THREAD_VARIABLES, GPU_SLOTS, "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(variable, raising=False)
    prepare_children(plan_worker(16, 0, processes=4))
    assert {v: os.environ[v] for v in THREAD_VARIABLES} == dict.fromkeys(THREAD_VARIABLES, "4")
    assert os.environ["GROKLAB_TORCH_THREADS"] == "4"
    assert os.environ["GROKLAB_WORKER_PROCESSES"] == "4"
    assert GPU_SLOTS not in os.environ

    prepare_children(plan_worker(16, 2))
    assert os.environ[GPU_SLOTS] == "0,1" and os.environ["OMP_NUM_THREADS"] == "8"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 5,7")
    prepare_children(plan_worker(16, 2))
    assert os.environ[GPU_SLOTS] == "3,5"


def test_one_gpu_per_child_in_turn():
    assert [gpu_for_child(i, "3,5") for i in range(4)] == ["3", "5", "3", "5"]
    assert gpu_for_child(0, None) is None and gpu_for_child(2, "") is None


def test_each_child_claims_under_a_name_of_its_own():
    names = {training_process_name("embedded@host", i) for i in range(4)}
    assert len(names) == 4 and all(n.startswith("embedded@host#") for n in names)
    assert training_process_name("w@h") == "w@h#0"  # outside a pool


def test_a_child_starts_with_the_threads_of_the_plan():
    """What a pool child runs at its start (worker_process_init), in a fresh interpreter with
    the environment the worker's main process gave it."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    env.update(PYTHONPATH=str(ROOT), GROKLAB_TORCH_THREADS="3")  # not torch's own default
    code = ("from worker.processes import limit_child; limit_child(); import torch; "
            "print(torch.get_num_threads())")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3"
