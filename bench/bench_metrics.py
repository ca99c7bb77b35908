"""Metric storage benchmark: ingestion, downsampled queries and raw pages, SQLite and PostgreSQL.

The reference (from the issue): MLflow's tracking server on a 2-core machine with SQLite
  - ingested a 40k-step run of 6 series (240k points, batches of 1000) at ~10k points/s,
  - served a 1000-point sampled series in ~108 ms,
  - served a 25k-point page of raw history in ~980 ms.

Measured here, on both backends:
  - ingestion through store.ingest_metrics, batches of 1000 rows (one commit each),
  - 6 series downsampled to 1000 points each, in one query_metrics call and over HTTP,
  - a 25k-point raw page of one series, through query_metrics and over HTTP.
"HTTP" is `uvicorn --factory service.app:create_app` in its own process, asked over loopback by
an httpx client (response JSON parsed). The reference served one series per request; here one
request serves all six.

    .venv/bin/python bench/bench_metrics.py [--repeat 3] [--no-postgres]

PostgreSQL: a database is created for the run and dropped after it, on the server of
GROKLAB_TEST_DATABASE_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/test).
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from service import store  # noqa: E402
from service.access import auth  # noqa: E402
from service.contract.spec import spec_from_preset  # noqa: E402
from service.infra.db import make_engine, make_sessionmaker, migrate  # noqa: E402

STEPS = 40_000
NAMES = ("train_loss", "val_loss", "train_acc", "val_acc", "weight_norm", "lr")
BATCH = 1000
REFERENCE = {"ingest": 10_000.0, "sampled": 108.0, "raw": 980.0}  # points/s, ms, ms
PG_ADMIN_URL = os.environ.get(
    "GROKLAB_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def run_rows(seed: int) -> list[dict]:
    """A grokking-shaped run: 40k steps of 6 series, step-major like the worker sends them."""
    rng = np.random.default_rng(seed)
    t = np.arange(STEPS)
    noise = rng.normal(scale=0.02, size=(len(NAMES), STEPS))
    curves = np.stack([
        np.exp(-t / 800) * 4.6 + 1e-4,                      # train_loss: memorises early
        4.6 - 4.5 / (1 + np.exp(-(t - 20_000) / 1500)),     # val_loss: groks late
        1 - np.exp(-t / 600),                               # train_acc
        1 / (1 + np.exp(-(t - 20_000) / 1500)),             # val_acc
        30 - 10 * np.tanh(t / 15_000),                      # weight_norm
        np.minimum(1.0, (t + 1) / 10) * 1e-3,               # lr (warmup)
    ]) + noise
    values = curves.T.tolist()  # [step][series]
    return [
        {"step": step, "member": 0, "name": name, "value": values[step][i]}
        for step in range(STEPS)
        for i, name in enumerate(NAMES)
    ]


def timed(fn, repeat: int) -> list[float]:
    fn()  # warm up (statement caches, page cache)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


@contextmanager
def api_server(database_url: str, data_dir: Path) -> Iterator[httpx.Client]:
    """`uvicorn --factory service.app:create_app` (what `groklab api` runs) on a free port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(
        os.environ, GROKLAB_DATABASE_URL=database_url, GROKLAB_DATA_DIR=str(data_dir),
        GROKLAB_MAX_POINTS="25000",
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app",
         "--port", str(port), "--log-level", "warning"],
        env=env, cwd=ROOT,
    )
    with make_sessionmaker(make_engine(database_url))() as session:
        _, token = auth.create_token(session, "local", "admin")
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.1)
        yield client
    finally:
        client.close()
        server.terminate()
        server.wait(timeout=30)


def bench_backend(label: str, url: str, repeat: int, data_dir: Path) -> dict:
    migrate(url)
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    rows = run_rows(0)
    spec = spec_from_preset("nanda2023", name="bench", training={"steps": STEPS})

    ingest_rates = []
    with sessions() as session:
        for _ in range(repeat):  # a fresh experiment each time: every point is new
            experiment_id = store.create_experiment(session, spec, "cpu").id
            start = time.perf_counter()
            for i in range(0, len(rows), BATCH):
                store.ingest_metrics(session, experiment_id, rows[i:i + BATCH])
            ingest_rates.append(len(rows) / (time.perf_counter() - start))
        # Idempotency costs: the same batch again (every point exists already).
        start = time.perf_counter()
        assert store.ingest_metrics(session, experiment_id, rows[:BATCH]) == 0
        duplicate_ms = (time.perf_counter() - start) * 1000

        def sampled():
            result = store.query_metrics(
                session, experiment_id, names=list(NAMES), max_points=1000
            )
            assert len(result["series"]) == 6
            assert all(len(s["steps"]) <= 1000 for s in result["series"])

        def raw_page():
            result = store.query_metrics(
                session, experiment_id, names=["val_loss"], from_step=10_000, to_step=34_999,
                max_points=None,
            )
            assert len(result["series"][0]["steps"]) == 25_000

        sampled_ms = timed(sampled, 30)
        raw_ms = timed(raw_page, 10)
        points_per_series = len(store.query_metrics(
            session, experiment_id, names=["val_loss"], max_points=1000
        )["series"][0]["steps"])

    # The same two reads over HTTP, from a uvicorn server in its own process. The default
    # GROKLAB_MAX_POINTS (20000) would downsample a 25k page, so this server allows 25k.
    with api_server(url, data_dir) as client:
        base = f"/api/v1/experiments/{experiment_id}/metrics"

        def http_sampled():
            r = client.get(base, params={"names": ",".join(NAMES), "max_points": 1000})
            assert r.status_code == 200 and len(r.json()["series"]) == 6

        def http_raw():
            r = client.get(base, params={
                "names": "val_loss", "from_step": 10_000, "to_step": 34_999,
                "max_points": 25_000,
            })
            assert r.status_code == 200 and len(r.json()["series"][0]["steps"]) == 25_000

        http_sampled_ms = timed(http_sampled, 20)
        http_raw_ms = timed(http_raw, 10)
    engine.dispose()
    return {
        "label": label,
        "ingest": ingest_rates,
        "duplicate_ms": duplicate_ms,
        "sampled": sampled_ms,
        "raw": raw_ms,
        "http_sampled": http_sampled_ms,
        "http_raw": http_raw_ms,
        "points_per_series": points_per_series,
    }


def postgres_url() -> tuple[str, str] | None:
    import sqlalchemy as sa

    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"groklab_bench_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        print(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}; skipping it")
        return None
    finally:
        admin.dispose()
    return name, sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(False)


def drop_postgres(name: str) -> None:
    import sqlalchemy as sa

    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def report(results: list[dict]) -> None:
    def med(xs: list[float]) -> float:
        return statistics.median(xs)

    rows = [
        ("ingest, points/s (median of runs)", "ingest", lambda r: med(r["ingest"]), True),
        ("ingest, points/s (best run)", "ingest", lambda r: max(r["ingest"]), True),
        ("6 series -> 1000 pts, store, ms (median)", "sampled", lambda r: med(r["sampled"]), False),
        ("6 series -> 1000 pts, HTTP, ms (median)", "sampled",
         lambda r: med(r["http_sampled"]), False),
        ("25k raw page, store, ms (median)", "raw", lambda r: med(r["raw"]), False),
        ("25k raw page, HTTP, ms (median)", "raw", lambda r: med(r["http_raw"]), False),
    ]
    header = f"{'measure':44s} {'MLflow ref':>11s}"
    for r in results:
        header += f" {r['label']:>12s} {'vs ref':>8s}"
    print()
    print(header)
    print("-" * len(header))
    for title, ref_key, get, higher_is_better in rows:
        ref = REFERENCE[ref_key]
        line = f"{title:44s} {ref:>11,.0f}"
        for r in results:
            value = get(r)
            ratio = value / ref if higher_is_better else ref / value
            line += f" {value:>12,.1f} {ratio:>7.1f}x"
        print(line)
    print()
    for r in results:
        ingest = ", ".join(f"{x:,.0f}" for x in r["ingest"])
        print(
            f"{r['label']}: ingestion runs {ingest} points/s; the same 1000-row batch again "
            f"(all duplicates) {r['duplicate_ms']:.1f} ms; downsampled query min "
            f"{min(r['sampled']):.1f} ms; {r['points_per_series']} points per 40k-step series"
        )
    print("goals: ingestion >= 100,000 points/s; 6 series downsampled to 1000 points < 20 ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="ingestion runs per backend")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = f"sqlite:///{Path(tmp) / 'bench.db'}"
        results.append(bench_backend("SQLite", sqlite, args.repeat, Path(tmp)))
        if not args.no_postgres and (pg := postgres_url()):
            name, url = pg
            try:
                results.append(bench_backend("PostgreSQL", url, args.repeat, Path(tmp)))
            finally:
                drop_postgres(name)
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    report(results)


if __name__ == "__main__":
    main()
