"""How many training processes a worker host runs, and how many torch threads each may use.

Grokking models are small: a ci-small step multiplies matrices of a few hundred rows, too small
for torch's intra-op threads to split well, and threads that wait for a busy core make a shared
machine crawl. So a CPU host runs one training process per core with one thread each
(bench/README.md, "Cores": two single-threaded processes train two runs in the time one
two-threaded process trains about one). While some of a CPU host's processes have no job, the
busy ones share the idle cores out (`elastic`, worker/processes.py: ThreadShare), so a single
run alone on the worker trains on every core as `groklab train` does. A GPU host runs one process per GPU, each with its
share of the cores. In every plan derived here processes x threads <= cores;
GROKLAB_WORKER_PROCESSES and GROKLAB_TORCH_THREADS override it.

plan_worker is pure (the counts in, the plan out); host_cores and host_gpus read this host
without importing torch, so that the API can size a sweep's packs with the same plan
(service/science/sweeps.py) and the worker can start its pool before any child loads torch.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from service.contract.settings import Settings


@dataclass(frozen=True)
class WorkerPlan:
    """A worker host's training processes and the torch threads of each."""

    processes: int
    torch_threads: int
    cores: int
    gpus: int
    # The thread count was derived, not given: a process alone may use the idle cores.
    elastic: bool = False

    @property
    def oversubscribed(self) -> bool:
        """Processes x threads asks for more cores than the host has (only explicit
        overrides can do that): their threads will wait for each other."""
        return self.processes * self.torch_threads > self.cores

    def describe(self) -> str:
        device = f"{self.gpus} GPU(s), " if self.gpus else ""
        line = (f"{self.processes} training process(es) x {self.torch_threads} torch thread(s) "
                f"({device}{self.cores} core(s))")
        if self.elastic and self.cores > self.torch_threads:
            line += f"; a job alone uses up to {self.cores} threads while the others idle"
        if self.oversubscribed:
            line += ("; more threads than cores: GROKLAB_WORKER_PROCESSES x "
                     "GROKLAB_TORCH_THREADS should not exceed the cores")
        return line


def plan_worker(
    cores: int, gpus: int = 0, processes: int | None = None, torch_threads: int | None = None
) -> WorkerPlan:
    """The training processes and torch threads for a host with `cores` cores and `gpus` GPUs.

    - CPU host: one process per core, one thread each.
    - GPU host: one process per GPU, each with an equal share of the cores.
    - `processes` alone: the cores shared among them (at least one thread each).
    - `torch_threads` alone: as many processes as fit in the cores at that many threads each
      (on a GPU host, still one per GPU).
    - both: taken as given.
    Elastic (idle cores shared out among the busy processes) on a CPU host whose thread count
    was not given.
    """
    if cores < 1:
        raise ValueError(f"cores must be at least 1 (got {cores})")
    if gpus < 0:
        raise ValueError(f"gpus must be at least 0 (got {gpus})")
    for name, value in (("GROKLAB_WORKER_PROCESSES", processes),
                        ("GROKLAB_TORCH_THREADS", torch_threads)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1 (got {value})")
    if processes is None:
        if gpus:
            processes = gpus
        else:
            processes = max(1, cores // torch_threads) if torch_threads else cores
    elastic = not gpus and torch_threads is None
    if torch_threads is None:
        torch_threads = max(1, cores // processes)
    return WorkerPlan(processes, torch_threads, cores, gpus, elastic)


def worker_plan(settings: Settings) -> WorkerPlan:
    """This host's plan under the settings' overrides."""
    gpus = settings.worker_gpus if settings.worker_gpus is not None else host_gpus()
    return plan_worker(host_cores(), gpus, settings.worker_processes, settings.torch_threads)


def host_cores() -> int:
    """The cores this process may run on: its CPU affinity (taskset, cpusets), capped by a
    cgroup CPU quota (docker --cpus) where there is one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform (macOS)
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(cores, quota) if quota else cores)


def _cgroup_cpu_quota() -> int | None:
    """CPUs allowed by the cgroup's quota, rounded up; None when unlimited or unknown."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]  # cgroup v2
        if quota == "max":
            return None
        return math.ceil(int(quota) / int(period))
    except (OSError, ValueError):
        pass
    try:
        root = Path("/sys/fs/cgroup/cpu")  # cgroup v1
        quota_us = int((root / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu.cfs_period_us").read_text())
        return math.ceil(quota_us / period_us) if quota_us > 0 else None
    except (OSError, ValueError):
        return None


def host_gpus() -> int:
    """NVIDIA GPUs this process can use, without loading CUDA: the driver's GPUs (its /proc
    entries, else the /dev/nvidiaN device nodes a container is given), as many as
    CUDA_VISIBLE_DEVICES lets through when it is set."""
    try:
        present = len(list(Path("/proc/driver/nvidia/gpus").iterdir()))
    except OSError:
        present = 0
    if not present:
        present = sum(1 for node in Path("/dev").glob("nvidia*")
                      if re.fullmatch(r"nvidia\d+", node.name))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return present
    names = [name for name in visible.split(",") if name.strip()]
    # CUDA stops at the first invalid entry, such as -1
    for i, name in enumerate(names):
        if name.strip().startswith("-"):
            names = names[:i]
            break
    return min(present, len(names))
