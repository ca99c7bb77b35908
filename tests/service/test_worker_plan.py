"""The worker's training processes and torch threads, worked out from a host's cores and GPUs,
and the overrides GROKLAB_WORKER_PROCESSES and GROKLAB_TORCH_THREADS."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.science import worker_plan as plans
from service.contract.settings import Settings
from service.science.worker_plan import plan_worker


@pytest.mark.parametrize(
    ("cores", "gpus", "processes", "threads", "expected"),
    [
        # a CPU host: one single-threaded process per core
        (1, 0, None, None, (1, 1)),
        (2, 0, None, None, (2, 1)),
        (16, 0, None, None, (16, 1)),
        # a GPU host: one process per GPU, the cores shared among them
        (16, 1, None, None, (1, 16)),
        (16, 4, None, None, (4, 4)),
        (2, 4, None, None, (4, 1)),
        # processes asked for: the cores shared among them
        (16, 0, 4, None, (4, 4)),
        (16, 0, 3, None, (3, 5)),
        (2, 0, 1, None, (1, 2)),
        (2, 0, 4, None, (4, 1)),
        # threads asked for: as many processes as fit
        (16, 0, None, 4, (4, 4)),
        (16, 0, None, 3, (5, 3)),
        (2, 0, None, 8, (1, 8)),
        (16, 2, None, 2, (2, 2)),
        # both: as given
        (16, 0, 2, 2, (2, 2)),
        (2, 0, 3, 2, (3, 2)),
    ],
)
def test_processes_and_threads_from_the_cores(cores, gpus, processes, threads, expected):
    plan = plan_worker(cores, gpus, processes, threads)
    assert (plan.processes, plan.torch_threads) == expected


def test_a_derived_plan_never_asks_for_more_threads_than_cores():
    for cores in range(1, 65):
        plans_here = [plan_worker(cores, gpus) for gpus in range(min(cores, 8) + 1)]
        plans_here += [plan_worker(cores, 0, processes=p) for p in range(1, cores + 1)]
        plans_here += [plan_worker(cores, 0, torch_threads=t) for t in range(1, cores + 1)]
        for plan in plans_here:
            assert plan.processes * plan.torch_threads <= cores, plan
            assert not plan.oversubscribed
            # and most of the machine is used: no more than half the cores idle
            assert plan.processes * plan.torch_threads > cores / 2, plan


def test_overrides_past_the_cores_are_kept_and_said():
    plan = plan_worker(2, 0, processes=2, torch_threads=2)
    assert plan.oversubscribed
    assert "more threads than cores" in plan.describe()
    assert plan_worker(16, 0).describe() == (
        "16 training process(es) x 1 torch thread(s) (16 core(s)); "
        "a job alone uses up to 16 threads while the others idle")
    assert "2 GPU(s)" in plan_worker(16, 2).describe()


def test_only_a_derived_cpu_thread_count_is_elastic():
    assert plan_worker(2, 0).elastic and plan_worker(8, 0, processes=2).elastic
    assert not plan_worker(8, 0, torch_threads=1).elastic  # the user's count is kept as given
    assert not plan_worker(8, 0, processes=2, torch_threads=4).elastic
    assert not plan_worker(16, 2).elastic  # a GPU process has its share of the cores already
    assert "a job alone" not in plan_worker(8, 0, torch_threads=1).describe()


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"cores": 0}, "cores must be at least 1 (got 0)"),
        ({"cores": 2, "processes": 0}, "GROKLAB_WORKER_PROCESSES must be at least 1 (got 0)"),
        ({"cores": 2, "torch_threads": 0}, "GROKLAB_TORCH_THREADS must be at least 1 (got 0)"),
        ({"cores": 2, "gpus": -1}, "gpus must be at least 0 (got -1)"),
    ],
)
def test_impossible_counts_are_refused_by_name(kwargs, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        plan_worker(**kwargs)


def test_settings_override_the_host(monkeypatch):
    monkeypatch.setattr(plans, "host_cores", lambda: 8)
    monkeypatch.setattr(plans, "host_gpus", lambda: 0)
    assert plans.worker_plan(Settings()).processes == 8
    monkeypatch.setenv("GROKLAB_WORKER_PROCESSES", "2")
    plan = plans.worker_plan(Settings())
    assert (plan.processes, plan.torch_threads) == (2, 4)
    monkeypatch.setenv("GROKLAB_TORCH_THREADS", "1")
    assert plans.worker_plan(Settings()).torch_threads == 1
    monkeypatch.setenv("GROKLAB_WORKER_GPUS", "2")
    monkeypatch.delenv("GROKLAB_WORKER_PROCESSES")
    assert plans.worker_plan(Settings()).processes == 2
    # compose passes unset variables through as empty strings: work it out
    monkeypatch.setenv("GROKLAB_WORKER_PROCESSES", "")
    monkeypatch.setenv("GROKLAB_WORKER_GPUS", " ")
    assert plans.worker_plan(Settings()).processes == 8
    monkeypatch.setenv("GROKLAB_WORKER_PROCESSES", "0")
    with pytest.raises(ValidationError, match="worker_processes"):
        Settings()


def test_the_host_cores_follow_affinity_and_quota(monkeypatch, tmp_path):
    monkeypatch.setattr(plans.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(plans, "_cgroup_cpu_quota", lambda: None)
    assert plans.host_cores() == 4
    monkeypatch.setattr(plans, "_cgroup_cpu_quota", lambda: 2)
    assert plans.host_cores() == 2


def test_the_host_gpus_follow_cuda_visible_devices(monkeypatch, tmp_path):
    gpus = tmp_path / "gpus"
    for bus in ("0000:01:00.0", "0000:02:00.0", "0000:03:00.0"):
        (gpus / bus).mkdir(parents=True)
    real_path = plans.Path
    monkeypatch.setattr(
        plans, "Path", lambda p: gpus if p == "/proc/driver/nvidia/gpus" else real_path(p))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert plans.host_gpus() == 3
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2")
    assert plans.host_gpus() == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert plans.host_gpus() == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,-1,2")
    assert plans.host_gpus() == 1
