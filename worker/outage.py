"""Riding out a database outage (a PostgreSQL restart, a failover, a network blip).

A worker's writes (metric flushes, checkpoints, progress, the final status) retry with
exponential backoff while the database is unreachable, for up to GROKLAB_DB_OUTAGE_S; every one
of them is idempotent or a compare-and-swap, so a write that reached the database before its
connection broke is harmless to repeat. Metric rows wait in the recorder's buffer meanwhile, so
that training goes on; a checkpoint and the end of the job wait for the database.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError
from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# What a lost connection or a server that is down (or restarting) raises through SQLAlchemy.
DATABASE_DOWN = (OperationalError, InterfaceError)
FIRST_WAIT_S = 0.2
LONGEST_WAIT_S = 5.0


def with_retries(call: Callable[[], T], what: str, patience_s: float) -> T:
    """call(), again with exponential backoff (0.2 s doubling to 5 s) while the database is
    unreachable, for up to patience_s; then the last error is raised."""
    retrying = Retrying(
        retry=retry_if_exception_type(DATABASE_DOWN),
        wait=wait_exponential(multiplier=FIRST_WAIT_S, max=LONGEST_WAIT_S),
        stop=stop_after_delay(patience_s),
        before_sleep=before_sleep_log(log, logging.WARNING),
        reraise=True,
    )
    return retrying(_named(call, what))


def _named(call: Callable[[], T], what: str) -> Callable[[], T]:
    def attempt() -> T:
        try:
            return call()
        except DATABASE_DOWN as exc:
            log.warning("%s: database unavailable (%s); retrying", what, type(exc).__name__)
            raise

    return attempt


class Backoff:
    """When a write that must not block (a metric flush in the training loop) may try again:
    at once after a success, then after 0.2 s, 0.4 s, ... up to 5 s after each failure in a
    row. `down_since` says how long the database has been failing (None: it is not)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.failures = 0
        self.down_since: float | None = None
        self._next_try = 0.0

    def ready(self) -> bool:
        return self.clock() >= self._next_try

    def failed(self) -> None:
        now = self.clock()
        if self.down_since is None:
            self.down_since = now
        self._next_try = now + min(FIRST_WAIT_S * 2**self.failures, LONGEST_WAIT_S)
        self.failures += 1

    def succeeded(self) -> None:
        self.failures = 0
        self.down_since = None
        self._next_try = 0.0

    def down_for(self) -> float:
        return 0.0 if self.down_since is None else self.clock() - self.down_since
