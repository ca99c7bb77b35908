"""Live events of an experiment: server-sent events (status, metrics, end)."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Header, HTTPException, Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from service import store
from service.access.auth import Principal
from service.api.deps import ExperimentIdPath, ReadPrincipal, SettingsDep, visible
from service.api.responses import NOT_FOUND, TOO_MANY, UNAUTHORIZED
from service.contract.models import FINISHED_STATUSES
from service.contract.settings import Settings
from service.infra.events import Batch, EventHub, encode, frame, status_json
from service.store.live import experiment_snapshot, metric_points_after

router = APIRouter(prefix="/experiments", tags=["experiments"], responses=UNAUTHORIZED)

EVENTS_DOC = """Live events of a job as server-sent events (`text/event-stream`):

- `event: status`, data: the job as `GET /api/v1/experiments/{id}` returns it; first on
  connect, then whenever it changes.
- `event: metrics`, `id: <step>`, data: `{"step": <step>, "points": [{"name", "member",
  "step", "value"}, ...]}`: new points of whole steps, `step` (and `id`) the largest of them.
- `event: end`, data: the finished job; then the stream closes.
- `: ping` comments every GROKLAB_EVENTS_PING_S seconds.

On connect every stored point is replayed first (from the database), then live points follow;
with `Last-Event-ID: N` (the id of the last metrics event received) only the points with
step > N are replayed. No point is sent twice in one stream. A stream that falls too far
behind, or whose client does not accept a write within GROKLAB_EVENTS_SEND_TIMEOUT_S, is
closed, and every stream ends after GROKLAB_EVENTS_MAX_LIFETIME_S: reconnect with
Last-Event-ID. The token is checked again every ping interval: once revoked, `event: error`
(`{"detail": ...}`) ends the stream. 429 past GROKLAB_EVENTS_MAX_STREAMS_PER_TOKEN open
streams of one token, or GROKLAB_EVENTS_MAX_STREAMS of the API process."""


def get_hub(request: Request) -> EventHub:
    """The app's event hub (one per API process), made on first use."""
    state = request.app.state
    hub = getattr(state, "events_hub", None)
    if hub is None:
        hub = state.events_hub = EventHub(state.sessions, state.settings)
    return hub


@router.get(
    "/{experiment_id}/events",
    response_class=EventSourceResponse,
    responses={**NOT_FOUND, **TOO_MANY, 200: {"content": {"text/event-stream": {}},
                                              "description": "The event stream."}},
    description=EVENTS_DOC,
)
async def experiment_events(
    request: Request,
    principal: ReadPrincipal,
    experiment_id: ExperimentIdPath,
    settings: SettingsDep,
    last_event_id: Annotated[int, Header(
        ge=-1, le=2**62, description="The id of the last metrics event received: replay after it "
        "(-1, the default: replay everything).")] = -1,
) -> EventSourceResponse:
    hub = get_hub(request)
    sessions = request.app.state.sessions
    after = last_event_id
    refused = hub.admit(principal.token_id)
    if refused is not None:
        raise HTTPException(status_code=429, detail=refused, headers={"Retry-After": "5"})
    try:
        return await _open_stream(request, hub, sessions, principal, experiment_id, settings, after)
    except BaseException:
        hub.release(principal.token_id)
        raise


async def _open_stream(
    request: Request, hub: EventHub, sessions, principal: Principal, experiment_id: UUID,
    settings: Settings, after: int,
) -> EventSourceResponse:
    """The stream of one admitted watcher; the hub's count of its token's streams is released
    when it ends."""
    exp_id = str(experiment_id)
    loop = asyncio.get_running_loop()
    ends_at = loop.time() + settings.events_max_lifetime_s

    def read_start() -> tuple[str, bool, list[dict], bool]:
        """One thread hop per connect: the job (404 unless visible), the replay's first page."""
        with sessions() as session:
            found = visible(experiment_snapshot(session, exp_id), principal, "experiment",
                            experiment_id)
            points, complete = metric_points_after(session, exp_id, after)
        return status_json(found), found.status in FINISHED_STATUSES, points, complete

    def read_points(step: int) -> tuple[list[dict], bool]:
        with sessions() as session:
            return metric_points_after(session, exp_id, step)

    def token_live() -> bool:
        with sessions() as session:
            return store.token_is_live(session, principal.token_id)

    watcher = await hub.subscribe(exp_id)  # before the replay: nothing falls in between
    try:
        status, finished, points, complete = await run_in_threadpool(read_start)
    except BaseException:
        hub.unsubscribe(exp_id, watcher)
        raise

    async def stream() -> AsyncIterator[bytes]:
        nonlocal status, points, complete
        try:
            yield frame("status", status)
            sent = after
            while True:  # the replay, a page at a time; what is stored after it comes live
                if points:
                    batch = Batch.of(points)
                    yield batch.frame
                    sent = batch.step
                if complete:
                    break
                points, complete = await run_in_threadpool(read_points, sent)
            if finished:  # read before the replay: every point was in it
                yield frame("end", status)
                return
            next_check = loop.time() + settings.events_ping_s
            while not watcher.overflowed:  # live: frames the hub encoded once for everyone
                now = loop.time()
                if now >= ends_at:
                    return  # its lifetime is up: the client reconnects with Last-Event-ID
                if now >= next_check:  # the token again, once per ping interval
                    next_check = now + settings.events_ping_s
                    if not await run_in_threadpool(token_live):
                        yield frame("error", encode({"detail": "the token was revoked"}))
                        return
                try:
                    first = await asyncio.wait_for(
                        watcher.queue.get(), min(ends_at, next_check) - loop.time())
                except asyncio.TimeoutError:
                    continue
                items = [first]
                while not watcher.queue.empty():
                    items.append(watcher.queue.get_nowait())
                frames, ended = [], False
                for kind, item in items:
                    if kind == "metrics":
                        batch = item.after(sent)
                        if batch is not None:
                            frames.append(batch.frame)
                            sent = batch.step
                    elif item[0] != status or kind == "end":
                        status = item[0]
                        frames.append(item[1])
                        ended = kind == "end"
                        if ended:
                            break
                if frames:
                    yield b"".join(frames)  # one write for what came together
                if ended:
                    return
        finally:
            hub.unsubscribe(exp_id, watcher)
            hub.release(principal.token_id)

    return EventSourceResponse(
        stream(), ping=settings.events_ping_s, send_timeout=settings.events_send_timeout_s,
        ping_message_factory=lambda: ServerSentEvent(comment="ping"),
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
