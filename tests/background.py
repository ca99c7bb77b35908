"""The reproductions the suite checks at ci scale, trained in the background.

A reproduction's ci scale is minutes of training; the rest of the suite, one test at a time,
keeps about one of this machine's two cores busy. So the reproductions that the session's tests
read (`@pytest.mark.reproduction(NAME)`) are submitted at the session's first test, as
`POST /api/v1/reproductions/{NAME}` with `{"scale": "ci"}`, to a stack of their own (its own
database and Redis database, an API and a worker with two single-threaded training processes)
whose worker trains at the lowest CPU priority: it takes the time the other tests leave idle and
gives way to them. The tests that read the reports run last (tests/conftest.py orders them), and
each waits for its run to finish.
"""
from __future__ import annotations

import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.integration.conftest import Stack

MARKER = "reproduction"
# The worker's niceness: the lowest priority, so the foreground tests never wait for it
# (GROKLAB_TEST_BACKGROUND_NICE=0 runs the reproductions alone at full speed).
NICE = int(os.environ.get("GROKLAB_TEST_BACKGROUND_NICE", "19"))
# A reproduction's whole run at ci scale, with the rest of the suite already done.
WAIT_S = 1500.0


def wanted(items: list[pytest.Item]) -> list[str]:
    """The reproductions the selected tests read, by name."""
    return sorted({m.args[0] for item in items for m in item.iter_markers(MARKER)})


@dataclass
class Background:
    """The background stack and the sweep id of each reproduction submitted to it."""

    stack: Stack
    runs: dict[str, str] = field(default_factory=dict)

    def report(self, name: str, timeout_s: float = WAIT_S) -> dict:
        """The run's report (GET /api/v1/sweeps/{id}/report) once every member has finished."""
        client = self.stack.client
        deadline = time.monotonic() + timeout_s
        while True:
            report = client.get(f"/api/v1/sweeps/{self.runs[name]}/report").json()
            if report["verdict"] is not None:
                return report
            assert time.monotonic() < deadline, f"{name} unfinished after {timeout_s:.0f} s: {report['sweep']}"
            time.sleep(1.0)


def start(names: list[str], admin_url: str, redis_url: str, data_dir: Path, exits: ExitStack) -> Background:
    """The stack, started, with every reproduction in names submitted at ci scale."""
    from tests.integration.conftest import running_stack

    stack = exits.enter_context(running_stack(
        admin_url, redis_url, data_dir, workers=1, worker_nice=NICE,
        GROKLAB_WORKER_PROCESSES="2", GROKLAB_TORCH_THREADS="1",
        # A worker at the lowest priority may wait for a core: slow heartbeats must not make
        # the lifecycle loop take its jobs for dead.
        GROKLAB_HEARTBEAT_S="5", GROKLAB_HEARTBEAT_TIMEOUT_S="300", GROKLAB_RECONCILE_AFTER_S="60",
    ))
    background = Background(stack)
    for name in names:
        r = stack.client.post(f"/api/v1/reproductions/{name}", json={"scale": "ci"})
        assert r.status_code == 201, r.text
        background.runs[name] = r.json()["sweep"]["id"]
    return background
