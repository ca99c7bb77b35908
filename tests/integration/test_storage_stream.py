"""The API process streams checkpoints: four parallel downloads of a 100 MiB checkpoint grow
its memory by 45-55 MiB (the figure is printed), whatever the checkpoint's size (44 MiB for
150 MiB, 59 MiB for 200 MiB): a chunk or two per download and the allocator's per-thread
arenas, where reading whole blobs grew it by the blob size per download. Exports of one
ensemble member read only that member's parameters."""
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


def stored_checkpoint(stack, spec, step: int, blob: bytes) -> str:
    """A new experiment of the stack's admin token's owner, on a queue no worker consumes,
    with this checkpoint stored; its id."""
    engine = make_engine(stack.database_url)
    try:
        with make_sessionmaker(engine)() as s:
            experiment = store.create_experiment(s, spec, "storage-test", owner="it")
            store.add_checkpoint(s, experiment.id, step, blob, {})
            return experiment.id
    finally:
        engine.dispose()


def api_growth_during(stack, requests: int, request) -> tuple[list, int, int]:
    """request(0), ..., request(requests - 1) in parallel threads while the API's memory (its
    uvicorn worker processes too) is sampled every 20 ms: (their results, the peak growth over
    the baseline taken just before, that baseline)."""
    api = psutil.Process(stack.api.pid)

    def api_rss() -> int:
        return sum(p.memory_info().rss for p in (api, *api.children(recursive=True)))

    baseline = api_rss()
    peak, done = baseline, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.02):
            peak = max(peak, api_rss())

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with ThreadPoolExecutor(requests) as pool:
            results = list(pool.map(request, range(requests)))
    finally:
        done.set()
        sampler.join()
    return results, peak - baseline, baseline


def test_parallel_downloads_of_a_large_checkpoint_stream_in_bounded_memory(stack):
    blob = checkpoint_bytes(b"\x5a" * SIZE)
    digest = hashlib.sha256(blob).hexdigest()
    experiment_id = stored_checkpoint(stack, tiny_spec(), 100, blob)
    del blob
    url = f"/api/v1/experiments/{experiment_id}/checkpoints/100"
    assert stack.client.get(f"/api/v1/experiments/{experiment_id}/checkpoints").status_code == 200

    def download(_: int) -> tuple[int, str, str]:
        sha = hashlib.sha256()
        with stack.client.stream("GET", url, timeout=120) as r:
            for chunk in r.iter_bytes():
                sha.update(chunk)
            return r.status_code, r.headers["x-checksum-sha256"], sha.hexdigest()

    results, growth, baseline = api_growth_during(stack, DOWNLOADS, download)
    assert results == [(200, digest, digest)] * DOWNLOADS
    print(f"\nAPI RSS growth during {DOWNLOADS} parallel downloads of a {SIZE >> 20} MiB "
          f"checkpoint: {growth / 2**20:.1f} MiB (baseline {baseline / 2**20:.0f} MiB)")
    assert growth < BOUND, f"the API grew by {growth / 2**20:.0f} MiB"


EXPORT_MEMBERS = 84  # a transformer of width 128 (d_mlp 512) on p=47: 2.4 MiB per member with
# its AdamW state, ~200 MiB for the checkpoint


def test_parallel_exports_of_one_member_read_only_that_member(stack):
    """Four parallel TransformerLens exports of one member of a ~200 MiB ensemble checkpoint:
    the API streams the checkpoint once per request to check it, then reads the member's
    parameters (under 1 MiB) only: it grew by 22.5 MiB here, where loading the whole
    checkpoint for each export (as it did) grew it by 1,915 MiB."""
    from worker.engine.train import Trainer

    spec = tiny_spec(width=128, heads=4, model={"d_mlp": 512}, task={"p": 47},
                     ensemble={"size": EXPORT_MEMBERS}, training={"device": "cpu"})
    trainer = Trainer(spec)
    trainer.train_step()  # the optimiser's state exists from the first step on
    blob = trainer.to_checkpoint()
    size = len(blob)
    experiment_id = stored_checkpoint(stack, spec, 0, blob)
    del blob, trainer
    url = f"/api/v1/experiments/{experiment_id}/checkpoints/0/export"
    assert stack.client.get(url, params={"member": 1}, timeout=120).status_code == 200  # warm

    def export(member: int) -> tuple[int, int]:
        r = stack.client.get(url, params={"member": member}, timeout=120)
        return r.status_code, len(r.content)

    results, growth, baseline = api_growth_during(stack, DOWNLOADS, export)
    assert [status for status, _ in results] == [200] * DOWNLOADS
    assert all(0 < length < size / EXPORT_MEMBERS for _, length in results)
    print(f"\nAPI RSS growth during {DOWNLOADS} parallel exports of one member of a "
          f"{size / 2**20:.0f} MiB checkpoint: {growth / 2**20:.1f} MiB "
          f"(baseline {baseline / 2**20:.0f} MiB)")
    assert size > 190 * 2**20
    assert growth < BOUND, f"the API grew by {growth / 2**20:.0f} MiB"
