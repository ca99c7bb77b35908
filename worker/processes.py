"""A worker host's training processes: the Celery pool's children, one per planned process
(service/science/worker_plan.py), each held to its share of the cores and, on a GPU host, to its GPU.

The thread limits travel as environment variables, set in the worker's main process before
the pool starts and before any process loads torch: OpenMP and the BLAS libraries read theirs
when torch loads, and each child applies GROKLAB_TORCH_THREADS with torch.set_num_threads when
it starts (worker_process_init). Torch-free at import: the main process never loads it.
"""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from celery.signals import worker_process_init

from service.science.worker_plan import WorkerPlan

log = logging.getLogger(__name__)

# Read by OpenMP, MKL, OpenBLAS and macOS Accelerate when torch loads in a child.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS")
GPU_SLOTS = "GROKLAB_GPU_SLOTS"  # the GPUs the children share out, one each in turn
BUSY_DIR = "GROKLAB_BUSY_DIR"  # elastic threads: one file per child that trains a job
HOST_CORES = "GROKLAB_HOST_CORES"
ADJUST_EVERY_S = 2.0


def prepare_children(plan: WorkerPlan) -> None:
    """Set, in this (the main) process's environment, what every child inherits: the thread
    limits, and on a GPU host the list of GPUs to deal out."""
    for variable in THREAD_VARIABLES:
        os.environ[variable] = str(plan.torch_threads)
    os.environ["GROKLAB_TORCH_THREADS"] = str(plan.torch_threads)
    os.environ["GROKLAB_WORKER_PROCESSES"] = str(plan.processes)
    if plan.elastic and plan.cores > plan.torch_threads:
        busy = tempfile.mkdtemp(prefix="groklab-busy-")
        atexit.register(shutil.rmtree, busy, ignore_errors=True)
        os.environ[BUSY_DIR], os.environ[HOST_CORES] = busy, str(plan.cores)
    else:
        os.environ.pop(BUSY_DIR, None)
    if plan.gpus:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        slots = visible.split(",") if visible else [str(i) for i in range(plan.gpus)]
        os.environ[GPU_SLOTS] = ",".join(slot.strip() for slot in slots[: plan.gpus])
    else:
        os.environ.pop(GPU_SLOTS, None)


def gpu_for_child(index: int, slots: str | None) -> str | None:
    """The CUDA_VISIBLE_DEVICES of pool child `index`: the GPUs dealt out in turn (more
    processes than GPUs share them round robin); None on a CPU host."""
    if not slots:
        return None
    names = slots.split(",")
    return names[index % len(names)]


def child_index() -> int:
    """This pool child's index among the worker's training processes (0 outside a pool)."""
    from billiard.process import current_process

    return getattr(current_process(), "index", 0) or 0


def training_process_name(hostname: str, index: int | None = None) -> str:
    """The name a training process claims jobs under: the worker's node name and the child's
    index (`embedded@host#1`). No two live processes of a worker share it, and a pack claim
    tells the rows it won by it (service.store.claim_pack)."""
    return f"{hostname}#{child_index() if index is None else index}"


@worker_process_init.connect
def limit_child(**_: object) -> None:
    """In each pool child, before its first task: its GPU, then torch's threads."""
    index = child_index()
    gpu = gpu_for_child(index, os.environ.get(GPU_SLOTS))
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu  # before CUDA initialises in this child
    if os.environ.get(BUSY_DIR):  # a killed predecessor of this index left its mark
        Path(os.environ[BUSY_DIR], f"busy-{index}").unlink(missing_ok=True)
    threads = os.environ.get("GROKLAB_TORCH_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    log.info("training process %d: %s torch thread(s)%s", index, threads or "default",
             f", GPU {gpu}" if gpu is not None else "")


def _set_torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


class ThreadShare:
    """While a job trains in this process: its share of the cores that the worker's busy
    processes leave idle (see the module's docstring). A context manager around the job;
    adjust() is called from the training loop's polls and looks at most every every_s."""

    def __init__(self, folder: Path, index: int, cores: int, base: int,
                 set_threads: Callable[[int], None] = _set_torch_threads,
                 clock: Callable[[], float] = time.monotonic, every_s: float = ADJUST_EVERY_S) -> None:
        self.mark = Path(folder) / f"busy-{index}"
        self.folder, self.cores, self.base = Path(folder), cores, base
        self.set_threads, self.clock, self.every_s = set_threads, clock, every_s
        self.threads, self._checked = base, float("-inf")

    @classmethod
    def from_env(cls) -> "ThreadShare | None":
        """The share for this training process; None unless the plan is elastic."""
        folder, cores = os.environ.get(BUSY_DIR), os.environ.get(HOST_CORES)
        if not folder or not cores:
            return None
        return cls(Path(folder), child_index(), int(cores), int(os.environ.get("GROKLAB_TORCH_THREADS") or 1))

    def __enter__(self) -> "ThreadShare":
        self.mark.touch()
        self.adjust(force=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.mark.unlink(missing_ok=True)
        self._use(self.base)

    def adjust(self, force: bool = False) -> int:
        """Threads for the busy processes now: cores // busy, at least the plan's."""
        now = self.clock()
        if force or now - self._checked >= self.every_s:
            self._checked = now
            try:
                busy = sum(1 for name in os.listdir(self.folder) if name.startswith("busy-"))
            except OSError:  # the worker's folder is gone (shutting down): keep the plan's
                busy = self.cores
            self._use(max(self.base, self.cores // max(1, busy)))
        return self.threads

    def _use(self, threads: int) -> None:
        if threads != self.threads:
            log.info("training process %s: %d torch thread(s) (was %d)", self.mark.name, threads, self.threads)
            self.set_threads(threads)
            self.threads = threads
