"""Live events of running experiments: the worker's publisher and the API process's hub.

The worker's recorders publish a small note after each stored batch of metrics and each progress
or status change (`publisher().metrics(id, step)`, `.status(id)`): a Redis PUBLISH on
`groklab:events:<experiment id>` when the broker is Redis, nothing in embedded mode. Publishing
never fails a job: with Redis down it logs, backs off and training goes on.

The hub (`EventHub`, one per API process) serves every watcher of GET .../events. It keeps one
topic per watched experiment and reads the database once per topic, not once per watcher: every
GROKLAB_EVENTS_POLL_S, and with Redis at once (at most every MIN_REFRESH_S) when a note arrives
on its one pattern subscription. What it reads (new points after the topic's cursor, the
status JSON) is encoded once and put on each watcher's queue. With no watcher left its tasks
end; the next watcher starts again each one that is not running. The hub also counts the open
streams, per token and in all (GROKLAB_EVENTS_MAX_STREAMS_PER_TOKEN, GROKLAB_EVENTS_MAX_STREAMS).
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from service import store
from service.contract.models import FINISHED_STATUSES
from service.contract.settings import Settings, get_settings
from service.schemas.experiments import ExperimentOut
from service.store.live import latest_metric_step, metric_points_after

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "groklab:events:"
MIN_REFRESH_S = 0.2  # with Redis: notes arriving faster than this are read together
WATCHER_QUEUE = 256  # items a slow watcher may fall behind before its stream is closed
RETRY_AFTER_S = 5.0  # a publisher that could not reach Redis waits this long to try again


def uses_redis(settings: Settings) -> bool:
    return settings.resolved_broker_url.startswith(("redis://", "rediss://"))


def encode(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def status_json(experiment: Any) -> str:
    """The `status` / `end` event data: what GET /api/v1/experiments/{id} returns."""
    return ExperimentOut.of(experiment).model_dump_json()


# ---- the worker side ----------------------------------------------------------------------


class NullPublisher:
    """Embedded mode: the API's poller reads the database, nothing to publish."""

    def metrics(self, experiment_id: str, step: int) -> None:
        pass

    def status(self, experiment_id: str) -> None:
        pass


class RedisPublisher(NullPublisher):
    def __init__(self, url: str) -> None:
        import redis

        self._errors = (redis.RedisError, OSError)
        self._redis = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
        self._retry_at = 0.0

    def metrics(self, experiment_id: str, step: int) -> None:
        self._publish(experiment_id, {"kind": "metrics", "step": step})

    def status(self, experiment_id: str) -> None:
        self._publish(experiment_id, {"kind": "status"})

    def _publish(self, experiment_id: str, note: dict) -> None:
        if time.monotonic() < self._retry_at:
            return
        try:
            self._redis.publish(CHANNEL_PREFIX + experiment_id, encode(note))
        except self._errors as exc:  # watchers fall back to the API's poll; training goes on
            self._retry_at = time.monotonic() + RETRY_AFTER_S
            log.warning("live events not published for %s (%s: %s); retrying in %.0f s",
                        experiment_id, type(exc).__name__, exc, RETRY_AFTER_S)


def publisher_for(settings: Settings) -> NullPublisher:
    return RedisPublisher(settings.resolved_broker_url) if uses_redis(settings) else NullPublisher()


@lru_cache
def publisher() -> NullPublisher:
    """This process's publisher, from the environment's settings."""
    return publisher_for(get_settings())


# ---- the API side -------------------------------------------------------------------------


def frame(event: str, data: str, id: int | None = None) -> bytes:
    """One server-sent event, encoded (data is one line of JSON)."""
    head = "" if id is None else f"id: {id}\r\n"
    return f"{head}event: {event}\r\ndata: {data}\r\n\r\n".encode()


@dataclass(frozen=True)
class Batch:
    """New points of whole steps, encoded once for every watcher: `frame` is the whole event."""

    step: int
    first_step: int
    points: list[dict]
    frame: bytes

    @classmethod
    def of(cls, points: list[dict]) -> Batch:
        step = points[-1]["step"]
        data = encode({"step": step, "points": points})
        return cls(step, points[0]["step"], points, frame("metrics", data, id=step))

    def after(self, step: int) -> Batch | None:
        """The points after `step` (what a watcher that has sent `step` still needs)."""
        if self.first_step > step:
            return self
        rest = [p for p in self.points if p["step"] > step]
        return Batch.of(rest) if rest else None


@dataclass(eq=False)
class Watcher:
    """One open stream: ("status" | "end", (json, frame)) and ("metrics", Batch) items."""

    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(WATCHER_QUEUE))
    overflowed: bool = False

    def put(self, item: tuple[str, Any]) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:  # too slow: its stream ends, the client resumes from its id
            self.overflowed = True


@dataclass(eq=False)
class Topic:
    cursor: int  # the largest step read for this experiment
    watchers: set[Watcher] = field(default_factory=set)
    status: str | None = None
    finished: bool = False


class EventHub:
    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        self.sessions = sessions
        self.poll_s = settings.events_poll_s
        self.redis_url = settings.resolved_broker_url if uses_redis(settings) else None
        self.topics: dict[str, Topic] = {}
        self._dirty: set[str] = set()
        self._wake: asyncio.Event | None = None
        self._poller: asyncio.Task | None = None
        self._listener: asyncio.Task | None = None
        self.max_streams = settings.events_max_streams
        self.max_streams_per_token = settings.events_max_streams_per_token
        self.streams: Counter[str] = Counter()  # open streams by token id

    def admit(self, token_id: str) -> str | None:
        """Count one more stream of this token, or say why not (the route answers 429)."""
        if sum(self.streams.values()) >= self.max_streams:
            return (f"this API process already serves {self.max_streams} live-event streams "
                    "(GROKLAB_EVENTS_MAX_STREAMS); try again later")
        if self.streams[token_id] >= self.max_streams_per_token:
            return (f"this token already holds {self.max_streams_per_token} live-event streams "
                    "(GROKLAB_EVENTS_MAX_STREAMS_PER_TOKEN); close one first")
        self.streams[token_id] += 1
        return None

    def release(self, token_id: str) -> None:
        self.streams[token_id] -= 1
        if self.streams[token_id] <= 0:
            del self.streams[token_id]

    async def subscribe(self, experiment_id: str) -> Watcher:
        """A watcher of the experiment, receiving from now on (call before reading the replay:
        what is stored meanwhile comes both ways, and the route drops the repeats)."""
        topic = self.topics.get(experiment_id)
        if topic is None:
            cursor = await run_in_threadpool(self._latest_step, experiment_id)
            topic = self.topics.setdefault(experiment_id, Topic(cursor))
        watcher = Watcher()
        topic.watchers.add(watcher)
        self._start()
        return watcher

    def unsubscribe(self, experiment_id: str, watcher: Watcher) -> None:
        topic = self.topics.get(experiment_id)
        if topic is None:
            return
        topic.watchers.discard(watcher)
        if not topic.watchers:
            del self.topics[experiment_id]

    @property
    def watchers(self) -> int:
        return sum(len(topic.watchers) for topic in self.topics.values())

    # ---- background tasks -----------------------------------------------------------------
    def _start(self) -> None:
        """Start each background task that is not running, whatever the other's state: the
        poll ends when the last watcher leaves, the Redis listener a moment later (or fails),
        and a watcher that comes in between must get both."""
        if self._poller is None or self._poller.done():
            self._wake = asyncio.Event()  # the listener reads self._wake at each note
            self._poller = asyncio.create_task(self._poll(), name="groklab-events-poll")
        if self.redis_url is not None and (self._listener is None or self._listener.done()):
            self._listener = asyncio.create_task(self._listen(), name="groklab-events-redis")

    async def _poll(self) -> None:
        """Read every topic each poll_s, and the noted ones as their notes arrive; end when no
        watcher is left."""
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        next_full = loop.time()
        while self.topics:
            timeout = next_full - loop.time()
            if timeout > 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except asyncio.TimeoutError:
                    pass
            self._wake.clear()
            if loop.time() >= next_full:
                due, next_full = set(self.topics), loop.time() + self.poll_s
            else:
                due = self._dirty & set(self.topics)
            self._dirty.clear()
            if due:
                cursors = {exp_id: self.topics[exp_id].cursor for exp_id in due}
                try:
                    found = await run_in_threadpool(self._read, cursors)
                except Exception:  # noqa: BLE001 - the database is away: watchers wait, polls go on
                    log.exception("live events: reading %d experiments failed", len(due))
                    found = {}
                for exp_id, (status, finished, points) in found.items():
                    self._deliver(exp_id, status, finished, points)
            await asyncio.sleep(MIN_REFRESH_S)

    async def _listen(self) -> None:
        """One pattern subscription per process; a note marks its experiment to be read."""
        import redis.asyncio as aioredis

        while self.topics:
            client = aioredis.Redis.from_url(self.redis_url)
            try:
                pubsub = client.pubsub()
                await pubsub.psubscribe(CHANNEL_PREFIX + "*")
                while self.topics:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is None or message["type"] != "pmessage":
                        continue
                    exp_id = message["channel"].decode()[len(CHANNEL_PREFIX):]
                    if exp_id in self.topics and self._wake is not None:
                        self._dirty.add(exp_id)
                        self._wake.set()
                await pubsub.aclose()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis away: the poll still serves
                log.warning("live events: Redis subscription lost (%s); retrying", exc)
                await asyncio.sleep(1.0)
            finally:
                await client.aclose()

    def _deliver(self, exp_id: str, status: str | None, finished: bool, points: list[dict]) -> None:
        topic = self.topics.get(exp_id)
        if topic is None:
            return
        items: list[tuple[str, Any]] = []
        if points:
            batch = Batch.of(points)
            topic.cursor = max(topic.cursor, batch.step)
            items.append(("metrics", batch))
        if status is not None and (status != topic.status or finished and not topic.finished):
            topic.status, topic.finished = status, finished
            kind = "end" if finished else "status"
            items.append((kind, (status, frame(kind, status))))
        for watcher in list(topic.watchers):
            for item in items:
                watcher.put(item)
            if watcher.overflowed:  # its stream ends (or never started): it gets nothing more
                self.unsubscribe(exp_id, watcher)

    # ---- database reads (in a worker thread) ----------------------------------------------
    def _latest_step(self, experiment_id: str) -> int:
        with self.sessions() as session:
            return latest_metric_step(session, experiment_id)

    def _read(self, cursors: dict[str, int]) -> dict[str, tuple[str | None, bool, list[dict]]]:
        """Per experiment: its status JSON, whether it finished, its points after the cursor.
        The status is read first: a finished job's points are all stored by then."""
        found = {}
        with self.sessions() as session:
            for exp_id, cursor in cursors.items():
                experiment = store.get_experiment(session, exp_id)
                if experiment is None:
                    continue
                finished = experiment.status in FINISHED_STATUSES
                points, complete = metric_points_after(session, exp_id, cursor)
                while finished and not complete:  # a finished job's end comes after all points
                    more, complete = metric_points_after(session, exp_id, points[-1]["step"])
                    points += more
                found[exp_id] = (status_json(experiment), finished, points)
        return found
