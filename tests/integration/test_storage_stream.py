"""The API process streams checkpoints: four parallel downloads of a 100 MiB checkpoint grow
its memory by 45-55 MiB (the figure is printed), whatever the checkpoint's size (44 MiB for
150 MiB, 59 MiB for 200 MiB): a chunk or two per download and the allocator's per-thread
arenas, where reading whole blobs grew it by the blob size per download."""
from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from service import store
from service.infra.db import make_engine, make_sessionmaker
from tests.service.blobs import checkpoint_bytes
from tests.builders import tiny_spec

pytestmark = pytest.mark.integration

SIZE = 100 * 2**20
DOWNLOADS = 4
# What the API process may grow by while the downloads stream: a few chunks per download and
# the allocator's slack, a fifth of the four checkpoints in flight, and it does not grow with them.
BOUND = 80 * 2**20


def test_parallel_downloads_of_a_large_checkpoint_stream_in_bounded_memory(stack):
    blob = checkpoint_bytes(b"\x5a" * SIZE)
    digest = hashlib.sha256(blob).hexdigest()
    engine = make_engine(stack.database_url)
    try:
        with make_sessionmaker(engine)() as s:
            # Owned by the stack's admin token's owner, on a queue no worker consumes.
            experiment = store.create_experiment(s, tiny_spec(), "storage-test", owner="it")
            store.add_checkpoint(s, experiment.id, 100, blob, {})
    finally:
        engine.dispose()
    del blob
    url = f"/api/v1/experiments/{experiment.id}/checkpoints/100"

    api = psutil.Process(stack.api.pid)

    def api_rss() -> int:  # uvicorn's worker processes too, if it runs several
        return sum(p.memory_info().rss for p in (api, *api.children(recursive=True)))

    assert stack.client.get(f"/api/v1/experiments/{experiment.id}/checkpoints").status_code == 200
    baseline = api_rss()
    peak, done = baseline, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.02):
            peak = max(peak, api_rss())

    def download(_: int) -> tuple[int, str, str]:
        sha = hashlib.sha256()
        with stack.client.stream("GET", url, timeout=120) as r:
            for chunk in r.iter_bytes():
                sha.update(chunk)
            return r.status_code, r.headers["x-checksum-sha256"], sha.hexdigest()

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with ThreadPoolExecutor(DOWNLOADS) as pool:
            results = list(pool.map(download, range(DOWNLOADS)))
    finally:
        done.set()
        sampler.join()
    assert results == [(200, digest, digest)] * DOWNLOADS
    growth = peak - baseline
    print(f"\nAPI RSS growth during {DOWNLOADS} parallel downloads of a {SIZE >> 20} MiB "
          f"checkpoint: {growth / 2**20:.1f} MiB (baseline {baseline / 2**20:.0f} MiB)")
    assert growth < BOUND, f"the API grew by {growth / 2**20:.0f} MiB"
