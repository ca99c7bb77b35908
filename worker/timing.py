"""Where a job's wall time goes, for the worker's log and bench/bench_sweep.py.

A JobClock adds up the seconds a job spends in each phase: building or resuming the trainer
("setup"), the optimiser steps ("steps"), evaluations on the full sets ("evaluate"), the Fourier
measures ("analysis"), serialising and storing checkpoints ("checkpoints"), handing metric rows and
progress to the database ("recording"), and the members' summaries, retention and final status
("finish"), and polling for stop and pause requests and members leaving ("control"). "other" is
the rest of the job's wall time from its claim on (the loop itself). The
clock wraps the trainer's methods and the job's callbacks from outside, so the engine knows
nothing of it; a perf_counter pair costs well under a microsecond against a step's milliseconds.
"""
from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

PHASES = ("setup", "steps", "evaluate", "analysis", "checkpoints", "recording", "control", "finish")


class JobClock:
    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.started = clock()
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._open: str | None = None  # the phase being timed: nested calls count once

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self._open is not None:  # e.g. a checkpoint stored from within a recording call
            yield
            return
        self._open, t0 = name, self.clock()
        try:
            yield
        finally:
            self.seconds[name] += self.clock() - t0
            self._open = None

    def timed(self, name: str, fn: F | None) -> F | None:
        """fn, counting its calls' time under `name` (None stays None)."""
        if fn is None:
            return None

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self.phase(name):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    def instrument(self, trainer: Any) -> None:
        """Time the trainer's steps, evaluations and checkpoint serialisation (instance
        attributes shadow the methods for this trainer only)."""
        trainer.train_step = self.timed("steps", trainer.train_step)
        trainer.evaluate = self.timed("evaluate", trainer.evaluate)
        trainer.member_checkpoints = self.timed("checkpoints", trainer.member_checkpoints)

    def report(self) -> dict[str, float]:
        """Seconds per phase, "other" and "wall" (since the clock started), rounded to ms."""
        wall = self.clock() - self.started
        out = {name: round(s, 3) for name, s in self.seconds.items()}
        out["other"] = round(max(0.0, wall - sum(self.seconds.values())), 3)
        out["wall"] = round(wall, 3)
        return out

    def describe(self) -> str:
        """One log line: the wall time and each phase's seconds and share of it."""
        r = self.report()
        wall = r["wall"] or 1e-9
        parts = ", ".join(f"{name} {r[name]:.1f} s ({r[name] / wall:.0%})"
                          for name in (*PHASES, "other") if r[name] >= 0.05)
        return f"{r['wall']:.1f} s: {parts}"
