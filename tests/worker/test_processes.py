"""Each training process of a worker keeps to its share: the thread limits it inherits, its
GPU on a GPU host, and a name of its own to claim jobs under."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.science.worker_plan import plan_worker
from worker.processes import (BUSY_DIR, GPU_SLOTS, HOST_CORES, THREAD_VARIABLES, ThreadShare, gpu_for_child,
                              prepare_children, training_process_name)

ROOT = Path(__file__).resolve().parents[2]
CHILD_VARIABLES = (*THREAD_VARIABLES, GPU_SLOTS, BUSY_DIR, HOST_CORES, "CUDA_VISIBLE_DEVICES",
                   "GROKLAB_TORCH_THREADS", "GROKLAB_WORKER_PROCESSES")


@pytest.fixture
def child_env(monkeypatch):
    """prepare_children writes os.environ: the variables are restored after the test."""
    for variable in CHILD_VARIABLES:
        monkeypatch.setenv(variable, "")
        monkeypatch.delenv(variable)


def test_the_children_inherit_the_plan(monkeypatch, child_env):
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


def test_busy_processes_share_out_the_idle_cores(tmp_path):
    """A job alone on a 4-core worker of 4 single-threaded processes trains on 4 threads; when
    a second starts, each takes 2 (the first within its next look); the last one alone again
    takes all 4; a process without a job is back at the plan's thread."""
    now = [0.0]
    threads: dict[str, list[int]] = {"a": [], "b": []}

    def share(name: str, index: int) -> ThreadShare:
        return ThreadShare(tmp_path, index, cores=4, base=1, set_threads=threads[name].append,
                           clock=lambda: now[0], every_s=2.0)

    a, b = share("a", 0), share("b", 1)
    with a:
        assert a.threads == 4 and threads["a"] == [4]
        with b:
            assert b.threads == 2
            now[0] += 1.0
            assert a.adjust() == 4  # looked less than every_s ago: unchanged
            now[0] += 1.5
            assert a.adjust() == 2
        assert b.threads == 1 and threads["b"] == [2, 1]
        now[0] += 2.0
        assert a.adjust() == 4
    assert threads["a"] == [4, 2, 4, 1] and not list(tmp_path.iterdir())


def test_elastic_only_where_the_plan_is(child_env):
    prepare_children(plan_worker(2, 0, torch_threads=1))
    assert ThreadShare.from_env() is None  # GROKLAB_TORCH_THREADS given: fixed
    prepare_children(plan_worker(2, 0))
    share = ThreadShare.from_env()
    assert share is not None and share.cores == 2 and share.base == 1
    assert Path(os.environ[BUSY_DIR]).is_dir()
    prepare_children(plan_worker(1, 0))  # one core: nothing to share
    assert ThreadShare.from_env() is None
