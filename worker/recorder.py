"""The bridge between the engine's callbacks and the database.

The engine reports through plain callbacks. The recorder batches metric rows and flushes them at
least once a second (and at every checkpoint and at the end), stores checkpoints, updates
progress and the heartbeat, and tells the engine to stop when the job was cancelled or taken
from this worker (its attempt no longer matches). Its writes carry the attempt: a worker whose
job was requeued and claimed again stores nothing more.

Through a database outage (worker.outage) the rows wait in the buffer and training goes on; a
checkpoint, the last flush and the final progress wait for the database, for up to patience_s.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from sqlalchemy.orm import Session, sessionmaker

from service import store
from service.infra import events
from service.science.progress import StepRate
from worker.outage import DATABASE_DOWN, Backoff, with_retries

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
        patience_s: float = 900.0,
        retention: store.CheckpointRetention | None = None,
    ) -> None:
        self.sessions = sessions
        self.retention = retention
        self.patience_s = patience_s
        self._backoff = Backoff(clock)
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
        self._events = events.publisher()  # live events: a note after each store (never fails)

    # ---- engine callbacks --------------------------------------------------------------
    def on_metrics(self, rows: list[dict]) -> None:
        self._rows.extend(rows)
        if self.clock() - self._last_flush >= self.flush_every_s and self._backoff.ready():
            self._last_flush = self.clock()
            try:
                self._store_rows()
            except DATABASE_DOWN as exc:  # keep training; the rows wait in the buffer
                self._backoff.failed()
                log.warning("experiment %s: database unavailable (%s); %d metric rows buffered",
                            self.experiment_id, type(exc).__name__, len(self._rows))
                if self._backoff.down_for() > self.patience_s:
                    raise
            else:
                self._backoff.succeeded()

    def on_checkpoint(self, step: int, blob: bytes, meta: dict) -> None:
        # Metrics first: a job resumed from this checkpoint then has every point up to it.
        self.flush()

        def add() -> object:
            with self.sessions() as s:
                return store.add_checkpoint(
                    s, self.experiment_id, step, blob, meta, retention=self.retention,
                    attempt=self.attempt,
                )

        if with_retries(add, f"checkpoint {step} of {self.experiment_id}", self.patience_s) is None:
            self.lose()

    def on_measures(self, step: int, measures: list[dict]) -> None:
        """The full progress measures of every member at an analysis step (for GET .../analysis)."""
        def put() -> None:
            with self.sessions() as s:
                store.put_cached_analysis(
                    s, self.experiment_id, step, {"step": step, "members": measures}
                )

        with_retries(put, f"analysis {step} of {self.experiment_id}", self.patience_s)

    def on_progress(self, step: int, total_steps: int) -> None:
        self._rate.observe(step)
        now = self.clock()
        if now - self._last_progress < self.progress_every_s and step < total_steps:
            return
        self._last_progress = now

        def update() -> bool:
            with self.sessions() as s:
                return store.update_progress(
                    s, self.experiment_id, self.attempt, step=step,
                    steps_per_s=self._rate.rate(), eta_s=self._rate.eta_s(step, total_steps),
                )

        if step >= total_steps:  # the last step is recorded whatever it takes
            still_ours = with_retries(update, f"progress of {self.experiment_id}", self.patience_s)
        else:
            try:
                still_ours = update()
            except DATABASE_DOWN:  # the next report tries again
                log.warning("experiment %s: progress not recorded (database unavailable)",
                            self.experiment_id)
                return
        if not still_ours:
            self.lose()
        else:
            self._events.status(self.experiment_id)

    def announce_status(self) -> None:
        """Tell live watchers the job's status changed (its end, say); never fails."""
        self._events.status(self.experiment_id)

    def should_stop(self) -> bool:
        if self._stop:
            return True
        now = self.clock()
        if now - self._last_cancel_poll >= self.cancel_poll_s:
            self._last_cancel_poll = now
            try:
                with self.sessions() as s:
                    if store.cancel_requested(s, self.experiment_id):
                        self._stop = True
            except DATABASE_DOWN:  # asked again at the next poll
                pass
        return self._stop

    def lose(self) -> None:
        """The job was taken from this attempt (requeued or finished elsewhere): stop training."""
        log.warning("experiment %s attempt %s is no longer ours; stopping", self.experiment_id, self.attempt)
        self.lost = True
        self._stop = True

    def flush(self) -> None:
        """Store every buffered row now, waiting out a database outage."""
        self._last_flush = self.clock()
        if self._rows:
            with_retries(self._store_rows, f"metrics of {self.experiment_id}", self.patience_s)
            self._backoff.succeeded()

    def _store_rows(self) -> None:
        """One try at storing the buffer; the rows leave it only once stored (a batch stored
        twice is harmless: ingestion skips the points it has)."""
        rows = list(self._rows)
        with self.sessions() as s:
            store.ingest_metrics(s, self.experiment_id, rows, attempt=self.attempt)
        del self._rows[:len(rows)]
        if rows:
            self._events.metrics(self.experiment_id, max(row["step"] for row in rows))
