"""API serving capacity: the status route side by side with /healthz, in one run.

Starts the embedded API (one uvicorn process on SQLite, like `groklab api`) with a stored
experiment and measures, against the same server:

1. throughput with N concurrent connections (a light keep-alive load generator on asyncio
   streams), GET /healthz and GET /api/v1/experiments/{id} alternated, best of --rounds, and
   their ratio (goal: status >= 50% of /healthz);
2. 50 and 200 clients polling the status route once a second for DURATION seconds: p50/p99
   latency and errors (goal: p99 <= 50 ms at 200 clients);
3. 1,000 SSE watchers of one running job (a writer process stores metrics and progress as a
   worker would): the API process's CPU time over the window (goal: under one core), the
   events the watchers received, and whether each got the writer's last step.

    python bench/bench_api.py [--connections 20] [--seconds 5] [--rounds 3] [--poll-seconds 20]
        [--pollers 50,200] [--watchers 1000] [--skip-sse | --only-sse]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import multiprocessing
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service import store  # noqa: E402
from service.access import auth  # noqa: E402
from service.contract.settings import Settings  # noqa: E402
from service.contract.spec import spec_from_preset  # noqa: E402
from service.infra.db import make_engine, make_sessionmaker, migrate  # noqa: E402

TINY = {"model": {"d_model": 16, "n_heads": 2, "d_mlp": 32}, "training": {"steps": 100_000}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def prepare(data_dir: Path) -> tuple[Settings, str, list[str]]:
    settings = Settings(data_dir=data_dir)
    migrate(settings.resolved_database_url)
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url))
    with sessions() as s:
        _row, token = auth.create_token(s, "bench", "admin")
        ids = [
            store.create_experiment(
                s, spec_from_preset("ci-small", name=f"bench-{i}", **TINY), "cpu", owner="bench"
            ).id
            for i in range(2)
        ]
    return settings, token, ids


def start_api(data_dir: Path, port: int, env_extra: dict[str, str]) -> subprocess.Popen:
    env = {**os.environ, "GROKLAB_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT), **env_extra}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
         "--no-access-log"],
        env=env, cwd=data_dir,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the API did not start")


class Connection:
    """A keep-alive HTTP/1.1 client on plain asyncio streams: a load generator light enough
    that the server, not the client, is what gets measured (httpx costs several times more
    CPU per request than the routes under test)."""

    def __init__(self, port: int, headers: dict[str, str]) -> None:
        self.port = port
        self.head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> int:
        """GET path; the status code (the body is read and dropped)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{self.head}\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = next((int(line.split(":", 1)[1]) for line in lines
                       if line.lower().startswith("content-length:")), 0)
        await self.reader.readexactly(length)
        return int(lines[0].split()[1])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def throughput(port: int, path: str, headers: dict, connections: int, seconds: float):
    """Requests/s with `connections` clients each sending back-to-back requests."""
    done = errors = 0
    clients = [Connection(port, headers) for _ in range(connections)]
    for client in clients:  # open (and warm) the connections
        await client.get(path)
    end = time.perf_counter() + seconds

    async def one(client: Connection) -> None:
        nonlocal done, errors
        while time.perf_counter() < end:
            errors += await client.get(path) != 200
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(one(c) for c in clients))
    for client in clients:
        client.close()
    return done / (time.perf_counter() - start), errors


async def polling(port: int, path: str, headers: dict, clients: int, seconds: float):
    """`clients` clients each GET once a second (spread over the second): latencies, errors."""
    latencies: list[float] = []
    errors = 0

    async def one(k: int) -> None:
        nonlocal errors
        client = Connection(port, headers)
        await asyncio.sleep(k / clients)
        start = time.perf_counter()
        n = 0
        while time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            try:
                errors += await client.get(path) != 200
            except (OSError, asyncio.IncompleteReadError):
                errors += 1
                client.close()
                client = Connection(port, headers)
            latencies.append(time.perf_counter() - t0)
            n += 1
            await asyncio.sleep(max(0.0, start + n - time.perf_counter()))
        client.close()

    await asyncio.gather(*(one(k) for k in range(clients)))
    latencies.sort()
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    return p(0.50), p(0.99), errors, len(latencies)


def write_like_a_worker(settings: Settings, experiment_id: str, stop) -> int:
    """Claim the job and store 4 metrics per step and the progress, ~20 steps a second, with
    the recorder's publisher: what a running worker does (run in a process of its own)."""
    from service.infra import events

    sessions = make_sessionmaker(make_engine(settings.resolved_database_url))
    publisher = events.publisher_for(settings)
    with sessions() as s:
        claimed = store.claim_experiment(s, experiment_id, "bench-worker")
        attempt = claimed.attempt
    step = 0
    while not stop.is_set():
        rows = [{"name": n, "member": 0, "step": step, "value": 1.0 / (step + 1)}
                for n in ("train_loss", "val_loss", "train_acc", "val_acc")]
        with sessions() as s:
            store.ingest_metrics(s, experiment_id, rows, attempt=attempt)
            store.update_progress(s, experiment_id, attempt, step=step, steps_per_s=20.0,
                                  eta_s=1.0)
        publisher.metrics(experiment_id, step)
        publisher.status(experiment_id)
        step += 1
        time.sleep(0.05)
    return step


async def sse_watchers(port: int, path: str, token: str, watchers: int, seconds: float,
                       pid: int, stop) -> tuple[float, float, int, int]:
    """`watchers` open streams (plain asyncio sockets: a light client) of a job that a writer
    process feeds; over `seconds`: (cores used by the API process, metrics events per watcher
    per second). Then the writer stops: (watchers that received its last step, that step)."""
    received = [0] * watchers
    last = [-1] * watchers
    closed = [False] * watchers
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
               "Accept: text/event-stream\r\n\r\n").encode()

    async def one(k: int, ready: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await writer.drain()
        try:
            while line := await reader.readline():
                if line.startswith(b"id: "):
                    last[k] = int(line[4:])
                elif line.startswith(b"event: metrics"):
                    received[k] += 1
                    ready.set()  # its replay is done
        finally:
            closed[k] = True
            writer.close()

    readies = [asyncio.Event() for _ in range(watchers)]
    tasks = []
    for k in range(watchers):  # connect a hundred at a time
        tasks.append(asyncio.create_task(one(k, readies[k])))
        if k % 100 == 99:
            await asyncio.sleep(0.2)
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 120)
    await asyncio.sleep(2)
    counted = received[:]
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    await asyncio.sleep(seconds)
    elapsed = time.perf_counter() - t0
    cores = (cpu_seconds(pid) - cpu0) / elapsed
    rate = sum(b - a for a, b in zip(counted, received)) / watchers / elapsed
    stop.set()
    final = -1
    for _ in range(100):  # the writer's last step, then every watcher has it (or 20 s pass)
        await asyncio.sleep(0.2)
        final = max(last)
        if stop.is_set() and all(step == final for step in last):
            break
    ended = sum(closed)  # streams the server closed (a watcher too slow to keep up)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return cores, rate, sum(step == final for step in last), final, ended


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--poll-seconds", type=float, default=20.0)
    parser.add_argument("--pollers", default="50,200")
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--sse-seconds", type=float, default=10.0)
    parser.add_argument("--skip-sse", action="store_true")
    parser.add_argument("--only-sse", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        settings, token, (status_id, running_id) = prepare(data_dir)
        port = free_port()
        # one token watches with all 1,000 streams: lift its per-token cap for the benchmark
        proc = start_api(data_dir, port, {"GROKLAB_EVENTS_MAX_STREAMS_PER_TOKEN": "2000"})
        auth_header = {"Authorization": f"Bearer {token}"}
        status_path = f"/api/v1/experiments/{status_id}"
        try:
            rates: dict[str, float] = {}
            targets = (("/healthz", "/healthz", {}), ("status", status_path, auth_header))
            for _ in range(0 if args.only_sse else args.rounds):  # alternated; best of each
                for label, path, headers in targets:
                    rate, errors = asyncio.run(
                        throughput(port, path, headers, args.connections, args.seconds)
                    )
                    rates[label] = max(rates.get(label, 0.0), rate)
                    print(f"throughput {label:9s} {args.connections} connections: {rate:7.0f} "
                          f"req/s ({errors} errors)", flush=True)
            if rates:
                print(f"best of {args.rounds}: /healthz {rates['/healthz']:.0f} req/s, status "
                      f"{rates['status']:.0f} req/s, ratio status/healthz "
                      f"{rates['status'] / rates['/healthz']:.2f}", flush=True)
            for clients in [] if args.only_sse else (int(c) for c in args.pollers.split(",")):
                p50, p99, errors, n = asyncio.run(
                    polling(port, status_path, auth_header, clients, args.poll_seconds)
                )
                print(f"polling {clients} clients once/s for {args.poll_seconds:.0f}s: p50 "
                      f"{p50:.1f} ms, p99 {p99:.1f} ms, {errors} errors of {n}", flush=True)
            if not args.skip_sse:
                stop = multiprocessing.Event()
                writer = multiprocessing.Process(
                    target=write_like_a_worker, args=(settings, running_id, stop), daemon=True
                )
                writer.start()
                cores, rate, complete, final, ended = asyncio.run(sse_watchers(
                    port, f"/api/v1/experiments/{running_id}/events", token,
                    args.watchers, args.sse_seconds, proc.pid, stop,
                ))
                writer.join(10)
                print(f"{args.watchers} SSE watchers of one running job for "
                      f"{args.sse_seconds:.0f}s: API process {cores:.2f} cores; {rate:.2f} "
                      f"metrics events per watcher per second; {complete} watchers received "
                      f"the last step ({final}); {ended} streams closed by the server", flush=True)
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
