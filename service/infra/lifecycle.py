"""Keeping every job alive: heartbeats, the reaper and the reconciler.

The database is the source of truth; the broker only wakes workers. Three things can go wrong
with a broker-driven job, and each has its answer here:

- A worker dies mid-job (OOM kill, SIGKILL, a host reboot). Its heartbeat goes stale; the
  **reaper** puts the job back to 'queued' and enqueues it again. The next claim resumes from
  the latest checkpoint. After `max_attempts` claims the job fails with a reason that says so.
- The broker loses messages (Redis flushed or restarted without persistence). The
  **reconciler** finds queued jobs with no message on the broker and enqueues them again.
- A message is delivered twice (Redis visibility_timeout, reject_on_worker_lost requeues).
  The claim is a compare-and-swap on (status, attempt), so the second copy finds the job
  running or finished and does nothing.

Both loops run in a background thread of the API process (`LifecycleLoop`, started by the app's
lifespan), so `groklab up`, `groklab api` and every API replica keep jobs moving with no extra
process. Several replicas are safe: each requeue is a compare-and-swap, and a duplicate message
is harmless.

The job-state reads and compare-and-swap writes of both loops are in the store
(`store.reap_stale_jobs`, `store.queued_jobs`); this module holds the loop and what it asks the
broker.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import threading
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Iterable

from sqlalchemy.orm import Session, sessionmaker

from service import store
from service.contract.settings import Settings

log = logging.getLogger(__name__)


# ---- what the broker holds ----------------------------------------------------------------
def _job_id_of(message: dict) -> str | None:
    """The experiment id carried by one serialized kombu message (JSON, body base64)."""
    try:
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0]) if args else None
    except (KeyError, ValueError, TypeError, IndexError):
        return None


def broker_job_ids(
    broker_url: str, queues: Iterable[str], broker_dir: Path | None = None,
    limit: int | None = None,
) -> set[str] | None:
    """Experiment ids with a message waiting on the broker in `queues`.

    Supported: Redis (the queue lists) and the filesystem transport (one file per message).
    None for any other broker, and when a queue holds more than `limit` messages (the scan
    stops there, whatever the queue's length): the reconciler then leaves it alone. Messages
    delivered but not acked are not counted: a live worker claims a job within moments of
    receiving it, so a job still queued long after delivery sits with a dead worker, and
    enqueueing it again is right.
    """
    ids: set[str] = set()
    if broker_url.startswith(("redis://", "rediss://")):
        import redis

        client = redis.Redis.from_url(broker_url)
        try:
            for queue in queues:
                if limit is not None and client.llen(queue) > limit:
                    return None
                for raw in client.lrange(queue, 0, -1 if limit is None else limit - 1):
                    job = _job_id_of(json.loads(raw))
                    if job:
                        ids.add(job)
        finally:
            client.close()
        return ids
    if broker_url.startswith("filesystem://") and broker_dir is not None:
        wanted = {f"{queue}.msg" for queue in queues}
        paths = []
        folder = broker_dir / "out"
        with os.scandir(folder) if folder.is_dir() else nullcontext(iter(())) as entries:
            for entry in entries:  # kombu names a message <ms>_<uuid>.<queue>.msg
                if entry.name.partition(".")[2] in wanted:
                    paths.append(entry.path)
                    if limit is not None and len(paths) > limit:
                        return None
        for path in paths:
            try:
                job = _job_id_of(json.loads(Path(path).read_bytes()))
            except (OSError, ValueError):
                continue  # taken by a worker between the listing and the read
            if job:
                ids.add(job)
        return ids
    return None


def reconcile_lost_messages(
    session: Session, settings: Settings, enqueue: Callable[[str, str], None]
) -> list[str]:
    """Enqueue again every job that has been queued for a while with no message on the broker.

    Bounded per tick: the reconcile_scan_limit oldest queued jobs, and per queue at most as
    many broker messages (a longer queue is left alone until it drains below: a broker that
    lost its messages holds few). A filesystem broker hands a message to a worker by deleting
    its file, so a job between delivery and claim has no file for a moment; the grace period
    covers that (a duplicate message would be harmless anyway: the claim is a compare-and-swap).
    """
    limit = settings.reconcile_scan_limit
    candidates = store.queued_jobs(session, settings.reconcile_after_s, limit=limit)
    lost = []
    for queue in sorted({q for _, q in candidates}):
        present = broker_job_ids(settings.resolved_broker_url, [queue], settings.broker_dir, limit)
        if present is None:
            continue
        lost += [(i, q) for i, q in candidates if q == queue and i not in present]
    for exp_id, queue in lost:
        log.warning("job %s is queued but the broker has no message for it: enqueueing again", exp_id)
        enqueue(exp_id, queue)
    return [i for i, _ in lost]


class LifecycleLoop:
    """The reaper and the reconciler, every `interval_s`, in a daemon thread."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings,
                 enqueue: Callable[[str, str], None]) -> None:
        self.sessions = sessions
        self.settings = settings
        self.enqueue = enqueue
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="groklab-lifecycle", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def tick(self) -> None:
        with self.sessions() as session:
            requeued, _ = store.reap_stale_jobs(session, self.settings.heartbeat_timeout_s)
            for job_id, queue in store.job_queues(session, requeued).items():
                self.enqueue(job_id, queue)
            reconcile_lost_messages(session, self.settings, self.enqueue)

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.reaper_interval_s):
            try:
                self.tick()
            except Exception:  # a broker or database hiccup must not end the loop
                log.exception("lifecycle tick failed; trying again in %ss", self.settings.reaper_interval_s)
