"""Prometheus: GET /metrics, and the middleware that times every request.

What is exported (no owner, experiment name or id in any label: /metrics needs no token):

- `groklab_experiments{status}`: experiments in each status.
- `groklab_running_jobs`: jobs being trained now (a sweep's pack is one job).
- `groklab_worker_steps_per_second{worker}`: training steps/s of the job each worker runs.
- `groklab_queue_depth{queue}`: messages waiting on each broker queue.
- `groklab_metric_rows_ingested_total`: metric points stored by every worker.
- `groklab_http_request_duration_seconds{route,method,status}`: API latency, by route template.

The gauges and the ingest counter are read from the database and the broker when Prometheus
scrapes (a few aggregate queries, cached for `cache_s`), so every API replica reports the same
numbers and workers on other hosts need no exporter of their own. The latency histogram lives
in the API processes: with several uvicorn workers, set PROMETHEUS_MULTIPROC_DIR to an empty
folder (before the processes start) and each process's samples are merged at scrape time.
"""
from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import store
from service.contract.models import STATUSES
from service.contract.settings import Settings
from service.infra.celery_app import QUEUES

log = logging.getLogger(__name__)
disable_created_metrics()  # no *_created series: they double the output and nothing reads them

HTTP_REQUEST_SECONDS = Histogram(
    "groklab_http_request_duration_seconds",
    "API request latency, by route template (never the raw path), method and status code.",
    ["route", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=None,  # each app's /metrics registry adds it (or the multiprocess collector)
)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"  # no route matched: a 404 (or 405), whatever path was asked for


class RequestLatency:
    """Pure ASGI middleware: one histogram observation per HTTP request, labelled with the
    template of the route that answered it (`/api/v1/experiments/{experiment_id}`), so labels
    stay few and carry no ids. No I/O per request."""

    def __init__(self, app: ASGIApp, histogram: Histogram = HTTP_REQUEST_SECONDS) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # an exception with no response sent is answered 500 by the server

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            method = scope.get("method", "")
            self.histogram.labels(
                route=route_template(scope),
                method=method if method in _METHODS else "other",
                status=str(status),
            ).observe(time.perf_counter() - start)


def route_template(scope: Scope) -> str:
    """The path template of the route that answered (`/api/v1/experiments/{experiment_id}`),
    read from the scope the router filled in. FastAPI keeps an included router whole, so its
    matched route's own path lacks the include prefix (/api/v1); FastAPI's effective route
    context has the full template (tests/deploy/test_observability.py checks it)."""
    context = scope.get("fastapi", {}).get("effective_route_context")
    template = getattr(context, "path_format", None)
    if template:
        return template
    route = scope.get("route")
    return getattr(route, "path_format", None) or getattr(route, "path", None) or UNMATCHED_ROUTE


class StackCollector(Collector):
    """The gauges read from the database and the broker at scrape time, cached for cache_s."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings, cache_s: float = 5.0):
        self.sessions = sessions
        self.settings = settings
        self.cache_s = cache_s
        self._lock = threading.Lock()
        self._cached: list[Metric] = []
        self._cached_at = float("-inf")
        self._redis = None

    def describe(self) -> Iterable[Metric]:
        return []  # the metrics depend on what is stored; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if time.monotonic() - self._cached_at >= self.cache_s:
                self._cached = self._read_database() + self._read_broker()
                self._cached_at = time.monotonic()
            yield from self._cached

    def _read_database(self) -> list[Metric]:
        by_status = GaugeMetricFamily(
            "groklab_experiments", "Experiments in each status.", labels=["status"]
        )
        running_jobs = GaugeMetricFamily(
            "groklab_running_jobs", "Jobs being trained now (a sweep's pack counts once)."
        )
        steps_per_s = GaugeMetricFamily(
            "groklab_worker_steps_per_second",
            "Training steps per second of the job each worker is running.", labels=["worker"],
        )
        # Counted from the stored points (metric_series.n is each series' point count), not in
        # the worker processes: workers on other hosts share no multiprocess folder with the
        # API, and the database counts every host's rows, each once (a redelivered batch adds
        # nothing). Deleting experiments lowers it; rate() reads that as a counter reset.
        ingested = CounterMetricFamily(
            "groklab_metric_rows_ingested", "Metric points stored, over every worker and host."
        )
        try:
            with self.sessions() as session:
                counts = store.stack_counts(session)
        except Exception:  # noqa: BLE001 - a scrape reports what it can; /readyz says why
            log.exception("/metrics: the database did not answer")
            return []
        for status in STATUSES:
            by_status.add_metric([status], counts.experiments_by_status.get(status, 0))
        running_jobs.add_metric([], counts.running_jobs)
        for worker, rate in counts.steps_per_s_by_worker:
            steps_per_s.add_metric([worker], rate or 0.0)
        ingested.add_metric([], counts.metric_points)
        return [by_status, running_jobs, steps_per_s, ingested]

    def _read_broker(self) -> list[Metric]:
        depth = GaugeMetricFamily(
            "groklab_queue_depth", "Messages waiting on each broker queue.", labels=["queue"]
        )
        url = self.settings.resolved_broker_url
        try:
            if url.startswith(("redis://", "rediss://")):
                if self._redis is None:
                    import redis

                    self._redis = redis.Redis.from_url(
                        url, socket_timeout=2, socket_connect_timeout=2
                    )
                pipe = self._redis.pipeline(transaction=False)
                for queue in QUEUES:
                    pipe.llen(queue)
                lengths = pipe.execute()
            elif url.startswith("filesystem://"):
                lengths = [_filesystem_queue_length(self.settings.broker_dir, q) for q in QUEUES]
            else:
                return []  # RabbitMQ: its own exporter reports queue depths
        except Exception:  # noqa: BLE001
            log.exception("/metrics: the broker did not answer")
            return []
        for queue, length in zip(QUEUES, lengths):
            depth.add_metric([queue], length)
        return [depth]


def _filesystem_queue_length(broker_dir: Path, queue: str) -> int:
    """kombu's filesystem transport keeps one `<time>_<uuid>.<queue>.msg` file per message."""
    return sum(1 for _ in (broker_dir / "out").glob(f"*.{queue}.msg"))


def metrics_registry(sessions: sessionmaker[Session], settings: Settings) -> CollectorRegistry:
    """What GET /metrics reports: the histogram (merged over processes when
    PROMETHEUS_MULTIPROC_DIR is set) and the stack's gauges."""
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:
        registry.register(HTTP_REQUEST_SECONDS)
    registry.register(StackCollector(sessions, settings))
    return registry


router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}},
                     "description": "Prometheus text format."},
               401: {"description": "GROKLAB_METRICS_TOKEN is set and the request did not "
                     "carry it as a bearer token."}},
)
def prometheus_metrics(request: Request) -> Response:
    """Prometheus exposition format. No groklab token, like /healthz: it carries counts and
    timings only, never an owner, an experiment name or an id. With GROKLAB_METRICS_TOKEN set,
    only `Authorization: Bearer <it>` is answered (401 otherwise)."""
    wanted = request.app.state.settings.metrics_token
    if wanted:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), wanted.encode()):
            return JSONResponse({"detail": "GET /metrics needs the metrics token "
                                 "(Authorization: Bearer <GROKLAB_METRICS_TOKEN>)"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
    return Response(generate_latest(request.app.state.metrics_registry),
                    media_type=CONTENT_TYPE_LATEST)


def install(app: FastAPI) -> None:
    """GET /metrics and the latency middleware (outermost of those added so far, so that it
    times them too)."""
    app.state.metrics_registry = metrics_registry(app.state.sessions, app.state.settings)
    app.add_middleware(RequestLatency)
    app.include_router(router)
