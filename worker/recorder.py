"""The bridge between the engine's callbacks and the database.

The engine reports through plain callbacks. The recorder batches metric rows and flushes them at
least once a second (and at every checkpoint and at the end), stores checkpoints, updates
progress and the heartbeat, and tells the engine to stop when the job was cancelled or taken
from this worker (its attempt no longer matches).
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from sqlalchemy.orm import Session, sessionmaker

from service import store
from service.progress import StepRate

log = logging.getLogger(__name__)


class Recorder:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        experiment_id: str,
        attempt: int,
        *,
        total_steps: int,
        flush_every_s: float = 1.0,
        progress_every_s: float = 1.0,
        cancel_poll_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sessions = sessions
        self.experiment_id = experiment_id
        self.attempt = attempt
        self.total_steps = total_steps
        self.flush_every_s = flush_every_s
        self.progress_every_s = progress_every_s
        self.cancel_poll_s = cancel_poll_s
        self.clock = clock
        self._rows: list[dict] = []
        now = clock()
        self._last_flush = now
        self._last_progress = -1e18
        self._last_cancel_poll = now
        self._stop = False
        self.lost = False
        self._rate = StepRate(clock=clock)

    # ---- engine callbacks --------------------------------------------------------------
    def on_metrics(self, rows: list[dict]) -> None:
        self._rows.extend(rows)
        if self.clock() - self._last_flush >= self.flush_every_s:
            self.flush()

    def on_checkpoint(self, step: int, blob: bytes, meta: dict) -> None:
        # Metrics first: a job resumed from this checkpoint then has every point up to it.
        self.flush()
        with self.sessions() as s:
            store.add_checkpoint(s, self.experiment_id, step, blob, meta)

    def on_measures(self, step: int, measures: list[dict]) -> None:
        """The full progress measures of every member at an analysis step (for GET .../analysis)."""
        with self.sessions() as s:
            store.put_cached_analysis(s, self.experiment_id, step, {"step": step, "members": measures})

    def on_progress(self, step: int, total_steps: int) -> None:
        self._rate.observe(step)
        now = self.clock()
        if now - self._last_progress < self.progress_every_s and step < total_steps:
            return
        self._last_progress = now
        with self.sessions() as s:
            still_ours = store.update_progress(
                s, self.experiment_id, self.attempt, step=step,
                steps_per_s=self._rate.rate(), eta_s=self._rate.eta_s(step, total_steps),
            )
        if not still_ours:
            self.lose()

    def should_stop(self) -> bool:
        if self._stop:
            return True
        now = self.clock()
        if now - self._last_cancel_poll >= self.cancel_poll_s:
            self._last_cancel_poll = now
            with self.sessions() as s:
                if store.cancel_requested(s, self.experiment_id):
                    self._stop = True
        return self._stop

    def lose(self) -> None:
        """The job was taken from this attempt (requeued or finished elsewhere): stop training."""
        log.warning("experiment %s attempt %s is no longer ours; stopping", self.experiment_id, self.attempt)
        self.lost = True
        self._stop = True

    def flush(self) -> None:
        self._last_flush = self.clock()
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        with self.sessions() as s:
            store.ingest_metrics(s, self.experiment_id, rows)
