"""Server-sent events as the client reads them: the WHATWG event-stream format, line by line."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class ServerSentEvent:
    event: str
    data: str
    id: str | None


def parse_sse(lines: Iterable[str]) -> Iterator[ServerSentEvent]:
    """The events of a text/event-stream, line by line (the WHATWG rules): `event:`, `data:`
    (several lines joined by newlines), `id:`; comments (`: ping`) and `retry:` ignored; a
    blank line dispatches. An event without data is dropped, as a browser drops it; so is an
    unfinished one at the end of the stream."""
    event, data, last_id = "", [], None
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield ServerSentEvent(event or "message", "\n".join(data), last_id)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
        elif field == "id" and "\x00" not in value:
            last_id = value
