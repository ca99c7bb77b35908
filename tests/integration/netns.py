"""Hosts of a test's own: network namespaces joined to this machine by veth pairs, and a TCP
forwarder that lets them reach the PostgreSQL and Redis that listen on 127.0.0.1 only."""
from __future__ import annotations

import asyncio
import subprocess
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass(frozen=True)
class Host:
    """A network namespace with one veth link to the root namespace: `address` is the host's
    own, `gateway` the root namespace's end of the link (where the forwarder listens)."""

    namespace: str
    address: str
    gateway: str

    def command(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *argv]


@contextmanager
def hosts(count: int) -> Iterator[list[Host]]:
    """`count` namespaces, each on a /30 of 10.213.<random>.0/24 (root end .1, host end .2 of
    its block). Everything is deleted on the way out, whatever happened."""
    tag = uuid.uuid4().hex[:6]
    octet = 1 + uuid.uuid4().int % 250
    made: list[Host] = []
    try:
        for i in range(count):
            namespace, outside, inside = f"gl-h{i}-{tag}", f"glh{i}{tag}", f"glh{i}{tag}p"
            base = 4 * i
            host = Host(namespace, f"10.213.{octet}.{base + 2}", f"10.213.{octet}.{base + 1}")
            ip("netns", "add", namespace)
            made.append(host)
            ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            ip("link", "set", inside, "netns", namespace)
            ip("addr", "add", f"{host.gateway}/30", "dev", outside)
            ip("link", "set", outside, "up")
            ip("netns", "exec", namespace, "ip", "addr", "add", f"{host.address}/30", "dev", inside)
            ip("netns", "exec", namespace, "ip", "link", "set", inside, "up")
            ip("netns", "exec", namespace, "ip", "link", "set", "lo", "up")
        yield made
    finally:
        for i, host in enumerate(made):
            # Deleting the namespace destroys the veth pair with it, both ends.
            subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True)
            subprocess.run(["ip", "link", "del", f"glh{i}{tag}"], capture_output=True)


class TcpForwarder:
    """Forwards TCP connections, byte for byte, from listening addresses to targets; runs an
    asyncio loop in a daemon thread of the test process."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: list[asyncio.base_events.Server] = []

    def forward(self, listen_host: str, target_host: str, target_port: int) -> int:
        """Listen on listen_host (a free port, returned) and forward to the target."""

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                target_reader, target_writer = await asyncio.open_connection(target_host, target_port)
            except OSError:
                writer.close()
                return
            await asyncio.gather(pipe(reader, target_writer), pipe(target_reader, writer),
                                 return_exceptions=True)

        async def start() -> int:
            server = await asyncio.start_server(handle, listen_host, 0)
            self.servers.append(server)
            return server.sockets[0].getsockname()[1]

        return asyncio.run_coroutine_threadsafe(start(), self.loop).result(timeout=10)

    def close(self) -> None:
        async def stop() -> None:
            for server in self.servers:
                server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
